"""Compare runs side by side, from their cached outputs (nothing is recomputed).

Usage::

    python -m pipeline.compare                    # the workspace and every run with results
    python -m pipeline.compare exp-a exp-b main   # named experiments, branches or commits
    python -m pipeline.compare --out outputs/compare

The runs come from ``dvc exp show --json``: the workspace, the commits it lists and their
experiments. For each, ``attributions.h5`` and the per-layer health file are read through
``dvc.api.open`` (the DVC cache or a remote, at that run's revision; the workspace from
disk). A run whose outputs cannot be read (never run, not in the cache) is skipped, and
the reason printed. ``<out>/index.html`` shows the headline metrics per run, one figure
per attribution method (rows: the probe inputs every run shares; columns: runs, headed
by the params that differ between them) and the layer health per run.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts.attributions import read_attributions
from pipeline.errors import KerascopeError
from pipeline.workspace import atomic_path, inside_workspace

#: Headline metrics shown per run (file stem, key path inside the JSON).
HEADLINE_FILES = ("train", "extract", "attribute", "maximize")


@dataclass
class Run:
    """One row of ``dvc exp show``: the workspace, a commit or an experiment."""

    name: str
    rev: str | None  # None: the workspace
    params: dict[str, object]
    metrics: dict[str, object]
    outs: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResults:
    """What compare reads of one run."""

    run: Run
    inputs: np.ndarray
    index: np.ndarray
    targets: np.ndarray
    maps: dict[str, np.ndarray]
    health: dict[str, dict[str, float]]
    label: str = ""
    activations: bytes | None = None


def _flatten(data, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = data
    return out


def _run_of(entry: dict, name: str, rev: str | None) -> Run:
    data = entry.get("data") or {}
    params: dict[str, object] = {}
    for content in (data.get("params") or {}).values():
        params.update(_flatten(content.get("data") or {}))
    metrics: dict[str, object] = {}
    for file, content in (data.get("metrics") or {}).items():
        stem = Path(file).stem
        metrics.update(_flatten(content.get("data") or {}, stem))
    outs = {path: str(info.get("hash")) for path, info in (data.get("outs") or {}).items()}
    return Run(name, rev, params, metrics, outs)


def list_runs(repo: str) -> list[Run]:
    """The workspace, each commit ``dvc exp show`` lists, and their experiments."""
    proc = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        reason = " ".join(proc.stderr.split())[:200]
        raise KerascopeError(f"`dvc exp show` failed: {reason}")
    runs = []
    for commit in json.loads(proc.stdout or "[]"):
        rev = commit.get("rev")
        if rev == "workspace":
            runs.append(_run_of(commit, "workspace", None))
        else:
            runs.append(_run_of(commit, commit.get("name") or str(rev)[:7], rev))
        for exp in commit.get("experiments") or []:
            for exp_rev in exp.get("revs") or []:
                name = exp_rev.get("name") or exp.get("name") or str(exp_rev.get("rev"))[:7]
                runs.append(_run_of(exp_rev, name, exp_rev.get("rev")))
    return runs


def _open(repo: str, path: str, rev: str | None) -> bytes:
    if rev is None:
        file = Path(repo) / path
        if not file.is_file():
            raise FileNotFoundError(f"{path} does not exist (run `dvc repro`)")
        return file.read_bytes()
    import dvc.api

    with dvc.api.open(path, repo=repo, rev=rev, mode="rb") as f:
        return f.read()


def load_run(repo: str, run: Run, paths: dict[str, str]) -> RunResults:
    """Read one run's attributions and layer health.

    Raises:
        KerascopeError: The run has no readable attributions (one line, with the reason).
    """
    try:
        blob = _open(repo, paths["attributions"], run.rev)
    except Exception as exc:  # DVC raises many kinds; one line is enough here.
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise KerascopeError(f"cannot read {paths['attributions']}: {reason}") from None
    result = read_attributions(io.BytesIO(blob))
    health: dict[str, dict[str, float]] = {}
    try:
        health_file = f"{paths['metrics']}/layer_health.json"
        health = json.loads(_open(repo, health_file, run.rev)).get("layers", {})
    except Exception:  # noqa: BLE001 - older runs have no health file: shown as missing
        health = {}
    try:
        activations = _open(repo, paths["activations"], run.rev)
    except Exception:  # noqa: BLE001 - without activations there is no CKA for this run
        activations = None
    return RunResults(
        run=run,
        inputs=result.inputs,
        index=result.index,
        targets=result.targets,
        maps={m: r.maps for m, r in result.methods.items()},
        health=health,
        activations=activations,
    )


def differing_params(runs: list[Run]) -> list[str]:
    """The param keys whose values differ between ``runs`` (paths left out)."""
    keys = sorted({k for r in runs for k in r.params if not k.startswith("paths.")})
    return [k for k in keys if len({repr(r.params.get(k)) for r in runs}) > 1]


def label_runs(results: list[RunResults]) -> None:
    """Head each run with its name and the params that set it apart."""
    keys = differing_params([r.run for r in results])
    for result in results:
        shown = [f"{k}={result.run.params.get(k)}" for k in keys[:4]]
        more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
        result.label = result.run.name + (f": {', '.join(shown)}{more}" if shown else "")


def _draw_method(method: str, results: list[RunResults], max_inputs: int):
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    common = sorted(set.intersection(*(set(r.index.tolist()) for r in results)))[:max_inputs]
    if not common:
        return None
    cols = 1 + len(results)
    fig, axes = plt.subplots(
        len(common), cols, figsize=(1.9 * cols, 1.9 * len(common) + 1.0), squeeze=False
    )
    for row, probe in enumerate(common):
        first = results[0]
        i0 = int(np.flatnonzero(first.index == probe)[0])
        image = first.inputs[i0]
        # A volume (D, H, W, C) is compared on its middle depth slice, maps alike.
        middle = image.shape[0] // 2 if image.ndim == 4 else None
        if middle is not None:
            image = image[middle]
        if image.ndim == 3:
            lo, hi = float(image.min()), float(image.max())
            image = (image - lo) / (hi - lo) if hi > lo else image * 0
        axes[row, 0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        axes[row, 0].set_ylabel(f"probe {probe}", fontsize=8)
        for col, result in enumerate(results, start=1):
            ax = axes[row, col]
            i = int(np.flatnonzero(result.index == probe)[0])
            if method in result.maps:
                heat = result.maps[method][i]
                if middle is not None and heat.ndim == 3:
                    heat = heat[middle * heat.shape[0] // first.inputs.shape[1]]
                heat = heat if heat.ndim == 2 else heat.reshape(heat.shape[0], -1)
                scale = float(np.abs(heat).max()) or 1.0
                ax.imshow(heat / scale, cmap="magma", vmin=0 if heat.min() >= 0 else -1, vmax=1)
                ax.set_xlabel(f"target {int(result.targets[i])}", fontsize=7)
            else:
                ax.text(0.5, 0.5, "not computed", ha="center", va="center", fontsize=7)
            if row == 0:
                ax.set_title("\n".join(textwrap.wrap(result.label, 24)), fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    fig.suptitle(f"{method}: each map scaled to its own max (magma)", fontsize=9)
    fig.tight_layout()
    return fig


def _table(header: list[str], rows: list[list[object]], sortable: bool = False) -> str:
    from pipeline.render.report import _cell, esc

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline_rows(results: list[RunResults]) -> list[list[object]]:
    prefixes = tuple(f"{stem}." for stem in HEADLINE_FILES)
    keys = sorted(
        {k for r in results for k in r.run.metrics if k.startswith(prefixes)},
        key=lambda k: (HEADLINE_FILES.index(k.split(".")[0]), k),
    )
    rows = []
    for key in keys:
        values = [r.run.metrics.get(key) for r in results]
        rows.append([key, *["–" if v is None else v for v in values]])
    return rows


def _health_rows(results: list[RunResults]) -> list[list[object]]:
    layers: list[str] = []
    for result in results:
        layers += [p for p in result.health if p not in layers]
    rows = []
    for path in layers:
        row: list[object] = [path]
        for result in results:
            h = result.health.get(path)
            if h is None:
                row.append("–")
                continue
            dead, saturated = h.get("dead_fraction", 0), h.get("saturated_fraction", 0)
            row.append(f"{dead:.0%} dead, {saturated:.0%} saturated")
        rows.append(row)
    return rows


def _cka_parts(results: list[RunResults], tmp: Path) -> list[str]:
    """Cross-run CKA (first run against each other run), or why there is none."""
    import matplotlib.pyplot as plt

    from pipeline.render.concept_figures import EXPLANATIONS, cka_heatmap
    from pipeline.render.report import esc
    from pipeline.representation_compare import cross_run_cka

    with_acts = [r for r in results if r.activations is not None]
    if len(with_acts) < 2:
        return []
    head = (
        '<section id="cka"><h2>Representations across runs (CKA)</h2>'
        f"<p>{esc(EXPLANATIONS['cka_cross_run'])}</p>"
    )
    names = [r.run.name for r in with_acts]
    try:
        found = cross_run_cka({r.run.name: io.BytesIO(r.activations) for r in with_acts})
    except KerascopeError as exc:
        return [head + f"<p>Not computed: {esc(exc)}</p></section>"]
    figures = []
    first = names[0]
    for other in names[1:]:
        matrix = found["matrices"][(first, other)]
        fig = cka_heatmap(
            matrix,
            found["layers"][first],
            found["layers"][other],
            f"{first} (rows) vs {other} (columns)",
        )
        stem = "cka-" + "".join(c if c.isalnum() else "-" for c in other)
        fig.savefig(tmp / f"{stem}.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        diagonal = np.diag(matrix) if matrix.shape[0] == matrix.shape[1] else np.zeros(0)
        mean = f"; mean of the diagonal {np.nanmean(diagonal):.2f}" if len(diagonal) else ""
        figures.append(
            f'<figure><img src="{esc(stem)}.png" alt="CKA {esc(other)}" loading="lazy">'
            f"<figcaption>{esc(first)} against {esc(other)}, {found['n_inputs']} inputs"
            f"{esc(mean)}</figcaption></figure>"
        )
    return [head + "".join(figures) + "</section>"]


def build_compare(
    results: list[RunResults],
    out_dir: str | Path,
    max_inputs: int = 10,
    skipped: list[tuple[str, str]] | None = None,
) -> Path:
    """Write the comparison page and its figures atomically into ``out_dir``."""
    import matplotlib.pyplot as plt

    from pipeline.render.report import CSS, SORT_SCRIPT, esc

    label_runs(results)
    methods = sorted({m for r in results for m in r.maps})
    labels = [r.label for r in results]
    with atomic_path(out_dir, kind="compare") as tmp:
        parts = []
        keys = differing_params([r.run for r in results])
        runs_list = "".join(
            f"<li>{esc(r.run.name)}: <code>{esc(r.run.rev or 'workspace')}</code></li>"
            for r in results
        )
        parts.append(f"<section><h2>Runs</h2><ul>{runs_list}</ul>")
        if keys:
            rows = [[k, *[str(r.run.params.get(k)) for r in results]] for k in keys]
            parts.append(
                "<p>Params that differ between the runs:</p>" + _table(["param", *labels], rows)
            )
        else:
            parts.append("<p>Every run has the same params.</p>")
        if skipped:
            items = "".join(f"<li>{esc(n)}: {esc(why)}</li>" for n, why in skipped)
            parts.append(f"<p>Skipped runs:</p><ul>{items}</ul>")
        parts.append("</section>")
        parts.append(
            '<section id="metrics"><h2>Headline metrics</h2>'
            + _table(["metric", *labels], _headline_rows(results), sortable=True)
            + "</section>"
        )
        for method in methods:
            fig = _draw_method(method, results, max_inputs)
            if fig is None:
                continue
            fig.savefig(tmp / f"{method}.png", dpi=100)
            plt.close(fig)
            parts.append(
                f'<section id="{esc(method)}"><h2>{esc(method)}</h2>'
                f'<img src="{esc(method)}.png" alt="{esc(method)}" loading="lazy"></section>'
            )
        cka = _cka_parts(results, tmp)
        parts += cka
        health = _health_rows(results)
        if health:
            parts.append(
                '<section id="layer-health"><h2>Layer health per run</h2>'
                + _table(["layer", *labels], health, sortable=True)
                + "</section>"
            )
        toc = "".join(f'<li><a href="#{esc(m)}">{esc(m)}</a></li>' for m in methods)
        page = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>kerascope: run comparison</title><style>{CSS}</style></head><body>"
            f'<nav><strong>Contents</strong><ol><li><a href="#metrics">metrics</a></li>{toc}'
            + ('<li><a href="#cka">representations (CKA)</a></li>' if cka else "")
            + '<li><a href="#layer-health">layer health</a></li></ol></nav>'
            "<main><header><h1>Run comparison</h1></header>"
            + "".join(parts)
            + f"</main><script>{SORT_SCRIPT}</script></body></html>\n"
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return Path(out_dir) / "index.html"


def choose_runs(runs: list[Run], names: list[str]) -> list[Run]:
    """The requested runs (by name or revision), or all of them.

    Branches, tags and commits that ``dvc exp show`` does not list are valid names too.
    """
    if not names:
        return runs
    chosen = [r for r in runs if r.name in names or (r.rev and r.rev in names)]
    known = {r.name for r in chosen} | {r.rev for r in chosen if r.rev}
    chosen += [Run(n, n, {}, {}) for n in names if n not in known]
    return chosen


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

        paths = load_params(root=args.repo)["paths"]
        inside_workspace(args.out, args.repo, "--out")
        runs = choose_runs(list_runs(args.repo), args.experiments)
        loaded, skipped, seen = [], [], {}
        attributions = str(paths["attributions"])
        # A committed run before the workspace: when both hold the same results, the
        # comparison names the commit.
        for run in sorted(runs, key=lambda r: r.rev is None):
            digest = run.outs.get(attributions)
            if digest and digest != "None" and digest in seen:
                skipped.append((run.name, f"same results as {seen[digest]}"))
                continue
            try:
                loaded.append(load_run(args.repo, run, paths))
            except KerascopeError as exc:
                skipped.append((run.name, str(exc)))
                continue
            if digest and digest != "None":
                seen[digest] = run.name
        for name, why in skipped:
            print(f"compare: skipped {name}: {why}")
        if not loaded:
            raise KerascopeError(
                "no run has results to compare; run `dvc repro` or `dvc exp run` first"
            )
        page = build_compare(loaded, args.out, args.max_inputs, skipped)
    except KerascopeError as exc:
        print(f"error: compare: {exc}", file=sys.stderr)
        sys.exit(2)
    names = ", ".join(r.run.name for r in loaded)
    print(f"compare: {len(loaded)} runs ({names}) -> {page}")


if __name__ == "__main__":
    main()
