"""What the Fréchet metrics need from a feature network, and the helpers every metric network shares."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureExtractor(nn.Module):
    """A frozen network mapping a batch to ``(N, num_features)`` features.

    FID and FVD accept any subclass in place of their reference network (tests use tiny ones); a
    metric built on anything but the reference network loaded from its weight file is labelled
    uncalibrated.
    """

    num_features: int

    def forward(self, inputs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with no gradients (metric networks never train: BatchNorm must use
    its stored statistics, and their parameters must stay out of any optimizer)."""
    module.eval()
    module.requires_grad_(False)
    return module


def network_dtype(module: nn.Module) -> torch.dtype:
    """Dtype of the network's first parameter (float32 for a parameter-free module); inputs are cast
    to it so a float64 metric state never reaches a float32 network."""
    for parameter in module.parameters():
        return parameter.dtype
    return torch.float32
