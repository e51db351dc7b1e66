"""SynthTalk metrics: lip-sync, identity and drift of generated synthetic faces, with no network weights.

The synthetic corpus (``rest_lightning/data/synthetic.py``) has ground truth, so these metrics are
analytic and calibrated on the corpus itself (docs/synthtalk.md has the figures):

- ``measure_mouth``: the mouth opening of every frame of a clip ``(T, 3, H, W)`` in [-1, 1], read back
  from pixels by inverting the renderer's mouth geometry: the lips are an ellipse of half-axes
  ``(mouth_w, mouth_w * (LIP_CLOSED + LIP_GAIN * opening))``, so the union of lips and opening has
  area ``pi * a * b`` and horizontal variance ``a**2 / 4``; ``b / a`` gives the opening whatever the
  face size, crop or identity. Lip pixels are found by chromaticity (G/R falls to 0.6x the skin's on
  the lips, far below it in the opening; shading and highlights keep G/R), soft (a mixed pixel counts
  partly), inside the face (a closing of the skin mask), around the mouth found by mean shift.
- ``lip_sync``: Pearson r between measured opening and the opening the audio implies
  (``mouth_opening_from_loudness(frame_loudness(audio))``), pooled over frames, and the best offset in
  +-5 frames. Constant input (a frozen clip) gives r = 0, never NaN.
- ``identity_features`` / ``identity_distance``: colours of skin and background and the face box,
  per clip; ``identity_calibration`` gives the same- and different-speaker distance distributions.
- ``drift``: identity distance per 10 s window of a long stream and the rule
  ``last <= 1.2 x first + 0.05 x median different-speaker distance``.

``SynthTalkLipSync`` and ``SynthTalkIdentity`` are torchmetrics ``Metric``s (``cat``/``sum`` states,
synced across ranks like the others); the plain functions serve offline evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from rest_lightning.data.schema import MediaSpec
from rest_lightning.data.synthetic import (
    LIP_CLOSED,
    LIP_GAIN,
    LIP_TINT,
    frame_loudness,
    loudness_scale,
    mouth_opening_from_loudness,
)
from rest_lightning.metrics.preprocess import check_video
from rest_lightning.metrics.result import MetricResult, make_results

MIN_SIZE = 32  # frames smaller than this hold a closed mouth in under one pixel row
LIP_G_RATIO = LIP_TINT[1] / LIP_TINT[0]  # G/R of lips relative to the skin's: 0.6 (the renderer's tint)
MAX_OFFSET = 5  # frames searched either side for the best audio-video offset (issue 12)
DRIFT_WINDOW_S = 10.0  # issue 12: identity distance per 10 s window of a long stream
DRIFT_GROWTH = 1.2  # issue 12 drift rule: last window <= 1.2 x first ...
DRIFT_SLACK = 0.05  # ... + 0.05 x the median different-speaker distance
UINT8_MAX = 255.0


FITTED_MARGIN = 0.25  # the rest-prep crop margin the mouth geometry was first fitted on
DEFAULT_GEOMETRY_SCALE = 1.25  # the default geometry: the fitted one scaled to cover margins 0 to 0.25


def _mouth_geometry(scale: float) -> dict[str, Any]:
    """The mouth geometry fitted on margin-0.25 crops, scaled by ``scale`` about the frame centre (rounded
    to 1e-6, so that a fraction x frame side lands on the pixel a written-out value would)."""

    def scaled(*values: float, about: float = 0.0) -> tuple[float, ...]:
        return tuple(round(min(1.0, max(0.0, about + (v - about) * scale)), 6) for v in values)

    return {"search_box": scaled(0.5, 0.82, 0.3, 0.7, about=0.5), "window": scaled(0.09, 0.14),
            "closing": scaled(0.2)[0], "erosion": scaled(0.04)[0]}


_DEFAULT_GEOMETRY = _mouth_geometry(DEFAULT_GEOMETRY_SCALE)


@dataclass(frozen=True)
class MouthMeasureConfig:
    """Where ``measure_mouth`` looks, as fractions of the frame side (design choices, checked on the
    corpus: a face crop by ``rest-prep`` puts the face centre near the frame centre). One geometry serves
    crops with ``prep.margin`` from 0 (the face fills the frame, mouth at 0.6-0.9 of the height) to 0.25
    (the default, mouth at 0.6-0.75): the mouth's search box, window and kernels are those first fitted at
    margin 0.25, scaled by 1.25 about the centre; the skin box stays at the face centre. Ground-truth
    lip-sync r on 8 test speakers at 32 px: min 0.950 at margin 0.25 (unchanged), min 0.945 at margin 0
    (0.18 unscaled)."""

    skin_box: tuple[float, float, float, float] = (0.3, 0.8, 0.3, 0.7)  # y0, y1, x0, x1: mostly skin (face centre)
    search_box: tuple[float, float, float, float] = _DEFAULT_GEOMETRY["search_box"]  # where the mouth may be
    window: tuple[float, float] = _DEFAULT_GEOMETRY["window"]  # mean-shift half-height / half-width at the mouth
    mean_shift_steps: int = 3  # design choice: converges in 2 on the corpus
    skin_tolerance: float = 0.12  # |G/R / skin G/R - 1| below this is skin (lips sit at 0.4 below)
    noise_floor: float = 0.1  # lip weights below this are codec chroma noise, not lips
    closing: float = _DEFAULT_GEOMETRY["closing"]  # closing kernel / frame side: fills the mouth in the skin mask
    erosion: float = _DEFAULT_GEOMETRY["erosion"]  # erosion kernel / frame side: drops the outline's mixed pixels

    @classmethod
    def for_crop_margin(cls, margin: float) -> MouthMeasureConfig:
        """The geometry fitted on crops of ``prep.margin`` 0.25, scaled about the centre to a crop of
        ``margin`` (the face spans ``1 / (1 + 2 margin)`` of the frame); the skin box stays put. Sharper
        than the default for one known margin: at 64 px and margin 0.25 one of 6 speakers reads
        ground-truth r 0.94 with the default geometry and 0.95+ with this one."""
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"crop margin {margin} must be in [0, 1]")
        return cls(**_mouth_geometry((1.0 + 2.0 * FITTED_MARGIN) / (1.0 + 2.0 * margin)))


def _unit_to_rgb(video: Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [-1, 1] -> ``(T, H, W, 3)`` float64 in [0, 255]."""
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a clip (T, 3, H, W) in [-1, 1], got shape {tuple(video.shape)}")
    if min(video.shape[-2:]) < MIN_SIZE:
        raise ValueError(
            f"SynthTalk metrics need frames of at least {MIN_SIZE} px, got {tuple(video.shape[-2:])}"
        )
    rgb = (video.detach().to("cpu", torch.float64).clamp(-1, 1) + 1) * (UINT8_MAX / 2)
    return rgb.permute(0, 2, 3, 1).numpy()


def _green_over_red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 1] + 1.0) / (rgb[..., 0] + 1.0)  # +1: black pixels do not divide by zero


def _box(shape: tuple[int, int], box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    h, w = shape
    y0, y1, x0, x1 = box
    return slice(int(y0 * h), max(int(y1 * h), int(y0 * h) + 1)), slice(
        int(x0 * w), max(int(x1 * w), int(x0 * w) + 1)
    )


def _kernel(fraction: float, side: int) -> np.ndarray:
    k = max(int(round(fraction * side)) | 1, 1)  # odd, so the kernel has a centre
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _lip_weights(frame: np.ndarray, cfg: MouthMeasureConfig) -> np.ndarray:
    """``(H, W, 3)`` -> ``(H, W)`` in [0, 1]: how much of each pixel is lips or mouth opening."""
    h, w = frame.shape[:2]
    ratio = _green_over_red(frame)
    ys, xs = _box((h, w), cfg.skin_box)
    skin_ratio = float(np.median(ratio[ys, xs]))
    relative = ratio / skin_ratio
    lips = np.clip((1.0 - relative) / (1.0 - LIP_G_RATIO), 0.0, 1.0)
    lips = np.clip((lips - cfg.noise_floor) / (1.0 - cfg.noise_floor), 0.0, 1.0)
    skin = (np.abs(relative - 1.0) < cfg.skin_tolerance).astype(np.uint8)
    face = cv2.morphologyEx(skin, cv2.MORPH_CLOSE, _kernel(cfg.closing, h))
    face = cv2.erode(face, _kernel(cfg.erosion, h))
    return lips * face


def _centroid(weights: np.ndarray, ys: slice, xs: slice) -> tuple[float, float] | None:
    patch = weights[ys, xs]
    mass = patch.sum()
    if mass <= 0:
        return None
    rows = np.arange(ys.start, ys.start + patch.shape[0]) + 0.5
    cols = np.arange(xs.start, xs.start + patch.shape[1]) + 0.5
    return float(patch.sum(1) @ rows / mass), float(patch.sum(0) @ cols / mass)


def _mouth_moments(weights: np.ndarray, cfg: MouthMeasureConfig) -> tuple[float, float]:
    """Area (px) and horizontal variance (px^2) of the lip weights around the mouth; (0, 0) if none."""
    h, w = weights.shape
    centre = _centroid(weights, *_box((h, w), cfg.search_box))
    if centre is None:
        return 0.0, 0.0
    half_h, half_w = cfg.window[0] * h, cfg.window[1] * w
    for _ in range(cfg.mean_shift_steps):
        cy, cx = centre
        ys = slice(max(int(round(cy - half_h)), 0), min(int(round(cy + half_h)) + 1, h))
        xs = slice(max(int(round(cx - half_w)), 0), min(int(round(cx + half_w)) + 1, w))
        moved = _centroid(weights, ys, xs)
        if moved is None:
            return 0.0, 0.0
        centre = moved
    patch = weights[ys, xs]
    area = float(patch.sum())
    columns = patch.sum(0)
    cols = np.arange(xs.start, xs.start + patch.shape[1]) + 0.5
    mean_x = columns @ cols / area
    return area, float(columns @ (cols - mean_x) ** 2 / area)


def measure_mouth(video: Tensor, config: MouthMeasureConfig | None = None) -> Tensor:
    """Mouth opening of every frame, read from pixels.

    The lips' half-width ``a`` does not change with the opening, so it is measured once per clip
    (``a**2 = 4 x`` the median over frames of the horizontal variance; per frame it is noisy at 32 px)
    and each frame's opening follows from its area: ``b / a = area / (pi a**2)``.

    Args:
        video: one clip ``(T, 3, H, W)`` RGB float in [-1, 1], H, W >= 32, a face crop as ``rest-prep``
            cuts it (face centred) or a full synthetic frame.

    Returns:
        ``(T,)`` float64 in [0, 1] on the CPU, in the unit of the ground truth ``gt.mouth``.
    """
    cfg = config or MouthMeasureConfig()
    moments = np.array([_mouth_moments(_lip_weights(f, cfg), cfg) for f in _unit_to_rgb(video)])
    area, var_x = moments[:, 0], moments[:, 1]
    found = var_x > 0
    if not found.any():
        return torch.zeros(len(moments), dtype=torch.float64)
    aspect = area / (4.0 * math.pi * float(np.median(var_x[found])))  # b / a, since area = pi a b
    return torch.from_numpy(np.clip((aspect - LIP_CLOSED) / LIP_GAIN, 0.0, 1.0))


def expected_mouth(audios: list[Tensor | np.ndarray], media: MediaSpec | None = None) -> list[Tensor]:
    """The openings the audio of a set of clips implies (one speaker's, say), on one scale.

    Args:
        audios: per clip ``(S_i,)`` mono float in [-1, 1].

    Returns:
        per clip ``(S_i // spf,)`` float64 in [0, 1]: ``mouth_opening_from_loudness`` of the frame
        loudness, normalised by the 95th percentile of all the clips' frames together (each clip on its
        own scale would make the pooled r depend on where the clips were cut).
    """
    media = media or MediaSpec()
    loudness = []
    for audio in audios:
        samples = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio (S,) per clip, got shape {tuple(samples.shape)}")
        loudness.append(frame_loudness(samples, media.samples_per_frame))
    scale = loudness_scale(np.concatenate(loudness))
    return [torch.from_numpy(mouth_opening_from_loudness(frames, scale)) for frames in loudness]


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson r of two ``(N,)`` series; 0 when either is constant (a frozen mouth has no sync), never NaN."""
    x, y = x.to(torch.float64).flatten(), y.to(torch.float64).flatten()
    if x.shape != y.shape:
        raise ValueError(f"pearson: series of {x.numel()} and {y.numel()} values")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = torch.sqrt((dx * dx).sum() * (dy * dy).sum())
    if x.numel() < 2 or float(denominator) <= torch.finfo(torch.float64).eps:
        return 0.0
    return float((dx * dy).sum() / denominator)


@dataclass(frozen=True)
class LipSyncScore:
    """Lip-sync of a set of clips: ``r`` at offset 0, the best offset (frames the audio lags the video:
    a video k frames late scores -k) and ``r_by_offset`` ``(2 * max_offset + 1,)`` indexed by offset + max_offset."""

    r: float
    offset: int
    best_r: float
    r_by_offset: Tensor


def lip_sync(measured: list[Tensor], expected: list[Tensor], max_offset: int = MAX_OFFSET) -> LipSyncScore:
    """Pooled Pearson r between measured and audio-implied openings, over every offset in +-max_offset.

    Args:
        measured, expected: per clip ``(T_i,)`` openings (``measure_mouth``, ``expected_mouth``); a clip
            pairs frame t of the video with frame t + k of the audio at offset k, within the clip.

    ``offset`` = argmax of r: audio delayed by k frames against the video gives offset k.
    """
    if len(measured) != len(expected) or not measured:
        raise ValueError(f"lip_sync: {len(measured)} measured and {len(expected)} expected clips")
    values = []
    for k in range(-max_offset, max_offset + 1):
        video_parts, audio_parts = [], []
        for m, e in zip(measured, expected, strict=True):
            n = min(len(m), len(e))
            lo, hi = max(0, -k), min(n, n - k)  # frames t with t + k inside the clip
            if hi > lo:
                video_parts.append(m[lo:hi])
                audio_parts.append(e[lo + k : hi + k])
        values.append(pearson(torch.cat(video_parts), torch.cat(audio_parts)) if video_parts else 0.0)
    r_by_offset = torch.tensor(values, dtype=torch.float64)
    best = int(torch.argmax(r_by_offset))
    return LipSyncScore(
        r=float(r_by_offset[max_offset]),
        offset=best - max_offset,
        best_r=float(r_by_offset[best]),
        r_by_offset=r_by_offset,
    )


@dataclass(frozen=True)
class IdentityConfig:
    """Where ``identity_features`` looks (design choices, fractions of the frame side)."""

    edge: float = 0.1  # columns at each side that show background in a face crop
    band: float = 0.25  # rows at the top / bottom whose edge columns give the two background colours
    face_threshold: float = 40.0  # RGB distance (0-255) from the row's background that marks the face
    face_quantile: float = 0.02  # face box = 2nd..98th percentile of the face pixels' rows / columns
    skin: MouthMeasureConfig = MouthMeasureConfig()


IDENTITY_FEATURES = 11  # background top (3), background bottom (3), skin (3), face box width, height


def identity_features(video: Tensor, config: IdentityConfig | None = None) -> Tensor:
    """Identity of each frame: ``(T, 3, H, W)`` in [-1, 1] -> ``(T, 11)`` float64.

    Features (colours in [0, 1], sizes as fractions of the frame side): background colour at the top
    and the bottom (the renderer's gradient), skin colour (median of the face centre), face box width
    and height (pixels far from their row's background).
    """
    cfg = config or IdentityConfig()
    frames = _unit_to_rgb(video)
    t, h, w, _ = frames.shape
    edge, band = max(int(cfg.edge * w), 1), max(int(cfg.band * h), 1)
    sides = np.concatenate([frames[:, :, :edge], frames[:, :, -edge:]], axis=2)  # (T, H, 2*edge, 3)
    row_background = np.median(sides, axis=2)  # (T, H, 3): the gradient is vertical
    top = np.median(sides[:, :band].reshape(t, -1, 3), axis=1)
    bottom = np.median(sides[:, -band:].reshape(t, -1, 3), axis=1)
    ys, xs = _box((h, w), cfg.skin.skin_box)
    skin = np.median(frames[:, ys, xs].reshape(t, -1, 3), axis=1)
    face = np.linalg.norm(frames - row_background[:, :, None, :], axis=-1) > cfg.face_threshold  # (T, H, W)
    q = cfg.face_quantile
    boxes = np.stack([_index_spread(face.sum(axis=1), q) / w, _index_spread(face.sum(axis=2), q) / h], axis=1)
    colours = np.concatenate([top, bottom, skin], axis=1) / UINT8_MAX
    return torch.from_numpy(np.concatenate([colours, boxes], axis=1))


def _index_spread(counts: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(i, 1 - q) - np.quantile(i, q)`` (numpy's default, linear) of the indices ``i`` of each
    frame's face pixels along one axis, from their histogram ``counts (T, L)``; 0 for a frame without any.

    The same arithmetic as numpy's, vectorised over frames (the per-frame ``np.nonzero`` + ``np.quantile``
    loop was a tenth of a SynthTalk evaluation); ``test_index_spread_equals_numpy_quantile`` checks equality.
    """
    cumulative = np.cumsum(counts, axis=1)  # (T, L)
    n = cumulative[:, -1]

    def quantile(p: float) -> np.ndarray:
        virtual = (n - 1) * p  # float64
        previous = np.floor(virtual).astype(np.int64)
        following = previous + 1
        last = virtual >= n - 1
        previous[last] = following[last] = (n - 1)[last]
        gamma = virtual - previous

        def value(k: np.ndarray) -> np.ndarray:  # the k-th smallest index: bins whose cumulative count is <= k
            return (cumulative <= k[:, None]).sum(axis=1)

        a, b = value(previous), value(following)
        diff = b - a
        # numpy's _lerp: a + diff * gamma, or b - diff * (1 - gamma) where gamma >= 0.5
        return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)

    spread = quantile(1.0 - q) - quantile(q)
    return np.where(n > 0, spread, 0.0)


def clip_identity(video: Tensor, config: IdentityConfig | None = None) -> Tensor:
    """One identity vector per clip: the per-feature median over frames, ``(T, 3, H, W)`` -> ``(11,)``."""
    return identity_features(video, config).median(dim=0).values


def identity_distance(a: Tensor, b: Tensor) -> float:
    """Euclidean distance between two identity vectors ``(11,)`` (``clip_identity``)."""
    return float(torch.linalg.vector_norm(a.to(torch.float64) - b.to(torch.float64)))


@dataclass(frozen=True)
class IdentityCalibration:
    """Identity distances between clips of the same speaker and of different speakers.

    ``same``, ``different``: ``(N,)`` float64 distances of all such pairs; percentiles in ``percentile``.
    """

    same: np.ndarray
    different: np.ndarray

    def percentile(self, which: str, q: float) -> float:
        if which not in ("same", "different"):
            raise ValueError(
                f"IdentityCalibration.percentile: which must be 'same' or 'different', got {which!r}"
            )
        values = self.same if which == "same" else self.different
        if values.size == 0:
            raise ValueError(
                f"IdentityCalibration: no {which}-speaker pairs (need >= 2 clips per speaker / >= 2 speakers)"
            )
        return float(np.percentile(values, q))

    def summary(self) -> dict[str, float]:
        """Same-speaker 50/95th and different-speaker 5/50th percentiles (the numbers the rules use)."""
        return {
            "same_p50": self.percentile("same", 50),
            "same_p95": self.percentile("same", 95),
            "different_p5": self.percentile("different", 5),
            "different_p50": self.percentile("different", 50),
        }


def identity_calibration(
    clips: list[Tensor], speakers: list[str], refs: list[Tensor] | None = None
) -> IdentityCalibration:
    """Same- and different-speaker identity distance distributions from labelled clips.

    Args:
        clips: clips ``(T, 3, H, W)`` in [-1, 1]; speakers: one label per clip.
        refs: optional reference images ``(3, H, W)``, one per clip (the shard's ``ref.png``). With them
            every clip is compared with every reference (the pairing ``SynthTalkIdentity`` scores);
            without, every pair of clips.
    """
    if len(clips) != len(speakers) or len(clips) < 2 or (refs is not None and len(refs) != len(clips)):
        raise ValueError(
            f"identity_calibration: needs >= 2 clips with one speaker (and one ref) each, got {len(clips)} "
            f"clips, {len(speakers)} speakers, {None if refs is None else len(refs)} refs"
        )
    vectors = [clip_identity(c) for c in clips]
    same, different = [], []
    if refs is None:
        pairs = [
            (vectors[i], vectors[j], i, j) for i in range(len(vectors)) for j in range(i + 1, len(vectors))
        ]
    else:
        ref_vectors = [clip_identity(r[None]) for r in refs]
        pairs = [(v, r, i, j) for i, v in enumerate(vectors) for j, r in enumerate(ref_vectors)]
    for a, b, i, j in pairs:
        (same if speakers[i] == speakers[j] else different).append(identity_distance(a, b))
    return IdentityCalibration(np.asarray(same, dtype=np.float64), np.asarray(different, dtype=np.float64))


@dataclass(frozen=True)
class DriftResult:
    """Identity distance to the reference per window ``(N,)`` and whether the drift rule holds."""

    distances: np.ndarray
    limit: float
    holds: bool


def drift(
    video: Tensor,
    ref: Tensor,
    different_median: float,
    fps: int = MediaSpec().fps,
    window_s: float = DRIFT_WINDOW_S,
) -> DriftResult:
    """Identity drift over a long stream: distance of each ``window_s`` window to the reference.

    Args:
        video: the stream ``(T, 3, H, W)`` in [-1, 1]; a last partial window counts if at least half full.
        ref: the reference image ``(3, H, W)`` in [-1, 1].
        different_median: the median different-speaker distance (``IdentityCalibration``).

    The rule (issue 12): ``last <= DRIFT_GROWTH x first + DRIFT_SLACK x different_median``.
    """
    window = max(int(round(window_s * fps)), 1)
    reference = clip_identity(ref[None])
    distances = []
    for start in range(0, video.shape[0], window):
        part = video[start : start + window]
        if start and part.shape[0] < window / 2:
            break
        distances.append(identity_distance(clip_identity(part), reference))
    values = np.asarray(distances, dtype=np.float64)
    limit = DRIFT_GROWTH * values[0] + DRIFT_SLACK * different_median
    return DriftResult(values, float(limit), bool(values[-1] <= limit))


def frames_to_unit(frames: np.ndarray) -> Tensor:
    """uint8 frames ``(T, H, W, 3)`` (decoded clips, ``ClipTruth.frames``) -> ``(T, 3, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / (UINT8_MAX / 2) - 1


class SynthTalkLipSync(Metric):
    """Lip-sync of generated synthetic faces against the audio, pooled per speaker.

    ``update(video, audio, speaker)``: video ``(B, 3, T, H, W)`` in [-1, 1]; audio ``(B, S)`` 16 kHz in
    [-1, 1] covering the frames; speaker ``(B,)`` int64 ids (any stable code, e.g. the index of the
    speaker name). ``compute()`` -> ``{"synthtalk_sync_r": mean over speakers of the pooled r at offset 0,
    "synthtalk_sync_offset": mean over speakers of |best offset| in frames, "synthtalk_mouth_std": std of
    the measured opening (a frozen mouth scores ~0)}``. ``per_speaker()`` gives every speaker's score.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, media: MediaSpec | None = None, max_offset: int = MAX_OFFSET) -> None:
        super().__init__()
        self.media = media or MediaSpec()
        self.max_offset = max_offset
        for name in ("measured", "loudness", "clip_lengths", "clip_speakers"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, video: Tensor, audio: Tensor, speaker: Tensor) -> None:
        check_video(video, "SynthTalkLipSync.update")
        if audio.ndim != 2 or audio.shape[0] != video.shape[0] or speaker.shape != (video.shape[0],):
            raise ValueError(
                f"SynthTalkLipSync.update: audio (B, S) and speaker (B,) with B={video.shape[0]}, got "
                f"{tuple(audio.shape)} and {tuple(speaker.shape)}"
            )
        device = self._device
        for clip, sound, who in zip(video, audio, speaker, strict=True):
            measured = measure_mouth(clip.transpose(0, 1))
            # Loudness, not opening: the opening is normalised per speaker at compute (expected_mouth).
            loudness = torch.from_numpy(
                frame_loudness(sound.detach().cpu().numpy(), self.media.samples_per_frame)
            )
            n = min(len(measured), len(loudness))
            self.measured.append(measured[:n].to(device))
            self.loudness.append(loudness[:n].to(device))
            self.clip_lengths.append(torch.tensor([n], device=device))
            self.clip_speakers.append(who.reshape(1).to(device=device, dtype=torch.int64))

    # The dtype of each ``cat`` state: a rank that scored no clip sends an empty tensor of this dtype, so
    # every rank's part of an all-gather agrees (torchmetrics would send an empty float32 tensor).
    _STATE_DTYPES = {
        "measured": torch.float64,
        "loudness": torch.float64,
        "clip_lengths": torch.int64,
        "clip_speakers": torch.int64,
    }

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        # Called by ``sync`` after it cached the local states (``unsync`` restores them).
        for name, dtype in self._STATE_DTYPES.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.empty(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def _states(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        def flat(name: str) -> Tensor:
            state = getattr(self, name)
            if isinstance(state, Tensor):  # synced list states arrive concatenated
                return state
            return torch.cat(state) if state else torch.empty(0, dtype=self._STATE_DTYPES[name])

        return flat("measured"), flat("loudness"), flat("clip_lengths"), flat("clip_speakers")

    def per_speaker(self) -> dict[int, LipSyncScore]:
        """Speaker id -> ``LipSyncScore`` pooled over that speaker's clips, the audio's loudness turned
        into the opening it implies on one scale per speaker (as ``expected_mouth``)."""
        measured, loudness, lengths, speakers = (t.cpu() for t in self._states())
        clips_m = torch.split(measured, lengths.tolist())
        clips_l = torch.split(loudness, lengths.tolist())
        scores = {}
        for who in sorted(set(speakers.tolist())):
            chosen = [i for i, s in enumerate(speakers.tolist()) if s == who]
            scale = loudness_scale(torch.cat([clips_l[i] for i in chosen]).numpy())
            expected = [torch.from_numpy(mouth_opening_from_loudness(clips_l[i].numpy(), scale)) for i in chosen]
            scores[who] = lip_sync([clips_m[i] for i in chosen], expected, self.max_offset)
        return scores

    def compute(self) -> dict[str, Tensor]:
        # On the synced states: a rank that scored nothing may join the others' compute.
        if self._states()[2].numel() == 0:
            raise ValueError("SynthTalkLipSync.compute: no clips were scored; call update first")
        scores = list(self.per_speaker().values())
        measured = self._states()[0]
        return {
            "synthtalk_sync_r": torch.tensor(float(np.mean([s.r for s in scores])), dtype=torch.float64),
            "synthtalk_sync_offset": torch.tensor(
                float(np.mean([abs(s.offset) for s in scores])), dtype=torch.float64
            ),
            "synthtalk_mouth_std": measured.to(torch.float64).std(unbiased=False),
        }

    def results(self) -> dict[str, MetricResult]:
        better = {"synthtalk_sync_r": True, "synthtalk_sync_offset": False, "synthtalk_mouth_std": True}
        return make_results(self.compute(), better, uncalibrated=False)


class SynthTalkIdentity(Metric):
    """Identity distance between generated clips and their reference images (lower is better).

    ``update(video, ref)``: video ``(B, 3, T, H, W)`` and ref ``(B, 3, H, W)`` in [-1, 1].
    ``compute()`` -> ``{"synthtalk_identity": mean distance}``; compare with an ``IdentityCalibration``
    (same-speaker 95th / different-speaker 5th percentile). Always pair it with lip-sync: a frozen copy
    of the reference scores a perfect identity.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("distance_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_clips", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, video: Tensor, ref: Tensor) -> None:
        check_video(video, "SynthTalkIdentity.update")
        if ref.ndim != 4 or ref.shape[0] != video.shape[0]:
            raise ValueError(
                f"SynthTalkIdentity.update: ref must be (B={video.shape[0]}, 3, H, W), got {tuple(ref.shape)}"
            )
        for clip, image in zip(video, ref, strict=True):
            self.distance_sum += identity_distance(
                clip_identity(clip.transpose(0, 1)), clip_identity(image[None])
            )
            self.num_clips += 1

    def compute(self) -> dict[str, Tensor]:
        if float(self.num_clips) < 1:
            raise ValueError("SynthTalkIdentity.compute: no clips were scored; call update first")
        return {"synthtalk_identity": self.distance_sum / self.num_clips}

    def results(self) -> dict[str, MetricResult]:
        return make_results(self.compute(), {"synthtalk_identity": False}, uncalibrated=False)
