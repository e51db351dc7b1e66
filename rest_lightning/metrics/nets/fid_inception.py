"""The "FID Inception": TF's inception-2015-12-05 graph as ported by pytorch-fid.

It is torchvision's Inception-v3 layout (1008 classes, no aux head) with four pooling patches that
make it agree with the TF graph (mseitzer/pytorch-fid ``src/pytorch_fid/inception.py``; metrics.md
§2.1). The attribute names are torchvision's, so the state-dict keys are those of
``torchvision.models.Inception3(num_classes=1008, aux_logits=False)`` and the published file
``pt_inception-2015-12-05-6726825d.pth`` loads strictly.

Blocks are subclassed from torchvision (as pytorch-fid does) so their parameters and names are the
reference's by construction; only the forwards that differ are rewritten.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception as tv_inception

from rest_lightning.metrics.nets.base import FeatureExtractor

FID_INCEPTION_CLASSES = 1008  # TF inception-2015-12-05 has 1008 logits (pytorch-fid fid_inception_v3)
FID_INCEPTION_POOL_FEATURES = 2048  # "pool3": global average pool after Mixed_7c (pytorch-fid block 3)
FID_INCEPTION_INPUT_SIZE = 299  # pytorch-fid resizes every image to 299x299 before the network


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TF average pooling ignores the zero padding when it averages (pytorch-fid "Patch" comments).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(tv_inception.InceptionA):
    """Mixed_5b/5c/5d with the TF pooling patch."""

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], dim=1)


class FIDInceptionC(tv_inception.InceptionC):
    """Mixed_6b..6e with the TF pooling patch."""

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], dim=1)


class FIDInceptionE(tv_inception.InceptionE):
    """Mixed_7b (TF average pool) and Mixed_7c (max pool, as in the TF graph), chosen by ``pool``."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__(in_channels)
        if pool not in ("tf_avg", "max"):
            raise ValueError(f"FIDInceptionE pool must be 'tf_avg' or 'max', got {pool!r}")
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], dim=1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], dim=1
        )
        if self.pool == "max":
            # The ported TF graph max-pools here, unlike the paper's Inception (pytorch-fid FIDInceptionE_2).
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], dim=1)


class FIDInceptionV3(FeatureExtractor):
    """FID Inception returning the 2048-d pool3 features.

    Forward: ``(B, 3, 299, 299)`` float in [-1, 1] (already resized; see ``FID``) -> ``(B, 2048)``.
    Any size >= 75 runs (the net is convolutional up to the global pool), but only 299 is the FID
    protocol. ``fc`` is kept only so that the published weight file loads strictly.
    """

    num_features = FID_INCEPTION_POOL_FEATURES

    def __init__(self) -> None:
        super().__init__()
        conv = tv_inception.BasicConv2d
        # Stem and reduction blocks are torchvision's, unchanged (same channel plan as Inception3).
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = tv_inception.InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = tv_inception.InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="tf_avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(FID_INCEPTION_POOL_FEATURES, FID_INCEPTION_CLASSES)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> pool3 features ``(B, 2048)``."""
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(images))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return torch.flatten(self.avgpool(x), start_dim=1)  # (B, 2048, 1, 1) -> (B, 2048)
