"""``VideoDataModule``: rest-prep shards -> typed ``ClipBatch``es for the three stages (DESIGN §6).

Training reads ``data.cfg.source``: ``stream`` (default) streams shards sequentially from any URL
(``shard_stream``), ``index`` reads samples by random access from local shards (``datasets.TrainClipStream``,
for small corpora); ``data.cfg.sources`` mixes several corpora into the stream. Validation and test always use
the rank-exact random-access reader on ``data.cfg.root`` (empty with sources: the first source's).

Resume: the index reader is a pure function of (seed, rank, batch), so the batch count Lightning restores
is enough. The stream is not (a skipped sample or an abandoned shard moves it), so its DataLoader is a
stateful one for Lightning (``state_dict``/``load_state_dict``, saved by the fit loop in every checkpoint):
each rank's lane positions after the last processed batch, gathered to the rank that writes the file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from rest_lightning.data.datasets import MODES, EvalClipDataset, TrainClipStream, WindowSpec
from rest_lightning.data.manifest import mixture_shards, split_shards
from rest_lightning.data.schema import MediaSpec
from rest_lightning.data.shard_index import CorpusIndex
from rest_lightning.data.shard_stream import LaneStart, PositionTracker, TrainShardStream

log = logging.getLogger(__name__)

SOURCES = ("stream", "index")


def _check_shard_url(template: str, key: str) -> None:
    try:
        template.format(root="", path="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"{key}={template!r} may only use {{root}} and {{path}} ({err})") from None
    if "{path}" not in template:
        raise ValueError(f"{key}={template!r} must contain {{path}} (the manifest's shard path)")


@dataclass(frozen=True)
class CorpusSource:
    """One training corpus of a mixture (``data.sources``): a rest-prep output read by the stream source, drawn
    with probability ``weight / sum of weights`` per sample; ``root`` and ``shard_url`` as ``data.root`` and
    ``data.shard_url``."""

    root: str
    weight: float = 1.0
    shard_url: str = ""

    @classmethod
    def from_config(cls, value: Any, index: int) -> CorpusSource:
        """``value`` (a ``CorpusSource`` or a mapping from the YAML) checked; ``index`` names it in errors."""
        key = f"data.sources[{index}]"
        if isinstance(value, CorpusSource):
            source = value
        elif isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"{key} has unknown keys {unknown}; a source takes {sorted(known)}")
            if not value.get("root"):
                raise ValueError(f"{key} has no root: give each source a rest-prep output folder or URL")
            try:
                source = cls(str(value["root"]), float(value.get("weight", 1.0)), str(value.get("shard_url", "")))
            except (TypeError, ValueError):
                raise ValueError(f"{key}.weight must be a number, got {value.get('weight')!r}") from None
        else:
            raise ValueError(f"{key} must be a mapping {{root, weight, shard_url}}, got {value!r}")
        if not (math.isfinite(source.weight) and source.weight > 0):
            raise ValueError(f"{key}.weight must be a positive number, got {source.weight}")
        if source.shard_url:
            _check_shard_url(source.shard_url, f"{key}.shard_url")
        return source


@dataclass
class DataConfig:
    """The ``data.*`` config group."""

    root: str = ""  # a rest-prep output (manifest.json + {split}/shard-*.tar): a folder or an http(s):// URL
    source: str = "stream"  # training reader: "stream" (sequential, any URL) | "index" (random access, local)
    # URL of each shard for the stream source: {root} and {path} (the manifest's, e.g. train/shard-000000.tar)
    # filled in; e.g. "pipe:aws s3 cp s3://bucket/corpus/{path} -". Empty: "{root}/{path}".
    shard_url: str = ""
    # Several training corpora for the stream source, mixed per sample by weight (docs/data.md "Several corpora"):
    # [{root, weight, shard_url}]. Empty: data.root alone. Validation and test still read data.root's splits
    # (empty root: the first source's).
    sources: list[CorpusSource] = field(default_factory=list)
    # design choice: samples per shuffle buffer of the stream source; the buffer restarts with every shard (what
    # makes the position (shard, offset)), so a value >= the shard size shuffles each shard fully; 1 = file order.
    shuffle_buffer: int = 100
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
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.shard_url:
            _check_shard_url(self.shard_url, "data.shard_url")
        self.sources = [CorpusSource.from_config(s, i) for i, s in enumerate(self.sources or [])]
        if self.sources and self.source != "stream":
            raise ValueError(f"data.sources mixes corpora in the stream source only; data.source is {self.source!r}: "
                             "set data.source=stream or leave data.sources empty")
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
    def corpora(self) -> list[CorpusSource]:
        """The training corpora: ``sources``, or ``root`` alone (weight 1) when it is empty."""
        return self.sources or [CorpusSource(self.root, 1.0, self.shard_url)]

    @property
    def eval_root(self) -> str:
        """Where validation and test read: ``root``, else the first source's."""
        return self.root or (self.sources[0].root if self.sources else "")

    @property
    def window(self) -> WindowSpec:
        return WindowSpec(
            self.latent_frames, self.mode, MediaSpec(fps=self.fps, sample_rate=self.sample_rate)
        )


def _row(epoch: int, start: LaneStart) -> list[int]:
    """A lane's saved position (see ``VideoDataModule.stream_state``); one corpus keeps the 3-number row of
    checkpoints written before mixtures, whose draw count it does not need."""
    pairs = [n for shard_offset in zip(start.shards, start.offsets, strict=True) for n in shard_offset]
    return [epoch, *pairs] + ([start.draws] if len(start.shards) > 1 else [])


def _corpora_of_row(row: list[int]) -> int:
    return 1 if len(row) == 3 else (len(row) - 2) // 2


def _start_of_row(row: list[int]) -> LaneStart:
    corpora = _corpora_of_row(row)
    pairs = row[1 : 1 + 2 * corpora]
    return LaneStart(tuple(pairs[0::2]), tuple(pairs[1::2]), row[-1] if corpora > 1 else 0)


class _PassLoader(DataLoader):
    """Starts a new pass of the training stream on every ``iter()`` (one per Lightning epoch)."""

    def __iter__(self):
        self.dataset.advance()
        return super().__iter__()

    # Stateful for Lightning, with nothing to save: the index reader's position is the batch count Lightning
    # restores. Being stateful keeps a checkpoint of either source loadable by the other (Lightning refuses a
    # checkpoint whose number of loader states differs from the number of stateful loaders).
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class _StreamLoader(DataLoader):
    """Starts a pass of the shard stream on every ``iter()``, reports each batch's lane position to the
    tracker (in the main process, whatever the number of workers), and is a stateful loader for Lightning:
    its ``state_dict`` (saved in every checkpoint by the fit loop) holds the lanes' positions after the last
    processed batch, of every rank; ``load_state_dict`` (called on resume, before the first ``iter()``) puts
    this rank's back."""

    def __init__(self, dataset: TrainShardStream, datamodule: VideoDataModule, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.datamodule = datamodule
        self.tracker = PositionTracker(dataset.lanes, len(dataset.corpora))

    def __iter__(self):
        self.dataset.advance()
        self.tracker.start_pass(self.dataset.epoch, self.dataset.starts)
        for batch in super().__iter__():
            self.tracker.report(batch.position)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.stream_state(self.tracker)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ranks" not in state_dict:  # a checkpoint of the index source: no positions to restore
            return
        saved = self.datamodule.saved_starts(state_dict)
        if saved is not None:
            self.dataset.start_at(self.dataset.next_step, epoch=saved[0], starts=saved[1])


class VideoDataModule(L.LightningDataModule):
    """Reads rest-prep shards.

    ``rank``/``world_size`` default to the attached Trainer's (1 process without one); pass them to
    simulate ranks. The training stream starts at ``start_step`` if set, else at the number of
    batches the attached Trainer has already processed (resume).
    """

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        if not cfg.eval_root:
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

    def _lanes(self) -> int:
        return max(1, self.cfg.num_workers)

    def stream_dataset(self) -> TrainShardStream:
        rank, _ = self._dist()
        corpora = self.cfg.corpora
        if len(corpora) == 1:
            shards = [split_shards(corpora[0].root, self.cfg.train_split, corpora[0].shard_url)]
        else:
            shards = mixture_shards([(c.root, c.shard_url) for c in corpora], self.cfg.train_split, self.cfg.mode)
        stream = TrainShardStream(
            shards,
            self.cfg.window,
            self.cfg.batch_size,
            self.cfg.seed,
            rank,
            self.cfg.epoch_steps,
            lanes=self._lanes(),
            shuffle_buffer=self.cfg.shuffle_buffer,
            weights=[c.weight for c in corpora],
            cache_bytes=self.cfg.cache_mb << 20,
        )
        stream.start_at(self._resume_step())
        return stream

    def saved_starts(self, state: dict[str, Any]) -> tuple[int, list[LaneStart]] | None:
        """(epoch, lane starts) of this rank from a checkpoint's stream state, if it fits this run."""
        rank, world = self._dist()
        ranks, lanes, corpora = state["ranks"], self._lanes(), len(self.cfg.corpora)
        saved = (len(ranks), len(ranks[0]), _corpora_of_row(ranks[0][0]), state["epoch_steps"])
        if saved != (world, lanes, corpora, self.cfg.epoch_steps):
            log.warning(
                "the checkpoint's stream positions are for (ranks, loader lanes, training corpora, epoch_steps) = "
                "%s, this run has %s: the current epoch's shard orders restart (not an exact resume; keep trainer "
                "devices, data.cfg.num_workers, data.cfg.sources and data.cfg.epoch_steps to resume exactly)",
                saved, (world, lanes, corpora, self.cfg.epoch_steps),
            )
            return None
        rows = ranks[rank]
        return rows[0][0], [_start_of_row(row) for row in rows]

    def stream_state(self, tracker: PositionTracker) -> dict[str, Any]:
        """The lanes' positions after the batches processed so far, of every rank: ``{"epoch_steps": E,
        "ranks": [[row per lane] per rank]}``, a row ``[epoch, shard, offset]`` for one corpus and ``[epoch,
        shard_0, offset_0, ..., shard_C-1, offset_C-1, draws]`` for a mixture of C. A collective under a
        multi-process strategy: every rank calls it, as Lightning's checkpoint dump does."""
        epoch, starts = tracker.positions(self._resume_step())
        rows = [_row(epoch, s) for s in starts]
        ranks = [rows]
        if self.trainer is not None and self.trainer.world_size > 1:
            local = torch.tensor(rows, dtype=torch.long, device=self.trainer.strategy.root_device)
            ranks = self.trainer.strategy.all_gather(local).cpu().tolist()  # (world, lanes, 3)
        return {"epoch_steps": self.cfg.epoch_steps, "ranks": ranks}

    def eval_dataset(self, split: str) -> EvalClipDataset:
        rank, world = self._dist()
        return EvalClipDataset(
            CorpusIndex.from_manifest(self.cfg.eval_root, split), self.cfg.window, self.cfg.batch_size, rank, world
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
        if self.cfg.source == "index":
            return self._loader(self.train_dataset(), _PassLoader)
        return _StreamLoader(
            self.stream_dataset(),
            self,
            batch_size=None,  # the stream yields whole ClipBatches
            num_workers=self.cfg.num_workers,
            persistent_workers=False,  # each pass re-sends the stream (its step range, lane starts) to workers
            pin_memory=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.cfg.val_split))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.cfg.test_split))
