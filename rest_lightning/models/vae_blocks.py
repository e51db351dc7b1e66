"""The layers of the causal video VAE: residual block, resamplers, encoder/decoder stages.

Layer for layer these follow diffusers' `AutoencoderKLLTXVideo` (LTX-Video 0.9.0 and 0.9.5 layouts,
without decoder timestep conditioning or noise injection), including its channel orderings, so that
LTX-Video weights load through `ltx_vae_keymap`. Each layer takes an optional `VAEStreamState`: with
it the layer processes the next chunk of a stream, without it a whole clip.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from rest_lightning.models.causal_conv import CausalConv3d, VAEStreamState
from rest_lightning.models.vae_config import DecoderStageConfig, Downsample, EncoderStageConfig, MidConfig

# LTX-Video's residual blocks use 3x3x3 convs and 1x1x1 shortcuts.
_KERNEL = 3
_SHORTCUT_KERNEL = 1


def rms_norm_channels(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise (B, C, T, H, W) over C at every position, in float32 (LTX-Video's RMSNorm, no affine)."""
    variance = x.float().pow(2).mean(dim=1, keepdim=True)
    return (x * torch.rsqrt(variance + eps)).to(x.dtype)


def patchify(video: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*p*p, T, H/p, W/p), channels ordered (c, p_w, p_h) as LTX-Video does."""
    batch, channels, frames, height, width = video.shape
    x = video.reshape(batch, channels, frames, height // patch, patch, width // patch, patch)
    # (B, C, T, H', p_h, W', p_w) -> (B, C, p_w, p_h, T, H', W')
    x = x.permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(batch, channels * patch * patch, frames, height // patch, width // patch)


def unpatchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C*p*p, T, H, W) -> (B, C, T, H*p, W*p); inverse of `patchify`."""
    batch, _, frames, height, width = x.shape
    x = x.reshape(batch, -1, patch, patch, frames, height, width)
    # (B, C, p_w, p_h, T, H, W) -> (B, C, T, H, p_h, W, p_w)
    x = x.permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(batch, -1, frames, height * patch, width * patch)


def space_to_depth(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*st*sh*sw, T/st, H/sh, W/sw), channels ordered (c, st, sh, sw)."""
    st, sh, sw = stride
    batch, channels, frames, height, width = x.shape
    x = x.reshape(batch, channels, frames // st, st, height // sh, sh, width // sw, sw)
    # (B, C, T', st, H', sh, W', sw) -> (B, C, st, sh, sw, T', H', W')
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(batch, channels * st * sh * sw, frames // st, height // sh, width // sw)


def depth_to_space(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """(B, C*st*sh*sw, T, H, W) -> (B, C, T*st, H*sh, W*sw); inverse of `space_to_depth`."""
    st, sh, sw = stride
    batch, _, frames, height, width = x.shape
    x = x.reshape(batch, -1, st, sh, sw, frames, height, width)
    # (B, C, st, sh, sw, T, H, W) -> (B, C, T, st, H, sh, W, sw)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(batch, -1, frames * st, height * sh, width * sw)


class ResBlock3d(nn.Module):
    """RMSNorm -> SiLU -> causal conv, twice, plus a (LayerNorm + 1x1x1 conv when widths differ) shortcut.

    (B, C_in, T, H, W) -> (B, C_out, T, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, causal: bool, norm_eps: float, shortcut_norm_eps: float
    ):
        super().__init__()
        self.norm_eps = norm_eps
        self.conv1 = CausalConv3d(in_channels, out_channels, _KERNEL, causal=causal)
        self.conv2 = CausalConv3d(out_channels, out_channels, _KERNEL, causal=causal)
        self.norm3: nn.LayerNorm | None = None
        self.conv_shortcut: CausalConv3d | None = None
        if in_channels != out_channels:
            self.norm3 = nn.LayerNorm(in_channels, eps=shortcut_norm_eps)
            self.conv_shortcut = CausalConv3d(in_channels, out_channels, _SHORTCUT_KERNEL, causal=causal)

    def forward(self, x: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(rms_norm_channels(x, self.norm_eps)), stream)
        h = self.conv2(F.silu(rms_norm_channels(h, self.norm_eps)), stream)
        shortcut = x
        if self.norm3 is not None and self.conv_shortcut is not None:
            shortcut = self.norm3(x.movedim(1, -1)).movedim(-1, 1)
            shortcut = self.conv_shortcut(shortcut, stream)
        return h + shortcut


class SpaceToDepthDownsample(nn.Module):
    """LTX-Video 0.9.5's residual downsample: space-to-depth of a conv, plus channel-averaged input.

    (B, C_in, T, H, W) -> (B, C_out, T/st, H/sh, W/sw) for a clip of 1 + st*k frames: the first frame
    is duplicated once at the start of a clip (or stream) so it forms a group of its own (causality).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int], causal: bool):
        super().__init__()
        self.stride = stride
        sub_positions = math.prod(stride)
        self.group_size = in_channels * sub_positions // out_channels
        self.conv = CausalConv3d(in_channels, out_channels // sub_positions, _KERNEL, causal=causal)

    def forward(self, x: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        time_stride = self.stride[0]
        stream_start = stream is None or not stream.of(self.conv).started
        if stream_start:
            x = torch.cat([x[:, :, : time_stride - 1], x], dim=2)
        if x.shape[2] % time_stride != 0:
            raise ValueError(
                f"a temporal downsample by {time_stride} got {x.shape[2]} frames (after the first-frame "
                "copy); feed clips of 1 + k*temporal_compression frames and stream chunks of "
                "k*temporal_compression frames"
            )
        # (B, C_in*s, T', H', W') -> mean over groups of `group_size` channels -> (B, C_out, T', H', W')
        residual = space_to_depth(x, self.stride).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return space_to_depth(self.conv(x, stream), self.stride) + residual


class DepthToSpaceUpsample(nn.Module):
    """Conv to (stride product / channel_factor) x channels, then depth-to-space (LTX-Video's upsampler).

    (B, C, T, H, W) -> (B, C / channel_factor, 1 + (T-1)*st, H*sh, W*sw): the first st-1 frames of a
    clip (or stream) are dropped, so latent frame 0 decodes to one frame, as the encoder made it.
    """

    def __init__(
        self,
        in_channels: int,
        stride: tuple[int, int, int],
        residual: bool,
        channel_factor: int,
        causal: bool,
    ):
        super().__init__()
        self.stride = stride
        self.residual = residual
        self.repeats = math.prod(stride) // channel_factor
        self.conv = CausalConv3d(
            in_channels, in_channels * math.prod(stride) // channel_factor, _KERNEL, causal=causal
        )

    def forward(self, x: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        stream_start = stream is None or not stream.of(self.conv).started
        h = depth_to_space(self.conv(x, stream), self.stride)
        if self.residual:
            # Channel-repeated depth-to-space of the input: a parameter-free path (LTX-Video 0.9.5).
            h = h + depth_to_space(x, self.stride).repeat(1, self.repeats, 1, 1, 1)
        if stream_start:
            h = h[:, :, self.stride[0] - 1 :]
        return h


class MidBlock(nn.Module):
    """Residual blocks at the bottleneck width. (B, C, T, H, W) -> same."""

    def __init__(self, config: MidConfig, causal: bool, norm_eps: float, shortcut_norm_eps: float):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock3d(config.channels, config.channels, causal, norm_eps, shortcut_norm_eps)
            for _ in range(config.num_layers)
        )

    def forward(self, x: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, stream)
        return x


class EncoderStage(nn.Module):
    """Residual blocks at `config.channels`, then the downsample, then a width change to `out_channels`.

    (B, C, T, H, W) -> (B, C_out, T/st, H/sh, W/sw) (first frame kept alone in time).
    """

    def __init__(
        self,
        config: EncoderStageConfig,
        out_channels: int,
        causal: bool,
        norm_eps: float,
        shortcut_norm_eps: float,
    ):
        super().__init__()
        width = config.channels
        self.resnets = nn.ModuleList(
            ResBlock3d(width, width, causal, norm_eps, shortcut_norm_eps) for _ in range(config.num_layers)
        )
        self.downsample: nn.Module | None = None
        if config.downsample is Downsample.CONV:
            self.downsample = CausalConv3d(
                width, width, _KERNEL, stride=config.downsample.stride, causal=causal
            )
        elif config.downsample.pixel_shuffle:
            self.downsample = SpaceToDepthDownsample(width, out_channels, config.downsample.stride, causal)
            width = out_channels
        self.width_change: ResBlock3d | None = None
        if width != out_channels:
            self.width_change = ResBlock3d(width, out_channels, causal, norm_eps, shortcut_norm_eps)

    def forward(self, x: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, stream)
        if self.downsample is not None:
            x = self.downsample(x, stream)
        if self.width_change is not None:
            x = self.width_change(x, stream)
        return x


class DecoderStage(nn.Module):
    """Width change from `in_channels`, the upsample, then residual blocks at `config.channels`.

    (B, C_in, T, H, W) -> (B, C, 1 + (T-1)*st, H*sh, W*sw).
    """

    def __init__(
        self,
        config: DecoderStageConfig,
        in_channels: int,
        causal: bool,
        norm_eps: float,
        shortcut_norm_eps: float,
    ):
        super().__init__()
        width = config.channels
        upsample_width = width * config.upsample_channel_factor
        self.width_change: ResBlock3d | None = None
        if in_channels != upsample_width:
            self.width_change = ResBlock3d(in_channels, upsample_width, causal, norm_eps, shortcut_norm_eps)
        self.upsample: DepthToSpaceUpsample | None = None
        if config.upsample.stride != (1, 1, 1):
            self.upsample = DepthToSpaceUpsample(
                upsample_width,
                config.upsample.stride,
                config.upsample_residual,
                config.upsample_channel_factor,
                causal,
            )
        self.resnets = nn.ModuleList(
            ResBlock3d(width, width, causal, norm_eps, shortcut_norm_eps) for _ in range(config.num_layers)
        )

    def forward(self, x: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        if self.width_change is not None:
            x = self.width_change(x, stream)
        if self.upsample is not None:
            x = self.upsample(x, stream)
        for resnet in self.resnets:
            x = resnet(x, stream)
        return x
