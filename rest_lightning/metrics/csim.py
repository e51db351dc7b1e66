"""CSIM: identity similarity, the ArcFace cosine between each generated frame and the reference face.

Per video, the mean over its frames of cos(ArcFace(ref), ArcFace(frame)); over a set, the mean over
videos (metrics.md §5.2). Faces must be aligned 112x112 crops (:func:`~rest_lightning.metrics.face_align.align_faces`).
Which frames are scored and how missed detections count are eval-protocol choices, made by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from rest_lightning.metrics.nets.base import network_dtype
from rest_lightning.metrics.nets.iresnet import IResNet, IResNetArch
from rest_lightning.metrics.preprocess import check_images, check_video
from rest_lightning.metrics.result import MetricResult, keep_network_in_eval, make_results
from rest_lightning.metrics.weights import ARCFACE_FILE, load_network, metric_network


@dataclass
class CSIMConfig:
    arch: IResNetArch = "iresnet100"  # design choice: arcface_torch r100 (ms1mv3_arcface_r100_fp16 backbone)
    clip_negative: bool = False  # ConsisID clips each frame's cosine at 0; the plain cosine is the default
    batch_size: int = 64  # faces per network forward


class CSIM(Metric):
    """Identity cosine similarity (higher is better).

    ``update(video, reference)``: aligned faces, video ``(B, 3, T, 112, 112)`` and reference
    ``(B, 3, 112, 112)``, RGB in [-1, 1] (ArcFace's own normalisation). ``compute()`` -> float64 scalar.

    Args:
        weights_path: ``eval.weights.arcface`` (an arcface_torch ``backbone.pth`` of ``config.arch``).
        allow_random_weights: ``eval.allow_random_weights``.
        network: a custom embedding network ``(N, 3, 112, 112) -> (N, D)`` (always uncalibrated).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        weights_path: str | Path | None = None,
        allow_random_weights: bool = False,
        config: CSIMConfig | None = None,
        network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config or CSIMConfig()
        arch = self.config.arch
        loaded = metric_network(
            network, lambda: load_network(ARCFACE_FILE, lambda: IResNet(arch), weights_path, allow_random_weights, "CSIM")
        )
        module, calibrated = loaded.module, loaded.calibrated
        self.network = module
        self.uncalibrated = not calibrated
        self.add_state("similarity_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def embed(self, faces: Tensor) -> Tensor:
        """``(N, 3, 112, 112)`` in [-1, 1] -> ``(N, D)`` embeddings."""
        dtype = network_dtype(self.network)
        with torch.no_grad():
            return torch.cat([self.network(batch.to(dtype)) for batch in faces.split(self.config.batch_size)])

    def frame_similarities(self, video: Tensor, reference: Tensor) -> Tensor:
        """Cosine of every frame to its video's reference: ``(B, T)`` float64."""
        check_video(video, "CSIM.update video")
        check_images(reference, "CSIM.update reference")
        b, _, t, h, w = video.shape
        if reference.shape[0] != b or tuple(reference.shape[-2:]) != (h, w):
            raise ValueError(
                f"CSIM: reference must be (B={b}, 3, {h}, {w}) to match the video, got {tuple(reference.shape)}"
            )
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)  # (B*T, 3, H, W)
        frame_embeddings = self.embed(frames).reshape(b, t, -1).to(torch.float64)
        reference_embeddings = self.embed(reference).to(torch.float64)[:, None, :]  # (B, 1, D)
        cosine = F.cosine_similarity(frame_embeddings, reference_embeddings, dim=-1)
        return cosine.clamp(min=0) if self.config.clip_negative else cosine

    def update(self, video: Tensor, reference: Tensor) -> None:
        per_video = self.frame_similarities(video, reference).mean(dim=1)
        self.similarity_sum += per_video.sum()
        self.num_videos += per_video.numel()

    def compute(self) -> Tensor:
        if float(self.num_videos) < 1:
            raise ValueError("CSIM.compute: no videos were scored; call update first")
        return self.similarity_sum / self.num_videos

    def train(self, mode: bool = True) -> CSIM:
        super().train(mode)
        keep_network_in_eval(self.network)
        return self

    def results(self) -> dict[str, MetricResult]:
        return make_results({"csim": self.compute()}, {"csim": True}, self.uncalibrated)
