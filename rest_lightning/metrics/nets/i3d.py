"""Inflated Inception-v1 (I3D) for FVD: the piergiaj/pytorch-i3d layout, and the StyleGAN-V TorchScript.

``InceptionI3d`` follows ``piergiaj/pytorch-i3d:pytorch_i3d.py`` module for module, so its state-dict
keys (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``, ...)
are those of ``rgb_imagenet.pt`` and VideoGPT's ``i3d_pretrained_400.pt``. TF "SAME" padding is
computed from the input shape in every unit, as DeepMind's graph does (metrics.md §3.2).

FVD uses the 400 Kinetics logits before softmax, averaged over time; with 16 frames at 224x224 there
is exactly one logits time step (T' = ceil(ceil(ceil(16/2)/2)/2) = 2, minus the 2-frame head pool).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rest_lightning.metrics.nets.base import FeatureExtractor

I3D_KINETICS_CLASSES = 400  # Kinetics-400 logits: the FVD feature (google-research frechet_video_distance)
I3D_INPUT_SIZE = 224  # the head's 7x7 pool needs 224 input: 224 -> 112 -> 56 -> 28 -> 14 -> 7
I3D_BN_EPS = 0.001  # piergiaj Unit3D BatchNorm3d(eps=0.001), TF's value
I3D_BN_MOMENTUM = 0.01  # piergiaj Unit3D BatchNorm3d(momentum=0.01)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) for one dimension: the output has ceil(size / stride) steps."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    _, _, t, h, w = x.shape
    (t0, t1), (h0, h1), (w0, w1) = (
        _same_padding(s, k, st) for s, k, st in zip((t, h, w), kernel, stride, strict=True)
    )
    return F.pad(x, (w0, w1, h0, h1, t0, t1))


class MaxPool3dSame(nn.MaxPool3d):
    """Max pooling with TF "SAME" zero padding (piergiaj ``MaxPool3dSamePadding``; the zero pad, not
    -inf, is the reference's choice and only matters at borders after a ReLU, where inputs are >= 0)."""

    def __init__(self, kernel_size: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__(kernel_size=kernel_size, stride=stride, padding=0)
        self._kernel3 = kernel_size
        self._stride3 = stride

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(_pad_same(x, self._kernel3, self._stride3))


class Unit3D(nn.Module):
    """Conv3d ("SAME" padded) + optional BatchNorm3d + optional ReLU; keys ``conv3d.*`` and ``bn.*``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.relu = relu
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, kernel_size=kernel, stride=stride, padding=0, bias=bias
        )
        self.bn = (
            nn.BatchNorm3d(out_channels, eps=I3D_BN_EPS, momentum=I3D_BN_MOMENTUM) if batch_norm else None
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four-branch inception block; ``channels`` = (b0, b1a, b1b, b2a, b2b, b3b) output widths."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.b0 = Unit3D(in_channels, c0)
        self.b1a = Unit3D(in_channels, c1a)
        self.b1b = Unit3D(c1a, c1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, c2a)
        self.b2b = Unit3D(c2a, c2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(1, 1, 1))
        self.b3b = Unit3D(in_channels, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, input channels, branch widths) of the inception blocks, in order (DeepMind kinetics-i3d i3d.py).
_MIXED_3 = (("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)))
_MIXED_4 = (
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
)
_MIXED_5 = (
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
_TEMPORAL_STRIDE_STEPS = 3  # layers with temporal stride 2: Conv3d_1a_7x7, MaxPool3d_4a_3x3, MaxPool3d_5a_2x2
_HEAD_POOL = (2, 7, 7)  # piergiaj/DeepMind AvgPool3d([2,7,7], stride 1); DisCo's [1,7,7] is a different head


class InceptionI3d(FeatureExtractor):
    """I3D returning time-averaged 400-d logits.

    Forward: ``(B, 3, T, 224, 224)`` float in [-1, 1], T >= 9 (the 2-frame head pool needs T' >= 2)
    -> ``(B, 400)``. :meth:`logits` gives the per-time-step logits ``(B, 400, T'')``.
    """

    num_features = I3D_KINETICS_CLASSES

    def __init__(self, num_classes: int = I3D_KINETICS_CLASSES) -> None:
        super().__init__()
        self.num_features = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2))
        for name, in_channels, channels in _MIXED_3:
            self.add_module(name, InceptionModule(in_channels, channels))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(2, 2, 2))
        for name, in_channels, channels in _MIXED_4:
            self.add_module(name, InceptionModule(in_channels, channels))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        for name, in_channels, channels in _MIXED_5:
            self.add_module(name, InceptionModule(in_channels, channels))
        self.avg_pool = nn.AvgPool3d(kernel_size=_HEAD_POOL, stride=(1, 1, 1))
        head_in = self.Mixed_5c.out_channels
        self.logits = Unit3D(head_in, num_classes, batch_norm=False, relu=False, bias=True)
        self._stages: tuple[str, ...] = (
            "Conv3d_1a_7x7",
            "MaxPool3d_2a_3x3",
            "Conv3d_2b_1x1",
            "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3",
            *(name for name, _, _ in _MIXED_3),
            "MaxPool3d_4a_3x3",
            *(name for name, _, _ in _MIXED_4),
            "MaxPool3d_5a_2x2",
            *(name for name, _, _ in _MIXED_5),
        )

    @staticmethod
    def min_frames() -> int:
        """Smallest T the head accepts: T' = ceil(T / 8) (three stride-2 steps) must reach the head's 2."""
        temporal_stride = 2**_TEMPORAL_STRIDE_STEPS  # Conv3d_1a, MaxPool3d_4a, MaxPool3d_5a stride 2 in time
        return temporal_stride * (_HEAD_POOL[0] - 1) + 1

    def logits_over_time(self, video: Tensor) -> Tensor:
        """``(B, 3, T, 224, 224)`` in [-1, 1] -> pre-softmax logits ``(B, 400, T'')``."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"InceptionI3d expects (B, 3, T, H, W) video, got {tuple(video.shape)}")
        if tuple(video.shape[-2:]) != (I3D_INPUT_SIZE, I3D_INPUT_SIZE):
            raise ValueError(
                f"InceptionI3d needs {I3D_INPUT_SIZE}x{I3D_INPUT_SIZE} frames (its 7x7 head pool), got "
                f"{video.shape[-2]}x{video.shape[-1]}; resize first (FVD does)"
            )
        if video.shape[2] < self.min_frames():
            raise ValueError(
                f"InceptionI3d needs at least {self.min_frames()} frames (its [2,7,7] head pool), got T={video.shape[2]}"
            )
        x = video
        for name in self._stages:
            x = self._modules[name](x)
        x = self.logits(self.avg_pool(x))  # (B, 400, T'', 1, 1)
        return x.flatten(start_dim=2)  # (B, 400, T'')

    def forward(self, video: Tensor) -> Tensor:
        """``(B, 3, T, 224, 224)`` in [-1, 1] -> logits averaged over time ``(B, 400)``."""
        return self.logits_over_time(video).mean(dim=2)


class TorchScriptI3D(FeatureExtractor):
    """StyleGAN-V's ``i3d_torchscript.pt`` (a TorchScript port of the TF-Hub I3D) behind the same call.

    The script's signature is ``forward(x, rescale=False, resize=False, return_features=False)``;
    ``rescale`` would map [0, 255] to [-1, 1] and ``resize`` would resize to 224, and this wrapper
    does both itself beforehand (in ``FVD``), so it passes both False and asks for the 400-d features.
    """

    num_features = I3D_KINETICS_CLASSES

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.detector = scripted

    def forward(self, video: Tensor) -> Tensor:
        """``(B, 3, T, 224, 224)`` in [-1, 1] -> ``(B, 400)``."""
        return self.detector(video, rescale=False, resize=False, return_features=True)


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder) rather than a
    ``torch.save`` file; both are zips, only TorchScript stores compiled code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def i3d_temporal_steps(frames: int) -> int:
    """T' after the three stride-2 temporal steps: ceil(ceil(ceil(T/2)/2)/2) (metrics.md §3.2)."""
    steps = frames
    for _ in range(_TEMPORAL_STRIDE_STEPS):
        steps = math.ceil(steps / 2)
    return steps
