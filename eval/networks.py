"""The metric objects one evaluation uses, built from ``eval.*`` and the protocol.

``eval.networks=reference`` (default) builds the reference networks from ``eval.weights.*``
(``rest_lightning.metrics``; a missing file raises ``MissingWeightsError`` unless
``eval.allow_random_weights=true``). ``eval.networks=tiny`` swaps in small seeded random stand-ins,
so a CPU runs the whole suite in seconds (``make demo``, tests); it needs ``allow_random_weights`` and,
like every random-weight network, makes the numbers uncalibrated. LPIPS, PSNR and SSIM are the
reference implementations either way (LPIPS's AlexNet trunk is random without its weight file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rest_lightning.metrics import (
    CSIM,
    FID,
    FVD,
    LPIPS,
    PSNR,
    SSIM,
    CSIMConfig,
    FIDConfig,
    FVDConfig,
    LipSync,
    SyncConfig,
)
from rest_lightning.metrics.nets.base import FeatureExtractor
from rest_lightning.metrics.weights import build_random

NETWORK_CHOICES = ("reference", "tiny")
TINY_WIDTH = 16  # design choice: feature width of the tiny stand-ins (enough for a non-degenerate Frechet)
TINY_SYNC_POOL = 8  # the tiny SyncNet shrinks its 224x224 input 8x before its one conv (CPU cost)


class TinyImageFeatures(FeatureExtractor):
    """Stand-in for the FID Inception: ``(N, 3, H, W)`` -> ``(N, 16)``."""

    num_features = TINY_WIDTH

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, TINY_WIDTH // 2, kernel_size=4, stride=4)
        self.head = nn.Linear(TINY_WIDTH, TINY_WIDTH)

    def forward(self, images: Tensor) -> Tensor:
        h = torch.relu(self.conv(images))
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


class TinyVideoFeatures(FeatureExtractor):
    """Stand-in for I3D: ``(B, 3, T, H, W)`` -> ``(B, 16)``."""

    num_features = TINY_WIDTH

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, TINY_WIDTH // 2, kernel_size=(3, 4, 4), stride=(2, 4, 4))
        self.head = nn.Linear(TINY_WIDTH, TINY_WIDTH)

    def forward(self, video: Tensor) -> Tensor:
        h = torch.relu(self.conv(video))
        return self.head(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1))


class TinySyncNet(nn.Module):
    """Stand-in for SyncNet with its two embedding methods (``LipSync`` calls only these).

    * ``audio_embedding``: MFCC windows ``(B, 1, 13, 20)`` -> ``(B, 16)``;
    * ``video_embedding``: BGR frames ``(B, 3, 5, 224, 224)`` in [0, 255] -> ``(B, 16)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Conv2d(1, 8, kernel_size=3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(TINY_WIDTH))
        self.video = nn.Sequential(nn.Conv3d(3, 8, kernel_size=(5, 4, 4), stride=(1, 4, 4)), nn.ReLU(), nn.Flatten(), nn.LazyLinear(TINY_WIDTH))
        # Materialise the lazy layers now (their shapes are fixed by SyncNet's input contract).
        with torch.no_grad():
            self.audio(torch.zeros(1, 1, 13, 20))
            self.video(torch.zeros(1, 3, 5, 224 // TINY_SYNC_POOL, 224 // TINY_SYNC_POOL))

    def audio_embedding(self, mfcc: Tensor) -> Tensor:
        return self.audio(mfcc / 100)  # int16-scale MFCCs are O(10-100)

    def video_embedding(self, frames: Tensor) -> Tensor:
        b, c, t, h, w = frames.shape
        small = nn.functional.avg_pool2d(frames.transpose(1, 2).reshape(b * t, c, h, w), TINY_SYNC_POOL)
        small = small.reshape(b, t, c, *small.shape[-2:]).transpose(1, 2)  # (B, 3, 5, 28, 28)
        return self.video(small / 255)


class TinyFaceEmbedder(nn.Module):
    """Stand-in for ArcFace: aligned faces ``(N, 3, 112, 112)`` -> ``(N, 16)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, TINY_WIDTH // 2, kernel_size=8, stride=8)
        self.head = nn.Linear(TINY_WIDTH // 2 * 14 * 14, TINY_WIDTH)

    def forward(self, faces: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(faces)).flatten(1))


@dataclass
class MetricSuite:
    """Every metric of one evaluation (each a ``rest_lightning.metrics`` object)."""

    fid: FID
    fvd: FVD
    lipsync: LipSync
    csim: CSIM
    lpips: LPIPS
    psnr: PSNR
    ssim: SSIM
    networks: str
    weights: dict[str, str | None]

    def uncalibrated(self) -> dict[str, bool]:
        """Per metric name: True when its number comes from a random-weight network."""
        return {
            "fid": self.fid.uncalibrated,
            "fvd": self.fvd.uncalibrated,
            "sync_c": self.lipsync.uncalibrated,
            "sync_d": self.lipsync.uncalibrated,
            "csim": self.csim.uncalibrated,
            "lpips": self.lpips.uncalibrated,
            "psnr": False,
            "ssim": False,
            "fps": False,
        }

    def fingerprint(self) -> dict[str, Any]:
        """What the per-video caches must match to be reused (networks and weight files)."""
        files = {}
        for key, path in self.weights.items():
            if path is not None and Path(path).is_file():
                stat = Path(path).stat()
                files[key] = f"{Path(path).resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
            else:
                files[key] = None
        return {"networks": self.networks, "weights": files, "uncalibrated": self.uncalibrated()}

    def to(self, device: torch.device) -> MetricSuite:
        for metric in (self.fid, self.fvd, self.lipsync, self.csim, self.lpips, self.psnr, self.ssim):
            metric.to(device)
        return self


def build_suite(networks: str, weights: dict[str, str | None], allow_random_weights: bool, protocol) -> MetricSuite:
    """The metrics for ``protocol`` (``eval.protocol.EvalProtocol``), with reference or tiny networks."""
    if networks not in NETWORK_CHOICES:
        raise ValueError(f"eval.networks={networks!r} is not one of {', '.join(NETWORK_CHOICES)}")
    fid_cfg = FIDConfig(image_size=protocol.fid.image_size, ddof=protocol.fid.ddof)
    fvd_cfg = FVDConfig(
        clip_frames=protocol.fvd.clip_frames, clip_start=protocol.fvd.clip_start,
        frame_size=protocol.fvd.frame_size, ddof=protocol.fvd.ddof, uint8_rounding=protocol.fvd.uint8_rounding,
    )
    sync_cfg = SyncConfig(fps=protocol.fps, vshift=protocol.sync.vshift)
    csim_cfg = CSIMConfig(clip_negative=protocol.csim.clip_negative)
    allow = allow_random_weights
    if networks == "tiny":
        if not allow_random_weights:
            raise ValueError(
                "eval.networks=tiny runs random-weight stand-in networks; set eval.allow_random_weights=true to "
                "accept uncalibrated numbers (or eval.networks=reference with eval.weights.*)"
            )
        fid = FID(network=build_random(TinyImageFeatures), config=fid_cfg)
        fvd = FVD(network=build_random(TinyVideoFeatures), config=fvd_cfg)
        lipsync = LipSync(network=build_random(TinySyncNet), config=sync_cfg)
        csim = CSIM(network=build_random(TinyFaceEmbedder), config=csim_cfg)
    else:
        digests = protocol.weight_sha256  # files identified by sha256 (rest_lightning.metrics.weights)
        fid = FID(weights.get("fid_inception"), allow, fid_cfg, expected_sha256=digests.get("fid_inception", ()))
        fvd = FVD(weights.get("i3d"), allow, fvd_cfg, expected_sha256=digests.get("i3d", ()))
        lipsync = LipSync(weights.get("syncnet"), allow, sync_cfg)
        csim = CSIM(weights.get("arcface"), allow, csim_cfg)
    lpips = LPIPS(weights.get("lpips_alex"), allow)
    ssim = SSIM(variant=protocol.ssim.variant)
    return MetricSuite(fid, fvd, lipsync, csim, lpips, PSNR(), ssim, networks, dict(weights))
