"""FVD: Fréchet distance between I3D Kinetics-400 logits of real and generated 16-frame clips.

Protocol (StyleGAN-V ``fvd2048_16f``, metrics.md §3): 16 consecutive frames per video at 8-bit
levels, each frame shorter-side resized to 224 and center-cropped, [-1, 1] input, the 400-d pre-softmax
logits averaged over time, biased (ddof=0) covariance. The clip start, n, resize and 8-bit rounding are
recorded in the eval protocol because every project computes FVD a little differently.

8-bit rounding (``FVDConfig.uint8_rounding``, protocol ``fvd.uint8_rounding``):

* ``input`` (default): the frames are rounded to 8-bit levels *before* the resize. StyleGAN-V feeds
  the detector uint8 videos (generated ones are converted to uint8 first) and resizes them in float.
  Frames decoded from video files are 8-bit already, so this changes only float (in-training) videos.
* ``after_resize``: rounded after the resize too, as the ``*_v1`` protocols did; no reference does
  this, and it moves the I3D logits by ~1e-3.
* ``none``: no rounding (JunyaoHu's float path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

from rest_lightning.metrics.frechet import DDOF_BIASED, FrechetMetric
from rest_lightning.metrics.nets.base import FeatureExtractor, freeze, network_dtype
from rest_lightning.metrics.nets.i3d import (
    I3D_INPUT_SIZE,
    InceptionI3d,
    TorchScriptI3D,
    is_torchscript_archive,
)
from rest_lightning.metrics.preprocess import check_video, quantize_uint8, resize_shorter_side_center_crop
from rest_lightning.metrics.result import MetricResult, keep_network_in_eval, make_results
from rest_lightning.metrics.weights import (
    I3D_FILE,
    LoadedNetwork,
    load_network,
    metric_network,
    resolve_weights_path,
    weights_calibrated_by_digest,
)

FVD_CLIP_FRAMES = 16  # StyleGAN-V fvd2048_16f: clips of 16 consecutive frames (one I3D logits step)
UInt8Rounding = Literal["input", "after_resize", "none"]
UINT8_ROUNDINGS: tuple[str, ...] = get_args(UInt8Rounding)


@dataclass
class FVDConfig:
    clip_frames: int = FVD_CLIP_FRAMES
    clip_start: int = 0  # design choice: the first 16 frames of every video (record it in the protocol)
    frame_size: int = I3D_INPUT_SIZE  # I3D input size (smaller only with a custom test network)
    uint8_rounding: UInt8Rounding = "input"  # StyleGAN-V feeds uint8 videos and resizes in float (module doc)
    ddof: int = DDOF_BIASED  # StyleGAN-V FeatureStats.get_mean_cov (metrics.md §1.1)
    batch_size: int = 8  # clips per network forward (memory bound: 16x224x224 each)
    reset_real_features: bool = True

    def __post_init__(self) -> None:
        if self.uint8_rounding not in UINT8_ROUNDINGS:
            raise ValueError(
                f"FVDConfig.uint8_rounding={self.uint8_rounding!r} is not one of {', '.join(UINT8_ROUNDINGS)} "
                "(protocol fvd.uint8_rounding)"
            )
        if self.clip_frames < 1 or self.clip_start < 0 or self.frame_size < 1 or self.batch_size < 1:
            raise ValueError(
                "FVDConfig: clip_frames, frame_size, batch_size must be >= 1 and clip_start >= 0, got "
                f"{self.clip_frames}, {self.frame_size}, {self.batch_size}, {self.clip_start}"
            )


def load_i3d(
    weights_path: str | Path | None, allow_random_weights: bool, expected_sha256: Sequence[str] = ()
) -> LoadedNetwork:
    """The FVD network: StyleGAN-V's TorchScript file, a piergiaj-layout state dict, or (only with
    ``allow_random_weights`` and no path) a seeded random :class:`InceptionI3d`.

    Both file kinds load, but they are different networks: ``expected_sha256`` (the protocol's
    ``weight_sha256.i3d``) says which file makes the numbers calibrated (``weights.py`` module doc).
    """
    if weights_path is not None:
        path = resolve_weights_path(I3D_FILE, weights_path, "FVD")
        if is_torchscript_archive(path):
            calibrated = weights_calibrated_by_digest(I3D_FILE, path, expected_sha256, allow_random_weights, "FVD")
            # The reference file is TorchScript (no state dict exists for it); it runs no Python code.
            return LoadedNetwork(
                freeze(TorchScriptI3D(torch.jit.load(str(path), map_location="cpu"))), calibrated=calibrated
            )
    return load_network(I3D_FILE, InceptionI3d, weights_path, allow_random_weights, "FVD", expected_sha256)


class FVD(FrechetMetric):
    """Fréchet Video Distance (lower is better).

    ``update(video, real)``: video ``(B, 3, T, H, W)`` float in [-1, 1] with
    ``T >= clip_start + clip_frames``; one clip per video. ``compute()``: float64 scalar tensor.

    Args mirror :class:`~rest_lightning.metrics.fid.FID` (``weights_path`` = ``eval.weights.i3d``,
    ``expected_sha256`` = the protocol's ``weight_sha256.i3d``).
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        allow_random_weights: bool = False,
        config: FVDConfig | None = None,
        network: FeatureExtractor | None = None,
        expected_sha256: Sequence[str] = (),
    ) -> None:
        config = config or FVDConfig()
        if network is not None and not isinstance(network, FeatureExtractor):
            raise TypeError(f"FVD network must subclass FeatureExtractor, got {type(network).__name__}")
        loaded = metric_network(network, lambda: load_i3d(weights_path, allow_random_weights, expected_sha256))
        module, calibrated = loaded.module, loaded.calibrated
        super().__init__(
            module.num_features, ddof=config.ddof, reset_real_features=config.reset_real_features
        )
        self.config = config
        self.network = module
        self.uncalibrated = not calibrated

    def clips(self, video: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` -> the protocol clips ``(B, 3, clip_frames, S, S)``, S = frame_size, in
        [-1, 1], rounded to 8-bit levels where ``uint8_rounding`` says."""
        check_video(video, "FVD.update")
        start, frames = self.config.clip_start, self.config.clip_frames
        if video.shape[2] < start + frames:
            raise ValueError(
                f"FVD needs videos of at least clip_start + clip_frames = {start + frames} frames, got "
                f"T={video.shape[2]}; generate longer clips or lower eval FVD clip_frames/clip_start"
            )
        clip = video[:, :, start : start + frames]
        if self.config.uint8_rounding == "input":
            clip = quantize_uint8(clip)
        b, c, t, h, w = clip.shape
        flat = clip.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B*T, 3, H, W)
        flat = resize_shorter_side_center_crop(flat, self.config.frame_size)
        if self.config.uint8_rounding == "after_resize":
            flat = quantize_uint8(flat)
        size = self.config.frame_size
        return flat.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4)  # (B, 3, T, S, S)

    def extract_features(self, inputs: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, 400)`` time-averaged logits."""
        dtype = network_dtype(self.network)
        outputs = []
        with torch.no_grad():
            for batch in inputs.split(self.config.batch_size):
                clip = self.clips(batch)
                outputs.append(self.network(clip.to(dtype)))
        return torch.cat(outputs)

    def train(self, mode: bool = True) -> FVD:
        super().train(mode)
        keep_network_in_eval(self.network)
        return self

    def results(self) -> dict[str, MetricResult]:
        return make_results({"fvd": self.compute()}, {"fvd": False}, self.uncalibrated)
