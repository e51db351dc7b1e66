"""ArcFace "improved ResNet" (insightface ``recognition/arcface_torch/backbones/iresnet.py``) for CSIM.

Module names follow the reference so that arcface_torch ``backbone.pth`` files (e.g.
ms1mv3_arcface_r100_fp16, glint360k_cosface_r100) load strictly. The input must be 112x112: the
head flattens a 512x7x7 map into its linear layer.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

ARCFACE_EMBED_DIM = 512  # arcface_torch num_features default: 512-d identity embedding
ARCFACE_INPUT_SIZE = 112  # aligned face crop size (insightface arcface_dst template is for 112x112)
_FINAL_MAP = 7  # 112 / 2^4 after the four stride-2 stages: IResNet.fc_scale = 7 * 7
_BN_EPS = 1e-5  # arcface_torch BatchNorm eps
_STAGE_WIDTHS = (64, 128, 256, 512)  # channels of layer1..layer4 (arcface_torch IResNet)

IResNetArch = Literal["iresnet18", "iresnet34", "iresnet50", "iresnet100"]
# Blocks per stage (arcface_torch iresnet18/34/50/100 factories; metrics.md §5.1 for r50/r100).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=_BN_EPS),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """ArcFace backbone. Forward: aligned faces ``(B, 3, 112, 112)`` RGB in [-1, 1] -> ``(B, 512)``
    (unnormalised; CSIM takes the cosine)."""

    def __init__(self, arch: IResNetArch = "iresnet100") -> None:
        super().__init__()
        if arch not in IRESNET_LAYERS:
            raise ValueError(f"unknown ArcFace arch {arch!r}; choose one of {sorted(IRESNET_LAYERS)}")
        self.arch = arch
        stem = _STAGE_WIDTHS[0]
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=_BN_EPS)
        self.prelu = nn.PReLU(stem)
        in_channels = stem
        for index, (width, blocks) in enumerate(zip(_STAGE_WIDTHS, IRESNET_LAYERS[arch], strict=True)):
            stage = [IBasicBlock(in_channels, width, stride=2)]
            stage += [IBasicBlock(width, width, stride=1) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            in_channels = width
        self.bn2 = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=0.0)  # arcface_torch default dropout=0; kept for the module order
        self.fc = nn.Linear(in_channels * _FINAL_MAP * _FINAL_MAP, ARCFACE_EMBED_DIM)
        self.features = nn.BatchNorm1d(ARCFACE_EMBED_DIM, eps=_BN_EPS)

    def forward(self, faces: Tensor) -> Tensor:
        """``(B, 3, 112, 112)`` RGB in [-1, 1] -> ``(B, 512)``."""
        if tuple(faces.shape[-2:]) != (ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE):
            raise ValueError(
                f"ArcFace needs {ARCFACE_INPUT_SIZE}x{ARCFACE_INPUT_SIZE} aligned faces, got "
                f"{faces.shape[-2]}x{faces.shape[-1]} (align with rest_lightning.metrics.face_align)"
            )
        x = self.prelu(self.bn1(self.conv1(faces)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x).flatten(start_dim=1))  # (B, 512, 7, 7) -> (B, 25088)
        return self.features(self.fc(x))
