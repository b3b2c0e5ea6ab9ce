"""Resident memory over time of one `zsl-bench` case, by phase: where a case's `peak_rss_mb` comes from.

Runs the bench case in this process, samples `/proc/self/statm` every 5 ms (Linux) and marks the start and
end of each phase (protocol features, matmul peak, the fits, classifier inputs, the final classifier).
Prints one line per phase mark: the resident MB at the mark and the most seen until the next mark.

Usage: python scripts/bench_memory_timeline.py --method tfvaegan --dataset AWA2 --precision bf16 \
           [--override classifier.precision=bf16] [--system-malloc] [--keep-optimizer-state] [--steps 2 --warmup 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import pytorch_lightning as pl

import zsl_gen.bench as bench
import zsl_gen.eval as evaluation
import zsl_gen.pipeline as pipeline
from zsl_gen.errors import ZSLGenError
from zsl_gen.systems.base import GeneratorSystem
from zsl_gen.systems.cadavae import CADAVAE


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.samples: list[tuple[float, float]] = []
        self.marks: list[tuple[float, str, float]] = []
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.samples.append((time.perf_counter() - self.t0, resident_mb()))
            time.sleep(0.005)

    def mark(self, name: str) -> None:
        self.marks.append((time.perf_counter() - self.t0, name, resident_mb()))

    def wrap(self, owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def marked(*args, **kwargs):
            self.mark(f"{name} >")
            try:
                return inner(*args, **kwargs)
            finally:
                self.mark(f"{name} <")

        setattr(owner, attr, marked)

    def report(self) -> str:
        lines = []
        for i, (t, name, mb) in enumerate(self.marks):
            until = self.marks[i + 1][0] if i + 1 < len(self.marks) else float("inf")
            most = max([m for ts, m in self.samples if t <= ts < until] or [mb])
            lines.append(f"{t:8.1f} s  {name:22s} {mb:7.0f} MB   max until the next mark {most:7.0f} MB")
        return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=bench.METHODS)
    p.add_argument("--dataset", required=True, choices=bench.DATASETS)
    p.add_argument("--precision", default="fp32", choices=tuple(bench.PRECISIONS))
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--system-malloc", action="store_true")
    p.add_argument("--keep-optimizer-state", action="store_true")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--data-root", default=str(bench.default_data_root()))
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "zsl-bench-cache"))
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if args.override:
        try:  # as zsl-bench: a malformed override is a usage error before any work
            bench.compose_config(args.method, args.dataset, args.precision, list(args.override))
        except Exception as err:  # Hydra's override and config errors have many types
            p.error(f"--override {' '.join(args.override)}: {str(err).splitlines()[0]}")

    timeline = Timeline()
    timeline.wrap(pipeline, "protocol_data", "protocol_data")
    timeline.wrap(bench, "matmul_peak", "matmul_peak")
    timeline.wrap(pl.Trainer, "fit", "fit")
    timeline.wrap(GeneratorSystem, "classifier_inputs", "classifier_inputs")
    timeline.wrap(CADAVAE, "classifier_inputs", "classifier_inputs")  # its own (latent-space) override
    timeline.wrap(evaluation, "train_and_evaluate", "final_classifier")
    try:
        result = run(args)
    except ZSLGenError as err:  # a bad --override, missing data: one line, as zsl-bench says it
        p.exit(2, f"error: {err}\n")
    timeline.mark("end")
    print(timeline.report())
    print(f"peak_rss_mb {result['peak_rss_mb']}  (classifier {result['classifier_precision']}, "
          f"{result['classifier_train_rows']} x {result['classifier_feature_dim']} training features)")


def run(args) -> dict:
    return bench.run_case({
        "method": args.method, "dataset": args.dataset, "precision": args.precision, "device": "cpu",
        "data_root": args.data_root, "cache": args.cache, "warmup": args.warmup, "steps": args.steps,
        "classifier_repeats": 1, "keep_freed_memory": not args.system_malloc,
        "offload_optimizer_state": not args.keep_optimizer_state, "overrides": args.override})


if __name__ == "__main__":
    main()
