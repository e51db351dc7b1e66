"""Shared input handling for the metrics: shape checks, frame folding, 8-bit quantisation, resizing.

Project convention: images ``(B, 3, H, W)`` and videos ``(B, 3, T, H, W)``, RGB float in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

UINT8_LEVELS = 255  # 8-bit images: values 0..255


def check_images(images: Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected images (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected float images in [-1, 1], got dtype {images.dtype}")


def check_video(video: Tensor, name: str) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{name}: expected video (B, 3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise TypeError(f"{name}: expected a float video in [-1, 1], got dtype {video.dtype}")


def video_to_frames(video: Tensor) -> Tensor:
    """``(B, 3, T, H, W)`` -> ``(B*T, 3, H, W)``, frames of video 0 first."""
    check_video(video, "video_to_frames")
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def quantize_uint8(x: Tensor) -> Tensor:
    """Round [-1, 1] values to the 256 levels of an 8-bit image (what reference pipelines read back from
    PNG/JPEG/mp4 files), keeping the [-1, 1] float range. Values outside [-1, 1] are clipped."""
    levels = torch.round((x.clamp(-1, 1) + 1) / 2 * UINT8_LEVELS)
    return levels / UINT8_LEVELS * 2 - 1


def resize_bilinear(images: Tensor, size: int) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, size, size)`` by torch bilinear, ``align_corners=False``, no antialias
    (pytorch-fid's resize; torchmetrics' antialias default would differ, metrics.md §2.2)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def resize_shorter_side_center_crop(frames: Tensor, size: int) -> Tensor:
    """Scale the shorter side to ``size`` (bilinear, no antialias) and center-crop ``size x size``.

    ``(N, C, H, W)`` -> ``(N, C, size, size)``. The longer side becomes ``ceil(long * size / short)``,
    and the crop starts at ``(long' - size) // 2`` (JunyaoHu common_metrics_on_video_quality
    ``fvd/styleganv``); a square input is simply resized.
    """
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = (size, math.ceil(w * scale)) if h <= w else (math.ceil(h * scale), size)
    if (new_h, new_w) != (h, w):
        frames = F.interpolate(
            frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return frames[..., top : top + size, left : left + size]
