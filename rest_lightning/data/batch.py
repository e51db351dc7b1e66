"""The typed batch the DataModule hands to the stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StreamPosition:
    """Where lane ``lane`` of the training stream stands after batch ``step``: in training corpus ``c``,
    ``offsets[c]`` samples of the ``shards[c]``-th shard of its order already emitted; ``draws``: samples the
    lane's mixture of corpora has drawn in this epoch (``rest_lightning.data.shard_stream``). One corpus
    (no ``data.cfg.sources``) has one entry each. Not frozen: Lightning copies batches field by field
    (``apply_to_collection``)."""

    lane: int
    step: int
    shards: tuple[int, ...]
    offsets: tuple[int, ...]
    draws: int

    @property
    def shard(self) -> int:
        """The first corpus' shard (the only one without ``data.cfg.sources``)."""
        return self.shards[0]


@dataclass
class ClipItem:
    """One decoded clip window (before batching).

    video: ``(3, T, H, W)`` float32 in [-1, 1] (``None`` in latent mode); audio: ``(T * spf,)``
    float32 in [-1, 1], frame i covering samples ``[i * spf, (i + 1) * spf)``; ref: ``(3, H, W)``
    float32 in [-1, 1]; latent: ``(C, 1 + k, h, w)`` float32 or ``None``; valid: False for a
    padding item standing in for a corrupt or missing validation sample; ode: the teacher's ODE
    trajectory ``(S + 1, C, 1 + k, h, w)`` float32 (latent mode, shards with ``ode.npy``; noise first,
    sample last, frames cut like ``latent``) or ``None``; speaker: the record's speaker name ("" for
    padding); synthetic: the record carries SynthTalk ground truth (``gt``, schema 2 synthetic corpora).
    """

    video: torch.Tensor | None
    audio: torch.Tensor
    ref: torch.Tensor
    latent: torch.Tensor | None
    valid: bool
    key: str
    start_frame: int  # first frame of the window, in 25 fps frames of the source video (-1 = padding)
    ode: torch.Tensor | None = None
    speaker: str = ""
    synthetic: bool = False


@dataclass
class ClipBatch:
    """A batch of clip windows (DESIGN §6).

    video: ``(B, 3, T, H, W)`` float32 in [-1, 1], T = 1 + 8k (``None`` in latent mode);
    audio: ``(B, T * spf)`` float32 waveform at 16 kHz; ref: ``(B, 3, H, W)`` in [-1, 1];
    latent: ``(B, C, 1 + k, h, w)`` or ``None``; mask: ``(B,)`` bool, False = padding (exclude from
    metrics); start_frame: ``(B,)`` long; keys: sample keys; skipped: corrupt samples the training
    stream skipped to fill this batch (log it as ``train/skipped_samples``); ode: ``(B, S + 1, C, 1 + k,
    h, w)`` teacher trajectories aligned with ``latent`` (``data_prep/ode_trajectories.py``) or ``None``;
    speakers: speaker names ("" for padding); synthetic: ``(B,)`` bool, True where the clip's json carries
    SynthTalk ground truth (the SynthTalk validation metrics score only those rows; ``None``: unknown);
    failed_shards: shards the training stream gave up on (unreadable, dropped mid-read, truncated) while
    filling this batch (log it as ``train/failed_shards``); position: where the ``stream`` source's lane
    stands after this batch (``None`` for the index reader and evaluation; see ``shard_stream``); corpus:
    ``(B,)`` long, the training corpus each clip came from (index into ``data.cfg.sources``, 0 for the single
    ``data.cfg.root``; ``None`` for the index reader and evaluation).
    """

    video: torch.Tensor | None
    audio: torch.Tensor
    ref: torch.Tensor
    latent: torch.Tensor | None
    mask: torch.Tensor
    start_frame: torch.Tensor
    keys: list[str]
    skipped: int = 0
    ode: torch.Tensor | None = None
    speakers: list[str] = field(default_factory=list)
    synthetic: torch.Tensor | None = None
    failed_shards: int = 0
    position: StreamPosition | None = None
    corpus: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)


def collate_clips(items: list[ClipItem], skipped: int = 0, failed_shards: int = 0,
                  position: StreamPosition | None = None, corpus: list[int] | None = None) -> ClipBatch:
    """Stack ``ClipItem``s into a ``ClipBatch`` (all items must share shapes); ``corpus``: each item's
    training corpus (stream source)."""
    return ClipBatch(
        video=torch.stack([i.video for i in items]) if items[0].video is not None else None,
        audio=torch.stack([i.audio for i in items]),
        ref=torch.stack([i.ref for i in items]),
        latent=torch.stack([i.latent for i in items]) if items[0].latent is not None else None,
        mask=torch.tensor([i.valid for i in items], dtype=torch.bool),
        start_frame=torch.tensor([i.start_frame for i in items], dtype=torch.long),
        keys=[i.key for i in items],
        skipped=skipped,
        ode=torch.stack([i.ode for i in items]) if items[0].ode is not None else None,
        speakers=[i.speaker for i in items],
        synthetic=torch.tensor([i.synthetic for i in items], dtype=torch.bool),
        failed_shards=failed_shards,
        position=position,
        corpus=torch.tensor(corpus, dtype=torch.long) if corpus is not None else None,
    )
