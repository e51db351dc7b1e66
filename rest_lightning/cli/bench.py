"""``rest-bench``: streaming latency / FPS / memory benchmark (``conf/bench.yaml``, DESIGN §5, §9).

Builds the models of ``size=`` (or ``ckpt=``), warms up with a short stream, times a stream of
``chunks`` chunks and the cache against recomputing the window, prints a table and writes JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError
from rest_lightning.sizes import SIZE_GROUPS, check_size, sizes_help, with_size_overrides

log = logging.getLogger(__name__)

SUMMARY = (
    "Benchmark the streaming engine: rest-bench size=tiny|small|rest chunks=N out=bench.json. After a warm-up "
    "stream, reports first-frame latency, per-chunk latency p50/p95/p99 (the JSON keeps the per-chunk series), "
    "steady-state FPS, real-time factor, peak memory, the ID-Context Cache's speed-up against recomputing the "
    "window (median of paired timings, with a 95% interval) and the DiT's MFU vs a matmul peak measured in the "
    "same run, with device, dtype and sizes; prints a table and writes JSON. Sizes: "
)


def bench(cfg: DictConfig) -> dict:
    """What ``rest-bench`` runs; returns the report as a dict."""
    from rest_lightning.streaming.benchmark import format_report, run_benchmark

    check_size(cfg)
    if cfg.chunks < 1 or cfg.warmup_chunks < 0 or cfg.speedup_repeats < 1 or cfg.peak_size < 1 or cfg.peak_repeats < 1:
        raise ConfigError(
            f"need chunks >= 1, warmup_chunks >= 0, speedup_repeats >= 1, peak_size >= 1, peak_repeats >= 1; got "
            f"chunks={cfg.chunks}, warmup_chunks={cfg.warmup_chunks}, speedup_repeats={cfg.speedup_repeats}, "
            f"peak_size={cfg.peak_size}, peak_repeats={cfg.peak_repeats}"
        )
    from rest_lightning.generation import build_generator, build_models, resolution_of

    models = build_models(cfg)
    generator = build_generator(cfg, models)
    side = resolution_of(cfg, generator, models)
    report = run_benchmark(
        generator, (side, side), cfg.chunks, cfg.warmup_chunks, cfg.speedup_repeats, cfg.peak_size, cfg.peak_repeats
    )
    result = report.to_dict()
    result["size"] = cfg.size
    print(format_report(report), flush=True)
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"rest-bench: wrote {out}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return run_cli(
        "rest-bench", "bench", SUMMARY + sizes_help() + ".", bench, with_size_overrides(args), groups=tuple(SIZE_GROUPS)
    )


if __name__ == "__main__":
    sys.exit(main())
