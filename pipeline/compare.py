"""Compare experiments side by side, from their cached outputs (nothing is recomputed).

Usage::

    python -m pipeline.compare                    # every experiment of the current commit
    python -m pipeline.compare exp-a exp-b main   # named experiments, branches or commits
    python -m pipeline.compare --out outputs/compare

For every experiment it reads ``attributions.h5`` through ``dvc.api.open`` (from the DVC
cache or a remote, at that experiment's revision) and the metrics through
``dvc.api.exp_show``, then writes ``<out>/index.html``: one figure per attribution
method, rows = the probe inputs shared by all experiments, columns = experiments.
"""

from __future__ import annotations

import argparse
import html
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifacts.attributions import read_attributions
from pipeline.errors import KerascopeError
from pipeline.workspace import atomic_path, inside_workspace


@dataclass
class ExperimentAttributions:
    """One experiment's attribution maps for its probe inputs."""

    name: str
    rev: str
    inputs: np.ndarray
    index: np.ndarray
    targets: np.ndarray
    maps: dict[str, np.ndarray]
    metrics: dict


def _experiments(repo: str, names: list[str]) -> list[tuple[str, str, dict]]:
    """(name, rev, flat metrics) for the requested experiments, or all of the baseline."""
    import dvc.api

    rows = dvc.api.exp_show(repo=repo)
    found = []
    for row in rows:
        name = row.get("Experiment") or row.get("rev")
        rev = row.get("rev")
        if not name or name == "workspace":
            continue
        if names and name not in names and rev not in names:
            continue
        metrics = {k: v for k, v in row.items() if isinstance(v, int | float)}
        found.append((str(name), str(rev), metrics))
    known = {n for n, _, _ in found} | {r for _, r, _ in found}
    for requested in names:
        if requested not in known:
            # Branches, tags and commits are valid too; exp_show lists only experiments.
            found.append((requested, requested, {}))
    return found


def load_experiment(repo: str, name: str, rev: str, path: str, metrics: dict):
    """Read one experiment's attributions file at its revision via ``dvc.api.open``."""
    import dvc.api

    try:
        with dvc.api.open(path, repo=repo, rev=name if name != rev else rev, mode="rb") as f:
            blob = f.read()
    except Exception as exc:  # DVC raises many kinds; one line is enough here.
        reason = " ".join(str(exc).split())[:160]
        raise KerascopeError(f"cannot read '{path}' of experiment '{name}': {reason}") from None
    result = read_attributions(io.BytesIO(blob))
    return ExperimentAttributions(
        name=name,
        rev=rev,
        inputs=result.inputs,
        index=result.index,
        targets=result.targets,
        maps={m: r.maps for m, r in result.methods.items()},
        metrics=metrics,
    )


def _figure(method: str, experiments: list[ExperimentAttributions], max_inputs: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    common = sorted(set.intersection(*(set(e.index.tolist()) for e in experiments)))[:max_inputs]
    if not common:
        return None
    cols = 1 + len(experiments)
    fig, axes = plt.subplots(
        len(common), cols, figsize=(1.9 * cols, 1.9 * len(common) + 0.6), squeeze=False
    )
    for r, probe in enumerate(common):
        first = experiments[0]
        i0 = int(np.flatnonzero(first.index == probe)[0])
        image = first.inputs[i0]
        axes[r, 0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        axes[r, 0].set_ylabel(f"probe {probe}", fontsize=8)
        for c, exp in enumerate(experiments, start=1):
            ax = axes[r, c]
            i = int(np.flatnonzero(exp.index == probe)[0])
            if method in exp.maps:
                heat = exp.maps[method][i]
                heat = heat if heat.ndim == 2 else heat.reshape(heat.shape[0], -1)
                scale = float(np.abs(heat).max()) or 1.0
                ax.imshow(heat / scale, cmap="magma", vmin=0 if heat.min() >= 0 else -1, vmax=1)
                ax.set_xlabel(f"target {int(exp.targets[i])}", fontsize=7)
            else:
                ax.text(0.5, 0.5, "not computed", ha="center", va="center", fontsize=7)
            if r == 0:
                ax.set_title(exp.name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    fig.suptitle(f"{method}: each map scaled to its own max (magma)", fontsize=9)
    fig.tight_layout()
    return fig


def build_compare(
    experiments: list[ExperimentAttributions], out_dir: str | Path, max_inputs: int = 10
) -> Path:
    """Write the comparison page and its figures atomically into ``out_dir``."""
    methods = sorted({m for e in experiments for m in e.maps})
    metric_keys = sorted({k for e in experiments for k in e.metrics if "attribute" in k})
    with atomic_path(out_dir, kind="compare") as tmp:
        sections = []
        for method in methods:
            fig = _figure(method, experiments, max_inputs)
            if fig is None:
                continue
            fig.savefig(tmp / f"{method}.png", dpi=110)
            import matplotlib.pyplot as plt

            plt.close(fig)
            sections.append(
                f'<h2 id="{html.escape(method)}">{html.escape(method)}</h2>'
                f'<img src="{html.escape(method)}.png" alt="{html.escape(method)}">'
            )
        header = "".join(f"<th>{html.escape(e.name)}</th>" for e in experiments)
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td>"
            + "".join(
                f"<td>{e.metrics[k]:.4g}</td>" if k in e.metrics else "<td>–</td>"
                for e in experiments
            )
            + "</tr>"
            for k in metric_keys
        )
        revs = "".join(
            f"<li>{html.escape(e.name)}: <code>{html.escape(e.rev)}</code></li>"
            for e in experiments
        )
        toc = "".join(f'<li><a href="#{html.escape(m)}">{html.escape(m)}</a></li>' for m in methods)
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kerascope: experiment comparison</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px}}</style></head>
<body><h1>Experiment comparison</h1><ul>{revs}</ul><nav><ol>{toc}</ol></nav>
<h2 id="metrics">Attribution metrics</h2><table><tr><th>metric</th>{header}</tr>{rows}</table>
{"".join(sections)}</body></html>
"""
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return Path(out_dir) / "index.html"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__)
    parser.add_argument("experiments", nargs="*", help="experiment names, branches or commits")
    parser.add_argument("--out", default="outputs/compare", help="output directory")
    parser.add_argument("--repo", default=".", help="repository (default: here)")
    parser.add_argument("--max-inputs", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        from pipeline.config import load_params

        path = load_params(root=args.repo)["paths"]["attributions"]
        inside_workspace(args.out, args.repo, "--out")
        chosen = _experiments(args.repo, args.experiments)
        if len(chosen) < 1:
            raise KerascopeError(
                "no experiments to compare; run `dvc exp run` first or name revisions"
            )
        loaded = [load_experiment(args.repo, n, r, path, m) for n, r, m in chosen]
        page = build_compare(loaded, args.out, args.max_inputs)
    except KerascopeError as exc:
        print(f"error: compare: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"compare: {len(loaded)} experiments -> {page}")


if __name__ == "__main__":
    main()
