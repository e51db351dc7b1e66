"""``VideoDataModule``: rest-prep shards -> typed ``ClipBatch``es for the three stages (DESIGN §6)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
from torch.utils.data import DataLoader

from rest_lightning.data.datasets import MODES, EvalClipDataset, TrainClipStream, WindowSpec
from rest_lightning.data.schema import MediaSpec
from rest_lightning.data.shard_index import CorpusIndex

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """The ``data.*`` config group."""

    root: str = ""  # a rest-prep output folder (manifest.json + {split}/shard-*.tar)
    mode: str = "video"  # "video": decode mp4; "latent": read latent.npy (+ ode.npy when present; stages 2-3)
    latent_frames: int = 4  # design choice: windows of 1 + 8k = 33 frames (k = 4 latent frames + 1)
    batch_size: int = 1
    num_workers: int = 2  # loader processes per rank; see benchmarks/bench_data.py for clips/s each
    seed: int = 0
    epoch_steps: int = 1000  # design choice: batches per rank per epoch (webdataset with_epoch)
    cache_mb: int = 0  # decoded training videos kept in memory per loader process (0 = decode every read)
    fps: int = 25  # REST / DESIGN §3
    sample_rate: int = 16_000  # REST / DESIGN §3
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"data.mode must be one of {MODES}, got {self.mode!r}")
        if self.latent_frames < 0:
            raise ValueError(f"data.latent_frames must be >= 0, got {self.latent_frames}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.cache_mb < 0:
            raise ValueError(f"data.cache_mb must be >= 0, got {self.cache_mb}")
        if self.epoch_steps < 1:
            raise ValueError(f"data.epoch_steps must be >= 1, got {self.epoch_steps}")
        MediaSpec(fps=self.fps, sample_rate=self.sample_rate)

    @property
    def window(self) -> WindowSpec:
        return WindowSpec(
            self.latent_frames, self.mode, MediaSpec(fps=self.fps, sample_rate=self.sample_rate)
        )


class _PassLoader(DataLoader):
    """Starts a new pass of the training stream on every ``iter()`` (one per Lightning epoch)."""

    def __iter__(self):
        self.dataset.advance()
        return super().__iter__()


class VideoDataModule(L.LightningDataModule):
    """Reads rest-prep shards.

    ``rank``/``world_size`` default to the attached Trainer's (1 process without one); pass them to
    simulate ranks. The training stream starts at ``start_step`` if set, else at the number of
    batches the attached Trainer has already processed (resume).
    """

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        if not cfg.root:
            raise ValueError("data.root is empty: set it to a rest-prep output folder")
        self.cfg = cfg
        self._rank = rank
        self._world_size = world_size
        self.start_step: int | None = None

    def _dist(self) -> tuple[int, int]:
        if self._rank is not None:
            return self._rank, self._world_size or 1
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _resume_step(self) -> int:
        if self.start_step is not None:
            return self.start_step
        if self.trainer is not None:
            # Batches, not optimizer steps: with 2 optimizers or accumulation global_step differs.
            return int(self.trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        return 0

    def train_dataset(self) -> TrainClipStream:
        rank, _ = self._dist()
        stream = TrainClipStream(
            CorpusIndex.from_manifest(self.cfg.root, self.cfg.train_split),
            self.cfg.window,
            self.cfg.batch_size,
            self.cfg.seed,
            rank,
            self.cfg.epoch_steps,
            cache_bytes=self.cfg.cache_mb << 20,
        )
        stream.start_at(self._resume_step())
        return stream

    def eval_dataset(self, split: str) -> EvalClipDataset:
        rank, world = self._dist()
        return EvalClipDataset(
            CorpusIndex.from_manifest(self.cfg.root, split), self.cfg.window, self.cfg.batch_size, rank, world
        )

    def _loader(self, dataset, cls=DataLoader) -> DataLoader:
        return cls(
            dataset,
            batch_size=None,  # datasets yield whole ClipBatches
            num_workers=self.cfg.num_workers,
            persistent_workers=False,  # each pass re-sends the dataset (its step range) to workers
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), _PassLoader)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.cfg.val_split))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.cfg.test_split))
