"""`CausalVideoVAE`: REST's 32x32x8 causal video VAE (LTX-Video layout), with streaming encode/decode.

Video is float (B, 3, T, H, W) in [-1, 1] with T = 1 + 8k at the paper's ratio; the latent is
(B, 128, 1 + k, H/32, W/32), normalised per channel by the latent mean/std kept as buffers (saved in
the state dict). The first frame is encoded alone and no frame depends on later ones (causal in time
in encoder and decoder), so a generator can decode latent frame by latent frame (`decode_step`) and
get exactly the frames a whole-clip `decode` gives (DESIGN §4.1, §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rest_lightning.models.causal_conv import CausalConv3d, VAEStreamState
from rest_lightning.models.vae_blocks import (
    DecoderStage,
    EncoderStage,
    MidBlock,
    patchify,
    rms_norm_channels,
    unpatchify,
)
from rest_lightning.models.vae_config import (
    DecoderStageConfig,
    Downsample,
    EncoderStageConfig,
    MidConfig,
    Upsample,
    VAEConfig,
    vae_rest,
    vae_tiny,
)

__all__ = [
    "CausalVideoVAE",
    "DecoderStageConfig",
    "DiagonalGaussian",
    "Downsample",
    "EncoderStageConfig",
    "LatentNormalizer",
    "LatentStatistics",
    "MidConfig",
    "Upsample",
    "VAEConfig",
    "VAEReconstruction",
    "VAEStreamState",
    "vae_rest",
    "vae_tiny",
]


_KERNEL = 3  # LTX-Video: 3x3x3 conv_in / conv_out
# Log-variance clamp of LDM / diffusers' DiagonalGaussianDistribution: keeps exp() finite.
_LOGVAR_MIN = -30.0
_LOGVAR_MAX = 20.0


@dataclass
class DiagonalGaussian:
    """The encoder's posterior q(z | video): a diagonal Gaussian in raw (unnormalised) latent space.

    `mean` is (B, C, T', H', W'); `logvar` is (B, 1, T', H', W'), one log-variance shared by all
    channels as LTX-Video's encoder predicts it, broadcast over C.
    """

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        """(B, 1, T', H', W') standard deviation."""
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        """(B, C, T', H', W') the deterministic latent (the mean)."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, T', H', W') a reparameterised sample mean + std * eps (differentiable)."""
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """(B,) KL(q || N(0, I)) summed over the latent's C, T', H', W' (divide for a per-element mean)."""
        logvar = self.logvar.expand_as(self.mean)
        per_element = self.mean.pow(2) + torch.exp(logvar) - 1.0 - logvar
        return 0.5 * per_element.flatten(1).sum(dim=1)


@dataclass
class VAEReconstruction:
    """What `CausalVideoVAE.forward` returns for training: the decoded video and the posterior."""

    video: torch.Tensor  # (B, 3, T, H, W), not clamped (the losses see the raw output)
    posterior: DiagonalGaussian


class LatentNormalizer(nn.Module):
    """Per-channel latent mean and std, persistent buffers saved in the state dict.

    The diffusion stages see latents with zero mean and unit std per channel; the statistics are
    measured on the training data after VAE training (`LatentStatistics`) and set with `set_stats`.
    Defaults (0, 1) make normalisation the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels), persistent=True)
        self.register_buffer("std", torch.ones(channels), persistent=True)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, C, T, H, W) -> normalised latent, same shape."""
        return (z - self.mean.view(-1, 1, 1, 1)) / self.std.view(-1, 1, 1, 1)

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, C, T, H, W) -> raw latent, same shape."""
        return latent * self.std.view(-1, 1, 1, 1) + self.mean.view(-1, 1, 1, 1)

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-channel `mean` (C,) and `std` (C,), std > 0."""
        channels = self.mean.shape[0]
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ValueError(
                f"latent statistics must be shaped ({channels},), got mean {tuple(mean.shape)} and std "
                f"{tuple(std.shape)}; compute them with LatentStatistics on latents of this VAE"
            )
        if not bool(torch.all(std > 0)):
            raise ValueError("latent std must be > 0 in every channel; a zero std means a dead channel")
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std)


class LatentStatistics:
    """Running per-channel mean/std of raw latents over batches, in float64.

    Under DDP, all-reduce (sum) `total`, `total_sq` and `count` across ranks before `mean_std()`.
    """

    def __init__(self, channels: int) -> None:
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.total_sq = torch.zeros(channels, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, z: torch.Tensor) -> None:
        """Add raw latents (B, C, T, H, W)."""
        values = z.detach().to(device="cpu", dtype=torch.float64).transpose(0, 1).flatten(1)
        self.total += values.sum(dim=1)
        self.total_sq += values.pow(2).sum(dim=1)
        self.count += values.shape[1]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean (C,), std (C,)) in float32."""
        if float(self.count) == 0:
            raise ValueError("LatentStatistics.mean_std() before any update(); encode some data first")
        mean = self.total / self.count
        variance = (self.total_sq / self.count - mean.pow(2)).clamp_min(0)
        return mean.float(), variance.sqrt().float()


class VideoEncoder(nn.Module):
    """(B, 3, T, H, W) video -> (B, C+1, T', H', W'): latent mean and one shared log-variance channel."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        causal = config.causal_encoder
        eps = (config.norm_eps, config.shortcut_norm_eps)
        self.patch_size = config.patch_size
        self.norm_eps = config.norm_eps
        self.activation_checkpointing = config.activation_checkpointing
        patch_channels = config.video_channels * config.patch_size**2
        self.conv_in = CausalConv3d(patch_channels, config.encoder_stages[0].channels, _KERNEL, causal=causal)
        self.stages = nn.ModuleList(
            EncoderStage(stage, config.encoder_stage_out_channels(index), causal, *eps)
            for index, stage in enumerate(config.encoder_stages)
        )
        self.mid = MidBlock(config.encoder_mid, causal, *eps)
        self.conv_out = CausalConv3d(
            config.encoder_mid.channels, config.latent_channels + 1, _KERNEL, causal=causal
        )

    def forward(self, video: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        x = self.conv_in(patchify(video, self.patch_size), stream)
        for block in (*self.stages, self.mid):
            x = _run_block(block, x, stream, self.activation_checkpointing)
        x = F.silu(rms_norm_channels(x, self.norm_eps))
        return self.conv_out(x, stream)


class VideoDecoder(nn.Module):
    """(B, C, T', H', W') raw latent -> (B, 3, T, H, W) video."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        causal = config.causal_decoder
        eps = (config.norm_eps, config.shortcut_norm_eps)
        self.patch_size = config.patch_size
        self.norm_eps = config.norm_eps
        self.activation_checkpointing = config.activation_checkpointing
        self.conv_in = CausalConv3d(
            config.latent_channels, config.decoder_mid.channels, _KERNEL, causal=causal
        )
        self.mid = MidBlock(config.decoder_mid, causal, *eps)
        stages = []
        width = config.decoder_mid.channels
        for stage in config.decoder_stages:
            stages.append(DecoderStage(stage, width, causal, *eps))
            width = stage.channels
        self.stages = nn.ModuleList(stages)
        patch_channels = config.video_channels * config.patch_size**2
        self.conv_out = CausalConv3d(width, patch_channels, _KERNEL, causal=causal)

    def forward(self, z: torch.Tensor, stream: VAEStreamState | None = None) -> torch.Tensor:
        x = self.conv_in(z, stream)
        for block in (self.mid, *self.stages):
            x = _run_block(block, x, stream, self.activation_checkpointing)
        x = F.silu(rms_norm_channels(x, self.norm_eps))
        return unpatchify(self.conv_out(x, stream), self.patch_size)


def _run_block(
    block: nn.Module, x: torch.Tensor, stream: VAEStreamState | None, checkpointing: bool
) -> torch.Tensor:
    # Recomputing a block that writes stream state would write it twice: checkpoint whole clips only.
    if checkpointing and stream is None and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x, stream)


class CausalVideoVAE(nn.Module):
    """Causal video VAE. See the module docstring; `config` fixes the architecture."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VideoEncoder(config)
        self.decoder = VideoDecoder(config)
        self.latent_norm = LatentNormalizer(config.latent_channels)

    @property
    def last_decoder_layer(self) -> nn.Parameter:
        """The decoder's output conv weight: the layer the adaptive GAN weight takes gradients at."""
        return self.decoder.conv_out.conv.weight

    def forward(
        self, video: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> VAEReconstruction:
        """Training pass: encode (B, 3, T, H, W) in [-1, 1], sample (or take the mode), decode.

        Works in raw latent space, so the latent statistics play no part in training.
        """
        posterior = self.encode_posterior(video)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return VAEReconstruction(video=self.decoder(z), posterior=posterior)

    def encode_posterior(self, video: torch.Tensor) -> DiagonalGaussian:
        """(B, 3, T, H, W) in [-1, 1], T = 1 + kt -> posterior over raw (B, C, 1 + k, H/s, W/s) latents."""
        self._check_video(video, first_chunk=True)
        return self._posterior(self.encoder(video))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> normalised latent (B, C, 1 + (T-1)/t, H/s, W/s), the posterior mode."""
        return self.latent_norm.normalize(self.encode_posterior(video).mode())

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, C, T', H', W') -> video (B, 3, 1 + (T'-1)*t, H'*s, W'*s), about [-1, 1]."""
        self._check_latent(latent)
        return self.decoder(self.latent_norm.denormalize(latent))

    def new_encode_state(self) -> VAEStreamState:
        """A fresh stream state for `encode_step`."""
        return VAEStreamState(self.encoder)

    def new_decode_state(self) -> VAEStreamState:
        """A fresh stream state for `decode_step`."""
        return VAEStreamState(self.decoder)

    def encode_step(self, frames: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        """Encode the next chunk of a stream to normalised latent frames (the posterior mode).

        `frames` (B, 3, T, H, W): the first chunk has 1 + k*t frames, later chunks k*t frames (t =
        temporal compression); returns (B, C, T', H/s, W/s) with T' = 1 + k, then k. Chunks together give
        exactly `encode` of the whole clip.
        """
        self._check_video(frames, first_chunk=not state.started)
        raw = self.encoder(frames, state)
        state.frames_in += frames.shape[2]
        return self.latent_norm.normalize(self._posterior(raw).mode())

    def decode_step(self, latent: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        """Decode the next latent frame(s) of a stream: (B, C, T', H', W') -> (B, 3, F, H'*s, W'*s).

        F = 1 + (T'-1)*t for the first step (latent frame 0 is one video frame), T'*t afterwards; the
        frames equal those `decode` gives for the whole clip. Needs `causal_decoder=True`. Generate
        under `torch.inference_mode()`: with autograd on, the state keeps every past chunk's graph.
        """
        if not self.config.causal_decoder:
            raise ValueError(
                "decode_step needs a causal decoder; set model.vae.causal_decoder=true (LTX-Video's "
                "released decoder is non-causal: fine-tune it causally first, experiment vae_ltx_causal_finetune)"
            )
        self._check_latent(latent)
        video = self.decoder(self.latent_norm.denormalize(latent), state)
        state.frames_in += latent.shape[2]
        return video

    def _posterior(self, moments: torch.Tensor) -> DiagonalGaussian:
        # (B, C+1, T', H', W'): C mean channels, then one log-variance channel shared by all of them.
        mean, logvar = moments.split([self.config.latent_channels, 1], dim=1)
        return DiagonalGaussian(mean=mean, logvar=logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX))

    def _check_video(self, video: torch.Tensor, first_chunk: bool) -> None:
        config = self.config
        if video.ndim != 5 or video.shape[1] != config.video_channels:
            raise ValueError(f"video must be (B, {config.video_channels}, T, H, W), got {tuple(video.shape)}")
        frames, height, width = video.shape[2:]
        step = config.temporal_compression
        expected_rest = 1 if first_chunk else 0
        if frames < 1 or (frames - expected_rest) % step != 0:
            what = f"1 + {step}k frames" if first_chunk else f"{step}k frames (a later stream chunk)"
            raise ValueError(
                f"expected {what}, got {frames}: the first frame is encoded alone and every "
                f"{step} frames after it make one latent frame; crop the clip (data.frames)"
            )
        ratio = config.spatial_compression
        if height % ratio or width % ratio:
            raise ValueError(
                f"frame size {height}x{width} is not a multiple of the spatial compression {ratio}; "
                "change data.resolution"
            )

    def _check_latent(self, latent: torch.Tensor) -> None:
        channels = self.config.latent_channels
        if latent.ndim != 5 or latent.shape[1] != channels:
            raise ValueError(f"latent must be (B, {channels}, T', H', W'), got {tuple(latent.shape)}")
