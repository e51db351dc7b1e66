"""Optional lip-sync filter and audio/video offset correction for prepared clips, with SyncNet.

As LatentSync prepares its data: score each clip with SyncNet (``rest_lightning.metrics.LipSync``,
the syncnet_python algorithm), drop it when its confidence (Sync-C) is below ``min_confidence`` (3 in
LatentSync), and otherwise shift its audio by the detected AV offset so that the offset becomes 0.

Offset convention (syncnet_python ``evaluate``): the best-matching audio window for video window i
is i + k, and ``offset = -k``; a negative offset means the audio is late. Correcting moves the audio
k frames earlier (dropping its first k frames, zero-padding the end), or, for a positive offset,
later (zero-padding the start), keeping its length.

The scorer is anything with ``score_video(video (3, T, H, W) in [-1, 1], audio (S,)) -> SyncScores``:
the reference SyncNet (:func:`syncnet_scorer`, which needs ``syncnet_v2.model``) or, in tests, a
constructed one. Nothing here runs unless a caller asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from rest_lightning.metrics.sync import SyncScores


class SyncScorer(Protocol):
    def score_video(self, video: Tensor, audio: Tensor) -> SyncScores: ...


@dataclass(frozen=True)
class LipSyncFilterConfig:
    min_confidence: float = 3.0  # LatentSync: clips with Sync-C < 3 are dropped
    correct_offset: bool = True  # shift the audio so the detected offset becomes 0
    max_abs_offset: int | None = None  # drop clips whose |offset| exceeds this (frames); None: keep any
    samples_per_frame: int = 640  # 16 kHz / 25 fps (data.schema.MediaSpec)

    def __post_init__(self) -> None:
        if self.samples_per_frame < 1:
            raise ValueError(f"samples_per_frame must be >= 1, got {self.samples_per_frame}")
        if self.max_abs_offset is not None and self.max_abs_offset < 0:
            raise ValueError(f"max_abs_offset must be >= 0 or None, got {self.max_abs_offset}")


@dataclass(frozen=True)
class LipSyncDecision:
    keep: bool
    offset: int  # detected AV offset in frames (negative: audio late)
    confidence: float  # Sync-C
    distance: float  # Sync-D
    reason: str  # why a clip is dropped ("" when kept)


def frames_to_video(frames: np.ndarray) -> Tensor:
    """``(T, H, W, 3)`` uint8 RGB -> ``(3, T, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


def shift_audio(audio: np.ndarray, offset: int, samples_per_frame: int) -> np.ndarray:
    """Audio moved so that a detected ``offset`` (frames) becomes 0; same length, zero-padded."""
    shift = -offset * samples_per_frame  # samples to advance the audio by (negative: delay it)
    if shift == 0:
        return audio.copy()
    out = np.zeros_like(audio)
    if shift > 0:
        out[: max(0, len(audio) - shift)] = audio[shift:]
    else:
        out[-shift:] = audio[: len(audio) + shift]
    return out


def judge_clip(scorer: SyncScorer, frames: np.ndarray, audio: np.ndarray, config: LipSyncFilterConfig) -> LipSyncDecision:
    """Score one clip (frames ``(T, H, W, 3)`` uint8, audio ``(T * spf,)`` float in [-1, 1]) and decide."""
    scores = scorer.score_video(frames_to_video(frames), torch.from_numpy(np.asarray(audio, np.float32)))
    reason = ""
    if scores.confidence < config.min_confidence:
        reason = f"lip-sync confidence {scores.confidence:.3f} < {config.min_confidence}"
    elif config.max_abs_offset is not None and abs(scores.offset) > config.max_abs_offset:
        reason = f"AV offset {scores.offset} frames exceeds {config.max_abs_offset}"
    return LipSyncDecision(not reason, scores.offset, scores.confidence, scores.min_distance, reason)


def filter_and_correct(
    scorer: SyncScorer, frames: np.ndarray, audio: np.ndarray, config: LipSyncFilterConfig
) -> tuple[LipSyncDecision, np.ndarray | None]:
    """The decision and the clip's corrected audio (None when the clip is dropped)."""
    decision = judge_clip(scorer, frames, audio, config)
    if not decision.keep:
        return decision, None
    if not config.correct_offset:
        return decision, np.asarray(audio).copy()
    return decision, shift_audio(np.asarray(audio), decision.offset, config.samples_per_frame)


def syncnet_scorer(weights_path: str | Path | None, allow_random_weights: bool = False) -> SyncScorer:
    """The reference scorer: SyncNet v2 from ``syncnet_v2.model`` (``eval.weights.syncnet``). Random
    weights cannot judge real lip sync; they exist only to exercise the plumbing."""
    from rest_lightning.metrics import LipSync

    return LipSync(weights_path, allow_random_weights)
