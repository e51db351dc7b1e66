"""Clip datasets over an indexed split: a step-seeded training stream and rank-exact eval sets.

Both are ``IterableDataset``s that yield whole ``ClipBatch``es (use ``DataLoader(batch_size=None)``),
so the batch at a given position is the same whatever the number of loader workers, and Lightning
injects no sampler of its own.

Training (``TrainClipStream``): batch ``g`` of rank ``r`` holds, in slot ``b``, the sample drawn by
``np.random.default_rng([seed, r, g, b, attempt])`` uniformly over the whole split (resampling with
replacement, i.e. webdataset's ``resampled=True`` without a shuffle buffer's history), with a random
window of ``1 + 8k`` frames in it. Being a pure function of (seed, rank, step), a run resumed at step
``s`` reads exactly what the uninterrupted run reads after ``s``. A sample that fails to decode is
skipped (the next ``attempt``) and counted in ``ClipBatch.skipped``.

Eval (``EvalClipDataset``): rank ``r`` of ``R`` owns samples ``r, r + R, ...`` of the split (count
from the manifest, padded to ``ceil(N / R)``), window at frame 0; a corrupt, missing or padding
sample becomes a masked zero item, so every rank runs the same number of batches and never skips.
"""

from __future__ import annotations

import io
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from rest_lightning.data.batch import ClipBatch, ClipItem, collate_clips
from rest_lightning.data.codecs import decode_mp4, decode_png, decode_wav
from rest_lightning.data.schema import (
    AUDIO_KEY,
    LATENT_KEY,
    META_KEY,
    ODE_KEY,
    REF_KEY,
    VIDEO_KEY,
    ClipRecord,
    MediaSpec,
)
from rest_lightning.data.shard_index import CorpusIndex

log = logging.getLogger(__name__)

MODES = ("video", "latent")


class DecodedFrames:
    """Decoded clip videos kept in memory up to ``max_bytes``, keyed by sample key (least recently used
    evicted first). A small corpus (the demo's, SynthTalk's) is read hundreds of times per run and mp4
    decoding was 40-55% of a 32 px VAE step on 2 cores (``train/data_wait_fraction``); with the cache each
    clip is decoded once per loader process. ``max_bytes=0`` turns it off."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def __call__(self, sample: dict) -> np.ndarray:
        key = str(sample["__key__"])  # rest-prep keys are unique within a split (video id + clip index)
        frames = self._frames.get(key)
        if frames is not None:
            self._frames.move_to_end(key)
            return frames
        frames = decode_mp4(sample[VIDEO_KEY])
        if self.max_bytes and frames.nbytes <= self.max_bytes:
            frames.setflags(write=False)  # shared by every later read: nobody may modify it in place
            self._frames[key] = frames
            self._bytes += frames.nbytes
            while self._bytes > self.max_bytes:
                self._bytes -= self._frames.popitem(last=False)[1].nbytes
        return frames


@dataclass(frozen=True)
class WindowSpec:
    """What to cut from each clip: ``1 + 8k`` frames (video mode) or ``1 + k`` latents (latent mode)."""

    latent_frames: int
    mode: str = "video"
    media: MediaSpec = MediaSpec()

    @property
    def frames(self) -> int:
        return self.media.clip_frames(self.latent_frames)


def _to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(3, ..., H, W)`` in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return tensor.movedim(-1, 0)


def decode_item(sample: dict, window: WindowSpec, rng: np.random.Generator | None,
                decode_video: DecodedFrames | None = None) -> ClipItem:
    """Decode one shard sample into a window; ``rng`` picks the window start (``None``: frame 0);
    ``decode_video`` (optional) caches decoded videos.

    Raises ``ValueError`` for anything unusable (missing member, undecodable bytes, wrong length).
    """
    try:
        record = ClipRecord.from_json(sample[META_KEY])
        spf = window.media.samples_per_frame
        if record.fps != window.media.fps or record.sample_rate != window.media.sample_rate:
            raise ValueError(
                f"clip is {record.fps} fps / {record.sample_rate} Hz, loader expects "
                f"{window.media.fps} / {window.media.sample_rate}"
            )
        if window.frames > record.frames:
            raise ValueError(
                f"window of {window.frames} frames is longer than the clip ({record.frames}); "
                f"lower data.latent_frames"
            )
        latent = None
        video = None
        ode = None
        if window.mode == "latent":
            offset = 0  # a causal latent's first frame encodes one video frame: windows start at 0
            latent_np = np.load(io.BytesIO(sample[LATENT_KEY]), allow_pickle=False)
            latent = torch.from_numpy(np.ascontiguousarray(latent_np[:, : 1 + window.latent_frames])).float()
            if ODE_KEY in sample:  # the teacher's trajectory (S + 1, C, F, h, w): the same frames as the latent
                ode_np = np.load(io.BytesIO(sample[ODE_KEY]), allow_pickle=False)
                if ode_np.ndim != 5 or ode_np.shape[1:] != latent_np.shape:
                    raise ValueError(f"ode.npy has shape {ode_np.shape}, expected (S + 1, *{latent_np.shape})")
                ode = torch.from_numpy(np.ascontiguousarray(ode_np[:, :, : 1 + window.latent_frames])).float()
        else:
            offset = int(rng.integers(record.frames - window.frames + 1)) if rng is not None else 0
            frames = decode_video(sample) if decode_video is not None else decode_mp4(sample[VIDEO_KEY])
            if frames.shape[0] != record.frames:
                raise ValueError(f"video has {frames.shape[0]} frames, json says {record.frames}")
            video = _to_unit(frames[offset : offset + window.frames])
        audio, rate = decode_wav(sample[AUDIO_KEY])
        if rate != record.sample_rate or len(audio) != record.frames * spf:
            raise ValueError(f"audio has {len(audio)} samples at {rate} Hz, expected {record.frames * spf}")
        audio_window = torch.from_numpy(audio[offset * spf : (offset + window.frames) * spf].copy())
        ref = _to_unit(decode_png(sample[REF_KEY]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"sample {sample.get('__key__', '?')}: {err}") from err
    return ClipItem(
        video, audio_window, ref, latent, True, str(sample["__key__"]), record.start_frame + offset, ode,
        speaker=record.speaker, synthetic=bool(record.gt),
    )


def _padding_like(item: ClipItem) -> ClipItem:
    zeros = lambda t: None if t is None else torch.zeros_like(t)  # noqa: E731
    return ClipItem(zeros(item.video), zeros(item.audio), zeros(item.ref), zeros(item.latent), False, "", -1,
                    zeros(item.ode))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class TrainClipStream(IterableDataset):
    """Training batches ``g`` in ``[first_step, end_step)`` for one rank (see module docstring)."""

    def __init__(
        self,
        index: CorpusIndex,
        window: WindowSpec,
        batch_size: int,
        seed: int,
        rank: int,
        epoch_steps: int,
        max_skips: int = 100,  # design choice: a batch that needs more skips means a broken split
        cache_bytes: int = 0,
    ) -> None:
        if index.total == 0:
            raise ValueError("the training split holds no samples: check data.root and the prep manifest")
        self.index = index
        self.window = window
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.epoch_steps = epoch_steps
        self.max_skips = max_skips
        self.decoded = DecodedFrames(cache_bytes)
        self.next_step = 0
        self.first_step = 0
        self.end_step = epoch_steps

    def start_at(self, step: int) -> None:
        """Continue the stream at global batch ``step`` (on resume)."""
        self.next_step = step

    def advance(self) -> None:
        """Set the range of the next pass: from ``next_step`` to the next epoch boundary, so epochs
        line up with an uninterrupted run's (``with_epoch`` per rank)."""
        self.first_step = self.next_step
        self.end_step = (self.first_step // self.epoch_steps + 1) * self.epoch_steps
        self.next_step = self.end_step

    def __len__(self) -> int:
        # The whole epoch, not the part this pass yields: after a mid-epoch resume Lightning counts the
        # batches it already processed against this length, so the remaining ones are exactly this pass.
        return self.epoch_steps

    def batch(self, step: int) -> ClipBatch:
        """Batch number ``step`` of this rank's stream (pure function of seed, rank, step)."""
        items, skipped = [], 0
        for slot in range(self.batch_size):
            attempt = 0
            while True:
                rng = np.random.default_rng([self.seed, self.rank, step, slot, attempt])
                i = int(rng.integers(self.index.total))
                try:
                    items.append(decode_item(self.index.read(i), self.window, rng, self.decoded))
                    break
                except ValueError as err:
                    skipped += 1
                    attempt += 1
                    log.warning("skipping corrupt training sample %d: %s", i, err)
                    if skipped > self.max_skips:
                        raise ValueError(f"more than {self.max_skips} corrupt samples in one batch") from err
        return collate_clips(items, skipped)

    def __iter__(self) -> Iterator[ClipBatch]:
        worker, workers = _worker()
        # The DataLoader takes batches from workers round-robin, so worker w serving steps
        # first + w, first + w + W, ... makes the loader yield steps first, first + 1, ... in order.
        for step in range(self.first_step + worker, self.end_step, workers):
            yield self.batch(step)


class EvalClipDataset(IterableDataset):
    """Validation/test batches of one rank: fixed, disjoint across ranks, never skipping."""

    def __init__(
        self, index: CorpusIndex, window: WindowSpec, batch_size: int, rank: int, world_size: int
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.index = index
        self.window = window
        self.batch_size = batch_size
        per_rank = math.ceil(index.total / world_size)
        self.indices = [rank + world_size * j for j in range(per_rank)]  # >= total: padding
        self._template: ClipItem | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def _read(self, i: int) -> ClipItem | None:
        if i >= self.index.total:
            return None
        try:
            return decode_item(self.index.read(i), self.window, None)
        except ValueError as err:
            log.warning("evaluation sample %d unreadable, using a masked padding item: %s", i, err)
            return None

    def _template_item(self) -> ClipItem:
        # Padding takes the shapes of a readable sample of the split (any rank finds the same one).
        if self._template is None:
            for i in range(self.index.total):
                item = self._read(i)
                if item is not None:
                    self._template = item
                    break
            else:
                raise ValueError("no sample of the evaluation split is readable")
        return self._template

    def __iter__(self) -> Iterator[ClipBatch]:
        worker, workers = _worker()
        for b in range(worker, len(self), workers):
            chunk = self.indices[b * self.batch_size : (b + 1) * self.batch_size]
            items = [self._read(i) for i in chunk]
            if any(item is None for item in items):
                pad = _padding_like(self._template_item())
                items = [pad if item is None else item for item in items]
            yield collate_clips(items)
