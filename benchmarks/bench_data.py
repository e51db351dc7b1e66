"""Data pipeline throughput (not a test): prep video-seconds/s, loader clips/s by size and workers.

    PYTHONPATH=. python benchmarks/bench_data.py [--videos 4] [--seconds 6] [--steps 8]

Reads as: one loader worker decodes ``clips/s (1 worker)`` clips; a GPU consuming ``G`` clips/s
needs about ``G / that`` workers per rank. Figures depend on the CPU; run on the training node.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data_prep.config import PrepConfig
from data_prep.run import run_prep
from rest_lightning.data.datamodule import DataConfig, VideoDataModule
from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus


def bench_prep(src: Path, out: Path, size: int, workers: int) -> tuple[float, int]:
    cfg = PrepConfig(
        input=str(src),
        output=str(out),
        size=size,
        workers=workers,
        latent_frames=4,
        val_fraction=0.0,
        test_fraction=0.0,
        progress=False,
    )
    summary = run_prep(cfg)
    return summary.source_seconds / summary.elapsed_s, summary.clips_total


def bench_loader(root: Path, workers: int, steps: int, batch_size: int) -> float:
    dm = VideoDataModule(
        DataConfig(
            root=str(root), latent_frames=4, batch_size=batch_size, num_workers=workers, epoch_steps=steps + 1
        )
    )
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up and first decode excluded
    start = time.perf_counter()
    n = sum(len(b) for _, b in zip(range(steps), it, strict=False))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        write_synthetic_corpus(
            SynthConfig(output=str(src), n_videos=args.videos, n_speakers=2, seconds=args.seconds, size=256)
        )
        print(
            f"corpus: {args.videos} synthetic videos x {args.seconds:.0f} s at 256x256 25 fps; clips of 33 frames"
        )
        for size in args.sizes:
            rate, clips = bench_prep(src, tmp / f"shards{size}", size, workers=1)
            print(f"prep  size={size:4d}: {rate:6.2f} video-seconds/s (1 process, {clips} clips)")
            for workers in args.workers:
                cps = bench_loader(tmp / f"shards{size}", workers, args.steps, args.batch_size)
                print(
                    f"load  size={size:4d} workers={workers}: {cps:7.2f} clips/s "
                    f"({cps * 33:8.1f} frames/s, batch {args.batch_size})"
                )


if __name__ == "__main__":
    main()
