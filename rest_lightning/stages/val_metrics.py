"""Validation metrics of generated (or reconstructed) clips, shared by the stages (DESIGN §8).

The same torchmetrics ``Metric``s the offline suite uses (``rest_lightning.metrics``), so the numbers a
run logs are the numbers ``rest-eval`` computes. They sync across ranks themselves (float64 sums).
The metric networks are kept out of the stage's module tree: they are not trained and do not belong
in its checkpoints.

Identity (issue 17): ``identity`` is dlib's 128-d embedding distance of each generated clip's frames to
the reference (``val/identity_dist``, ``val/identity_match``; ``rest_lightning.metrics.dlib_identity``),
with no weight file; when the ``faces`` extra is missing it is skipped with one log line. ``csim`` is
ArcFace CSIM (``weights.arcface``), aligned by the 5 points of dlib's 68 landmarks when the extra is
installed, else by the ArcFace template placed on the crop. Validation clips are rest-prep face crops,
so both take the nominal face box (the central ``identity_face_fraction`` of the frame) instead of running
a detector, and score ``identity_frames`` evenly spaced frames per clip plus the reference: dlib costs
about 0.1 s per face on one CPU core (0.5 s per clip at the default 4 frames), ArcFace R100 about 24 GFLOP
per face.

Results are logged under ``val/<key>``, where the key carries ``_uncalibrated`` when the network runs
on random weights (``allow_random_weights``), so such a number can never pass for a real FID.

SynthTalk (``SynthTalkValidation``, issue 12): on a synthetic corpus (clips whose json carries ground
truth ``gt``) the analytic lip-sync and identity metrics of ``rest_lightning.metrics.synthtalk`` need no
weights, so they are on by default (``stage.metrics.synthtalk``; the student's
``stage.validation.synthtalk``) and log ``val/synthtalk_sync_r``, ``val/synthtalk_sync_offset``,
``val/synthtalk_mouth_std`` and ``val/synthtalk_identity`` for the generated clips, and the same four
with ``_real`` for the validation clips themselves where the stage has them (the ceiling the generated
clips are read against). Clips of other corpora, padding and frames under 32 px are left out; with none
left on any rank nothing is logged. docs/synthtalk.md says how noisy the numbers are and why.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from rest_lightning import faces
from rest_lightning.data.batch import ClipBatch
from rest_lightning.data.schema import MediaSpec
from rest_lightning.distributed import is_distributed
from rest_lightning.metrics import (
    CSIM,
    FID,
    FVD,
    LipSync,
    MetricWeightsConfig,
    SynthTalkIdentity,
    SynthTalkLipSync,
)
from rest_lightning.metrics.dlib_identity import (
    DlibIdentity,
    DlibIdentityConfig,
    frame_indices,
    nominal_face_box,
    to_uint8_rgb,
)
from rest_lightning.metrics.face_align import align_faces, arcface_template
from rest_lightning.metrics.synthtalk import MIN_SIZE

log = logging.getLogger(__name__)

METRIC_NAMES = ("fid", "fvd", "sync", "csim", "identity")
ARCFACE_SIZE = 112  # ArcFace input side


@dataclass
class ValMetricsConfig:
    """``stage.metrics``: which metrics validation computes and where their weights are."""

    names: list[str] = field(default_factory=list)  # any of fid, fvd, sync, csim, identity; empty = none
    identity_frames: int = 4  # design choice: frames per clip scored by csim / identity (dlib ~0.1 s per face)
    identity_face_fraction: float = 0.667  # rest-prep margin 0.25: the face box is 1 / 1.5 of the crop side
    weights: MetricWeightsConfig = field(default_factory=MetricWeightsConfig)
    allow_random_weights: bool = False  # tests/demo only: every number is logged as *_uncalibrated
    synthtalk: bool = True  # SynthTalk lip-sync / identity; only clips of a synthetic corpus are scored

    def __post_init__(self) -> None:
        self.names = list(self.names)
        unknown = [n for n in self.names if n not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"stage.metrics.names has {unknown}; allowed: {', '.join(METRIC_NAMES)}")
        if self.identity_frames < 1 or not 0 < self.identity_face_fraction <= 1:
            raise ValueError(
                "stage.metrics.identity_frames must be >= 1 and identity_face_fraction in (0, 1], got "
                f"{self.identity_frames}, {self.identity_face_fraction}"
            )
        if isinstance(self.weights, dict):
            self.weights = MetricWeightsConfig(**self.weights)


def speaker_id(name: str) -> int:
    """A stable int64 id of a speaker name for ``SynthTalkLipSync`` (which pools per id): the same on
    every rank and in every run, unlike Python's salted ``hash``. 63 bits of SHA-1: collisions between
    a corpus's speakers are out of reach."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8", "surrogateescape")).digest()[:8], "big") >> 1


def synthtalk_rows(batch: ClipBatch, rows: Tensor | None = None) -> list[int]:
    """Indices of the rows of ``batch`` that SynthTalk scores: real clips (``batch.mask``) of a synthetic
    corpus (``batch.synthetic``: their json carries ``gt``), among ``rows`` (``(B,)`` bool; default all)."""
    if batch.synthetic is None or not batch.speakers:
        return []
    chosen = batch.mask.cpu() & batch.synthetic.cpu()
    if rows is not None:
        chosen &= rows.cpu()
    return torch.nonzero(chosen).flatten().tolist()


def _sum_over_ranks(values: list[int], device: torch.device) -> list[int]:
    """``values`` summed over ranks (a collective when distributed; NCCL moves CUDA tensors only)."""
    if not is_distributed():
        return values
    if dist.get_backend() == dist.Backend.NCCL:
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return total.tolist()


class SynthTalkValidation:
    """``SynthTalkLipSync`` + ``SynthTalkIdentity`` of generated clips, and of the real clips where given.

    Cheap (analytic, on the CPU): about 5 ms per 17-frame clip at 32 px (mouth + identity), twice that
    with the real clips.
    """

    def __init__(self, media: MediaSpec | None = None) -> None:
        self.fake_sync, self.fake_identity = SynthTalkLipSync(media), SynthTalkIdentity()
        self.real_sync, self.real_identity = SynthTalkLipSync(media), SynthTalkIdentity()
        self._clips = self._real_clips = 0
        self._warned_size = False

    def _metrics(self) -> tuple[SynthTalkLipSync, SynthTalkIdentity, SynthTalkLipSync, SynthTalkIdentity]:
        return self.fake_sync, self.fake_identity, self.real_sync, self.real_identity

    @torch.no_grad()
    def update(
        self, video: Tensor, audio: Tensor, ref: Tensor, speakers: list[str], real: Tensor | None = None
    ) -> None:
        """Score ``N`` clips of a synthetic corpus (the caller picks them: ``synthtalk_rows``).

        Args:
            video: generated clips ``(N, 3, T, H, W)`` in [-1, 1]; audio: ``(N, S)`` 16 kHz covering them;
            ref: reference images ``(N, 3, H, W)`` in [-1, 1]; speakers: ``N`` speaker names (lip-sync
            pools per speaker); real: the validation clips the generated ones stand for, or ``None``.
        """
        if video.shape[0] == 0:
            return
        if min(video.shape[-2:]) < MIN_SIZE:
            if not self._warned_size:
                log.warning("SynthTalk validation metrics skipped: %s px frames; the mouth measure needs >= %d",
                            tuple(video.shape[-2:]), MIN_SIZE)
                self._warned_size = True
            return
        device = video.device  # states live with the clips: torchmetrics all-gathers them there
        for metric in self._metrics():
            metric.to(device)
        ids = torch.tensor([speaker_id(s) for s in speakers], dtype=torch.int64, device=device)
        video, audio, ref = video.float().clamp(-1, 1), audio.to(device).float(), ref.to(device).float()
        self.fake_sync.update(video, audio, ids)
        self.fake_identity.update(video, ref)
        self._clips += video.shape[0]
        if real is not None:
            real = real.to(device).float().clamp(-1, 1)
            self.real_sync.update(real, audio, ids)
            self.real_identity.update(real, ref)
            self._real_clips += real.shape[0]

    def compute_and_reset(self, device: torch.device) -> dict[str, float]:
        """``{"val/synthtalk_*": value}``, empty if no rank scored a clip (collective: call on every rank)."""
        clips, real_clips = _sum_over_ranks([self._clips, self._real_clips], device)
        out: dict[str, float] = {}
        for metric in self._metrics():
            metric.to(device)  # also on a rank that scored nothing: NCCL gathers CUDA tensors only
        # Every rank joins a metric's sync whenever any rank scored with it (the states sync in compute).
        for metric, suffix, total in ((self.fake_sync, "", clips), (self.fake_identity, "", clips),
                                      (self.real_sync, "_real", real_clips), (self.real_identity, "_real", real_clips)):
            if total > 0:
                out |= {f"val/{r.key}{suffix}": float(r.value) for r in metric.results().values()}
            metric.reset()
        self._clips = self._real_clips = 0
        return out


class ValMetrics:
    """Builds the configured metrics (refusing missing weights at construction, i.e. at config time).

    ``bool(self)`` says whether a network metric (FID/FVD/Sync) is on: those need every validation clip
    generated. ``synthtalk`` scores whichever clips the stage generates anyway (``update_synthtalk``).
    """

    def __init__(self, config: ValMetricsConfig, media: MediaSpec | None = None) -> None:
        w, rand = config.weights, config.allow_random_weights
        self.metrics: dict[str, Any] = {}
        if "fid" in config.names:
            self.metrics["fid"] = FID(w.fid_inception, allow_random_weights=rand)
        if "fvd" in config.names:
            self.metrics["fvd"] = FVD(w.i3d, allow_random_weights=rand)
        if "sync" in config.names:
            self.metrics["sync"] = LipSync(w.syncnet, allow_random_weights=rand)
        if "csim" in config.names:
            self.metrics["csim"] = CSIM(w.arcface, allow_random_weights=rand)
        if "identity" in config.names:
            if faces.available():
                identity = DlibIdentityConfig(config.identity_face_fraction, config.identity_frames)
                self.metrics["identity"] = DlibIdentity(identity)
            else:
                log.info("stage.metrics.names has identity but the faces extra is missing: not logged (%s)",
                         faces.INSTALL_HINT)
        self.identity_frames, self.face_fraction = config.identity_frames, config.identity_face_fraction
        self.synthtalk = SynthTalkValidation(media) if config.synthtalk else None

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def update_synthtalk(
        self, fake: Tensor, batch: ClipBatch, rows: Tensor, audio: Tensor, real: Tensor | None = None
    ) -> None:
        """SynthTalk of the generated clips ``fake (N, 3, T, H, W)`` of the ``N`` rows of ``batch`` where
        ``rows`` (``(B,)`` bool) is True, in order; ``audio (B, S)``: the batch's waveforms; ``real``: the
        ``N`` validation clips or ``None``. Rows not of a synthetic corpus (or padding) are left out."""
        if self.synthtalk is None:
            return
        generated = torch.nonzero(rows.cpu()).flatten().tolist()  # the batch row of each clip of fake
        scored = set(synthtalk_rows(batch, rows))
        clips = [k for k, row in enumerate(generated) if row in scored]
        if not clips:
            return
        batch_rows = [generated[k] for k in clips]
        self.synthtalk.update(
            fake[clips], audio[batch_rows], batch.ref[batch_rows], [batch.speakers[i] for i in batch_rows],
            None if real is None else real[clips],
        )

    def _to(self, device: torch.device) -> None:
        for metric in self.metrics.values():
            metric.to(device)

    def aligned_faces(self, images: Tensor) -> Tensor:
        """Face crops ``(N, 3, H, W)`` in [-1, 1] -> ArcFace inputs ``(N, 3, 112, 112)``: 5 points from dlib's
        68 in the nominal box when the faces extra is installed, else the template on the crop."""
        n, _, h, w = images.shape
        box = nominal_face_box(h, w, self.face_fraction)
        if faces.available():
            pixels = to_uint8_rgb(images)
            points = torch.from_numpy(np.stack([faces.landmarks5(p, box) for p in pixels])).to(torch.float64)
        else:
            template = arcface_template(ARCFACE_SIZE) / ARCFACE_SIZE  # (5, 2) in [0, 1]
            origin = torch.tensor([box[0], box[1]], dtype=torch.float64)
            points = (origin + template * torch.tensor([box[2] - box[0], box[3] - box[1]]))[None].expand(n, 5, 2)
        return align_faces(images.float(), points, ARCFACE_SIZE)

    def _update_identity(self, fake: Tensor, reference: Tensor) -> None:
        if "identity" in self.metrics:
            self.metrics["identity"].update(fake.float().cpu(), reference.float().cpu())
        if "csim" in self.metrics:
            b, _, t, h, w = fake.shape
            keep = frame_indices(t, self.identity_frames)
            frames = fake[:, :, keep].transpose(1, 2).reshape(b * len(keep), 3, h, w).float()  # (B*K, 3, H, W)
            faces_k = self.aligned_faces(frames).reshape(b, len(keep), 3, ARCFACE_SIZE, ARCFACE_SIZE)
            self.metrics["csim"].update(faces_k.transpose(1, 2), self.aligned_faces(reference.float()))

    @torch.no_grad()
    def update(self, fake: Tensor, real: Tensor, audio: Tensor | None = None, ref: Tensor | None = None) -> None:
        """fake, real: videos ``(B, 3, T, H, W)`` in [-1, 1]; audio ``(B, S)`` 16 kHz for Sync-C/D; ref: the
        reference images ``(B, 3, H, W)`` for csim / identity (default: the real clips' first frames)."""
        if not self.metrics or fake.shape[0] == 0:
            return
        self._to(fake.device)
        if "fid" in self.metrics:
            frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731 - (B*T, 3, H, W)
            self.metrics["fid"].update(frames(real), real=True)
            self.metrics["fid"].update(frames(fake), real=False)
        if "fvd" in self.metrics:
            self.metrics["fvd"].update(real, real=True)
            self.metrics["fvd"].update(fake, real=False)
        if "sync" in self.metrics and audio is not None:
            self.metrics["sync"].update(fake, audio)
        self._update_identity(fake, real[:, :, 0] if ref is None else ref.to(fake.device))

    def compute_and_reset(self, device: torch.device | None = None) -> dict[str, float]:
        """``{"val/<key>": value}`` for every metric that saw data (collective: call on every rank);
        ``device``: where a distributed count travels (the stage's device)."""
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            if metric.update_called:
                for result in metric.results().values():
                    out[f"val/{result.key}"] = float(result.value)
            metric.reset()
        if self.synthtalk is not None:
            out |= self.synthtalk.compute_and_reset(device or torch.device("cpu"))
        return out
