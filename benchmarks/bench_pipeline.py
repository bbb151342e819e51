"""The default pipeline on a real architecture: `dvc repro`'s wall time and peak memory per stage.

A keras.applications MobileNetV2 (weights=None, 10 classes) is saved as the user's model,
and a copy of this working tree (a fresh git + DVC repository in a temporary directory)
runs `dvc repro` with the default settings except ``model=pretrained`` (that file, ``tf``
preprocessing) and the probe-set size. A sampler watches the process tree of
`dvc repro`: each stage is the ``python -m pipeline.stages.<name>`` process DVC starts;
its wall time runs from its first to its last sample, and its peak memory is the
largest resident set of that process and its children (sampled every 0.2 s, so a
shorter spike can be missed). Results go to ``benchmarks/results/pipeline-<size>.json``.

With ``--default`` it runs the unchanged default pipeline (the tutorial convnet on the
bundled digits) instead. The metrics files the stages wrote are saved with the timings.

Run: python benchmarks/bench_pipeline.py [--size 96] [--probe-per-class 2] [--timeout 1200]
     python benchmarks/bench_pipeline.py --default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_tracked  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def _machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB"


def _workspace(root: Path, overrides: list[str]) -> Path:
    """A committed git + DVC copy of this working tree, params composed with ``overrides``."""
    copy_tracked(root)
    from pipeline.config import compose

    params = compose(overrides, conf_dir=root / "conf")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "-c", "user.email=b@b.invalid", "-c", "user.name=bench", "add", "-A"],
        ["git", "-c", "user.email=b@b.invalid", "-c", "user.name=bench", "commit", "-qm", "x"],
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


class StageSampler(threading.Thread):
    """Samples the process tree under ``pid``: per stage, first/last seen and peak RSS."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.stages: dict[str, dict] = {}
        self.done = threading.Event()

    @staticmethod
    def _stage(proc: psutil.Process) -> str | None:
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            return None
        for part in cmd:
            if part.startswith("pipeline.stages."):
                return part.rsplit(".", 1)[1]
        return None

    def run(self) -> None:
        while not self.done.is_set():
            now = time.perf_counter()
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                break
            for proc in children:
                stage = self._stage(proc)
                if stage is None:
                    continue
                rss = 0
                try:
                    tree = [proc, *proc.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                entry = self.stages.setdefault(stage, {"start": now, "peak_rss": 0})
                entry["end"] = now
                entry["peak_rss"] = max(entry["peak_rss"], rss)
            self.done.wait(self.interval)


def main() -> None:
    """Print a markdown table of stage times and peak memory; save the raw numbers."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--probe-per-class", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200, help="stop dvc repro after")
    parser.add_argument("--keep", action="store_true", help="print and keep the temp copy")
    parser.add_argument("--default", action="store_true", help="the default pipeline")
    args = parser.parse_args()
    import keras

    tmp = Path(tempfile.mkdtemp(prefix="kerascope-bench-"))
    try:
        model_path = tmp / "mobilenetv2.keras"
        overrides = [
            "model=pretrained",
            f"model.path={model_path}",
            "model.preprocessing=tf",
            f"data.probe_per_class={args.probe_per_class}",
        ]
        if args.default:
            overrides = []
        else:
            keras.applications.MobileNetV2(
                weights=None, input_shape=(args.size, args.size, 3), classes=10
            ).save(model_path)
        root = _workspace(tmp / "repo", overrides)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("KERASCOPE_ROOT", None)
        log = open(tmp / "repro.log", "w")  # noqa: SIM115 (closed below)
        started = time.perf_counter()
        proc = subprocess.Popen(
            ["dvc", "repro"], cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        sampler = StageSampler(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            code = "timeout"
        total = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        log.close()
        tail = (tmp / "repro.log").read_text()[-3000:]
        stages = {
            name: {
                "started_at": round(s["start"] - started, 1),
                "seconds": round(s["end"] - s["start"], 1),
                "peak_rss_mb": round(s["peak_rss"] / 2**20),
            }
            for name, s in sorted(sampler.stages.items(), key=lambda item: item[1]["start"])
        }
        metrics_dir = root / yaml.safe_load((root / "params.yaml").read_text())["paths"]["metrics"]
        metrics = {
            p.name: json.loads(p.read_text())
            for p in sorted(metrics_dir.glob("*.json"))
            if not p.name.startswith(".") and p.stat().st_size < 100_000
        }
        what = f"MobileNetV2 weights=None {args.size}x{args.size}x3, 10 classes"
        record = {
            "machine": _machine(),
            "date": time.strftime("%Y-%m-%d"),
            "model": "default pipeline" if args.default else what,
            "probe_inputs": None if args.default else 10 * args.probe_per_class,
            "overrides": overrides,
            "exit": code,
            "dvc_repro_seconds": round(total, 1),
            "stages": stages,
            "metrics": metrics,
            "log_tail": tail,
        }
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / ("pipeline-default.json" if args.default else f"pipeline-{args.size}.json")
        out.write_text(json.dumps(record, indent=1))
        print(record["model"], f"{record['probe_inputs'] or 'default'} probe inputs")
        print(f"machine: {record['machine']}, {record['date']}; dvc repro exit: {code}\n")
        print("| stage | wall time (s) | peak memory (MB) |\n|---|---|---|")
        for name, s in stages.items():  # in the order DVC ran them
            print(f"| {name} | {s['seconds']:.1f} | {s['peak_rss_mb']:,} |")
        print(f"| whole `dvc repro` | {total:.1f} | |\n\nraw: {out}")
        if code != 0:
            print(tail, file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
