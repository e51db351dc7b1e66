"""Training readers compared (not a test): time to first batch at 10 and 1,000 shards, and clips/s of the
``stream`` source (sequential shards) vs the ``index`` reader (random access) with 0 and 2 loader workers.

    PYTHONPATH=. python benchmarks/bench_stream.py [--shards 10 1000] [--per-shard 4] [--steps 40]

The shards are small copies of one tiny rest-prep corpus (32 px clips of 9 frames), so decoding is cheap and
the figures show what the readers themselves cost: opening and scanning shards. Figures depend on the CPU
and the filesystem; run on the training node against the real storage for decisions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import webdataset as wds

from data_prep.config import PrepConfig
from data_prep.run import run_prep
from rest_lightning.data.datamodule import DataConfig, VideoDataModule
from rest_lightning.data.shard_index import CorpusIndex
from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus

LATENT_FRAMES = 1  # clips of 1 + 8 = 9 frames


def make_corpus(tmp: Path) -> list[dict]:
    """The samples of a tiny prepared corpus (bytes as stored in its shards)."""
    write_synthetic_corpus(SynthConfig(output=str(tmp / "raw"), n_videos=2, n_speakers=2, seconds=2.0, size=64))
    out = tmp / "prepared"
    run_prep(PrepConfig(input=str(tmp / "raw"), output=str(out), size=32, latent_frames=LATENT_FRAMES,
                        val_fraction=0.0, test_fraction=0.0, progress=False, workers=1))
    index = CorpusIndex.from_manifest(out, "train")
    return [index.read(i) for i in range(index.total)]


def write_shards(samples: list[dict], root: Path, n_shards: int, per_shard: int) -> Path:
    """``n_shards`` shards of ``per_shard`` samples (copies of ``samples`` under new keys) + a manifest."""
    (root / "train").mkdir(parents=True)
    entries = []
    for s in range(n_shards):
        path = f"train/shard-{s:06d}.tar"
        with wds.TarWriter(str(root / path), encoder=False) as writer:
            for i in range(per_shard):
                sample = dict(samples[(s * per_shard + i) % len(samples)])
                sample["__key__"] = f"copy{s:06d}_{i:03d}"
                writer.write(sample)
        entries.append({"path": path, "count": per_shard})
    (root / "manifest.json").write_text(json.dumps({"splits": {"train": {"shards": entries}}}))
    return root


def _loader(root: Path, source: str, workers: int, steps: int):
    cfg = DataConfig(root=str(root), source=source, latent_frames=LATENT_FRAMES, batch_size=4,
                     num_workers=workers, epoch_steps=steps + 1)
    return VideoDataModule(cfg).train_dataloader()


def first_batch_seconds(root: Path, source: str, workers: int) -> float:
    start = time.perf_counter()
    next(iter(_loader(root, source, workers, steps=1)))
    return time.perf_counter() - start


def clips_per_second(root: Path, source: str, workers: int, steps: int) -> float:
    it = iter(_loader(root, source, workers, steps))
    next(it)  # worker start-up and the first batch excluded
    start = time.perf_counter()
    clips = sum(len(b) for _, b in zip(range(steps), it, strict=False))
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--per-shard", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="batches of 4 clips timed for clips/s")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        samples = make_corpus(tmp)
        print(f"shards of {args.per_shard} clips (32 px, 9 frames, copies of {len(samples)} prepared clips); "
              f"batches of 4; clips/s over {args.steps} batches after the first")
        for n in args.shards:
            root = write_shards(samples, tmp / f"shards{n}", n, args.per_shard)
            for source in ("stream", "index"):
                ttfb = first_batch_seconds(root, source, workers=0)
                rates = "  ".join(f"workers={w}: {clips_per_second(root, source, w, args.steps):7.1f} clips/s"
                                  for w in args.workers)
                print(f"{n:5d} shards  {source:6s}  first batch {ttfb * 1000:7.1f} ms  {rates}")


if __name__ == "__main__":
    main()
