"""3-D PatchGAN discriminator for the VAE's adversarial loss (DESIGN §4.1).

The pix2pix / taming-transformers `NLayerDiscriminator` lifted to video as Open-Sora's
`N_Layer_discriminator_3D`: strided convs down to a grid of patch logits, each judging whether its
space-time patch is real. Trained with hinge losses (`vae_losses`) and switched on after `disc_start`
steps by the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn as nn


class DiscriminatorNorm(str, Enum):
    """Normalisation after each inner conv."""

    GROUP = "group"
    NONE = "none"


@dataclass
class DiscriminatorConfig:
    """Architecture of `PatchDiscriminator3D`.

    Attributes:
        video_channels: input channels (RGB).
        base_channels: width of the first conv; doubles per layer up to `max_channel_multiplier` x.
        num_layers: strided conv layers (each halves H and W, and T unless temporal_kernel is 1).
        max_channel_multiplier: cap on the width multiplier.
        spatial_kernel / temporal_kernel: conv kernel (T kernel, then H = W kernel).
        norm / norm_groups: GroupNorm (or none) after inner convs.
        leaky_slope: LeakyReLU negative slope.
    """

    video_channels: int = 3  # RGB
    base_channels: int = 64  # pix2pix / taming ndf
    num_layers: int = 3  # pix2pix / taming n_layers
    max_channel_multiplier: int = 8  # pix2pix: min(2**n, 8)
    spatial_kernel: int = 4  # pix2pix kw=4
    # Design choice: 3 in time with padding 1 (pix2pix's 4 with padding 1 would shrink a 17-frame clip
    # to nothing after the stride-1 layers), so any clip length gives at least one logit.
    temporal_kernel: int = 3
    # Design choice: GroupNorm instead of taming's BatchNorm: no running statistics, so DDP/FSDP ranks
    # need no SyncBatchNorm and real/fake batches do not share statistics.
    norm: DiscriminatorNorm = DiscriminatorNorm.GROUP
    norm_groups: int = 32  # GroupNorm default groups (Wu & He 2018)
    leaky_slope: float = 0.2  # pix2pix / taming

    def __post_init__(self) -> None:
        for name in (
            "video_channels",
            "base_channels",
            "num_layers",
            "max_channel_multiplier",
            "spatial_kernel",
            "temporal_kernel",
            "norm_groups",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DiscriminatorConfig {name} must be an int >= 1, got {value!r}")
        if self.temporal_kernel % 2 != 1:
            raise ValueError(f"DiscriminatorConfig temporal_kernel must be odd, got {self.temporal_kernel}")
        try:
            self.norm = DiscriminatorNorm(self.norm)
        except ValueError:
            raise ValueError(f"DiscriminatorConfig norm={self.norm!r}: use 'group' or 'none'") from None
        if self.norm is DiscriminatorNorm.GROUP:
            for width in self.channel_widths()[1:]:
                if width % self.norm_groups:
                    raise ValueError(
                        f"DiscriminatorConfig: width {width} is not divisible by norm_groups={self.norm_groups}; "
                        "change base_channels or norm_groups"
                    )

    def channel_widths(self) -> list[int]:
        """Output width of every conv before the final 1-channel one."""
        return [
            self.base_channels * min(2**layer, self.max_channel_multiplier)
            for layer in range(self.num_layers + 1)
        ]


class PatchDiscriminator3D(nn.Module):
    """(B, 3, T, H, W) video in [-1, 1] -> (B, 1, T', H', W') real/fake logits, one per space-time patch."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.channel_widths()
        kernel = (config.temporal_kernel, config.spatial_kernel, config.spatial_kernel)
        padding = (config.temporal_kernel // 2, 1, 1)  # pix2pix padding 1 in space
        layers: list[nn.Module] = []
        in_width = config.video_channels
        for index, width in enumerate(widths):
            # pix2pix: all but the last inner conv have stride 2; the first has no norm.
            stride = 2 if index < config.num_layers else 1
            layers.append(nn.Conv3d(in_width, width, kernel, stride=stride, padding=padding, bias=index == 0))
            if index > 0 and config.norm is DiscriminatorNorm.GROUP:
                layers.append(nn.GroupNorm(config.norm_groups, width))
            layers.append(nn.LeakyReLU(config.leaky_slope))
            in_width = width
        layers.append(nn.Conv3d(in_width, 1, kernel, stride=1, padding=padding))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """pix2pix / taming init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
        init_std = 0.02  # pix2pix / taming weights_init
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.normal_(module.weight, 0.0, init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, init_std)
                nn.init.zeros_(module.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, 1, T', H', W') logits; needs H, W >= 2**num_layers + 2 or so."""
        if video.ndim != 5 or video.shape[1] != self.config.video_channels:
            raise ValueError(
                f"discriminator input must be (B, {self.config.video_channels}, T, H, W), got {tuple(video.shape)}"
            )
        return self.layers(video)
