"""`VAEConfig`: the architecture of the causal video VAE, stage by stage, LTX-Video style.

The encoder is: patchify (p x p pixels -> channels) -> `conv_in` -> stages -> mid -> `conv_out`
(latent mean + one shared log-variance channel). Each encoder stage is a few causal residual blocks
at one width, then an optional downsample, then (if needed) a change of width to the next stage's.
The decoder mirrors it: `conv_in` -> mid -> stages (width change, optional upsample, residual blocks)
-> `conv_out` -> unpatchify. Each stage is one typed record instead of diffusers' parallel per-block
tuples; compression ratios are computed from the stages, never typed.

Presets: `vae_rest()` (the paper's 32x32x8, 128 latent channels: LTX-Video 0.9.0's layout, so its
published weights load) and `vae_tiny()` (the same kinds of layers at a width that trains on a CPU).
YAML twins live in conf/model/vae/.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Downsample(str, Enum):
    """How an encoder stage reduces resolution (LTX-Video `downsample_type`)."""

    NONE = "none"
    # A causal 3x3x3 conv with stride 2 in (t, h, w): LTX-Video 0.9.0's `compress_all`.
    CONV = "conv"
    # Space-to-depth ("pixel-unshuffle") of a conv's output plus a channel-averaged residual:
    # LTX-Video 0.9.5's `compress_space_res` / `compress_time_res` / `compress_all_res`.
    SPACE = "space"
    TIME = "time"
    SPACE_TIME = "space_time"

    @property
    def stride(self) -> tuple[int, int, int]:
        """(t, h, w) reduction factors."""
        return _RESAMPLE_STRIDES[self.value]

    @property
    def pixel_shuffle(self) -> bool:
        """Whether the downsample is the space-to-depth kind (which changes width itself)."""
        return self in (Downsample.SPACE, Downsample.TIME, Downsample.SPACE_TIME)


class Upsample(str, Enum):
    """How a decoder stage raises resolution: conv to stride-product x channels, then depth-to-space."""

    NONE = "none"
    SPACE = "space"
    TIME = "time"
    SPACE_TIME = "space_time"

    @property
    def stride(self) -> tuple[int, int, int]:
        """(t, h, w) growth factors."""
        return _RESAMPLE_STRIDES[self.value]


# Factor 2 per resampled axis: LTX-Video's only resampling factor.
_RESAMPLE_STRIDES = {
    "none": (1, 1, 1),
    "conv": (2, 2, 2),
    "space": (1, 2, 2),
    "time": (2, 1, 1),
    "space_time": (2, 2, 2),
}


@dataclass
class MidConfig:
    """The residual blocks at the bottleneck of the encoder or decoder."""

    channels: int
    num_layers: int

    def __post_init__(self) -> None:
        _check_positive("channels", self.channels)
        _check_at_least("num_layers", self.num_layers, 0)


@dataclass
class EncoderStageConfig:
    """One encoder stage: `num_layers` residual blocks at `channels`, then `downsample`.

    The stage's output width is the next stage's `channels` (or the encoder mid's); a space-to-depth
    downsample reaches it itself, otherwise a residual block changes width (as LTX-Video 0.9.0 does).
    """

    channels: int
    num_layers: int
    downsample: Downsample = Downsample.NONE

    def __post_init__(self) -> None:
        _check_positive("channels", self.channels)
        _check_at_least("num_layers", self.num_layers, 0)
        self.downsample = _as_enum(Downsample, self.downsample, "encoder_stages[].downsample")


@dataclass
class DecoderStageConfig:
    """One decoder stage: width change, `upsample`, then `num_layers` residual blocks at `channels`.

    `upsample_residual` adds LTX-Video 0.9.5's depth-to-space shortcut around the upsample conv;
    `upsample_channel_factor` > 1 makes the upsample itself divide the width (input = channels x factor),
    LTX-Video 0.9.5's `upsample_factor`.
    """

    channels: int
    num_layers: int
    upsample: Upsample = Upsample.NONE
    upsample_residual: bool = False
    upsample_channel_factor: int = 1

    def __post_init__(self) -> None:
        _check_positive("channels", self.channels)
        _check_at_least("num_layers", self.num_layers, 0)
        _check_positive("upsample_channel_factor", self.upsample_channel_factor)
        self.upsample = _as_enum(Upsample, self.upsample, "decoder_stages[].upsample")
        if self.upsample is Upsample.NONE and (self.upsample_residual or self.upsample_channel_factor != 1):
            raise ValueError(
                "decoder stage has upsample='none' but upsample_residual/upsample_channel_factor set; "
                "set upsample or drop those fields"
            )


@dataclass
class VAEConfig:
    """Architecture of `CausalVideoVAE`. Defaults are `vae_rest`'s (LTX-Video 0.9.0 layout).

    Attributes:
        video_channels: channels of the video (RGB).
        latent_channels: channels of the latent.
        patch_size: spatial patchify side before the first conv.
        encoder_stages / encoder_mid: the encoder, from pixels to latent.
        decoder_mid / decoder_stages: the decoder, from latent to pixels (in decoding order).
        causal_encoder / causal_decoder: causal temporal padding. LTX-Video's released decoder is
            non-causal; REST streams, so the decoder is re-padded causally (and fine-tuned).
        norm_eps: RMSNorm epsilon of the residual blocks and output norms.
        shortcut_norm_eps: LayerNorm epsilon before a width-changing shortcut.
        activation_checkpointing: recompute each stage in the backward pass (full-clip training only).
    """

    video_channels: int = 3  # RGB
    latent_channels: int = 128  # REST / LTX-Video: 128 latent channels
    patch_size: int = 4  # LTX-Video: 4x4 patchify
    encoder_stages: tuple[EncoderStageConfig, ...] = field(
        # LTX-Video 0.9.0 (diffusers AutoencoderKLLTXVideo defaults): block_out_channels (128, 256, 512,
        # 512), layers_per_block (4, 3, 3, 3, 4), spatio_temporal_scaling (True, True, True, False).
        default_factory=lambda: (
            EncoderStageConfig(128, 4, Downsample.CONV),
            EncoderStageConfig(256, 3, Downsample.CONV),
            EncoderStageConfig(512, 3, Downsample.CONV),
            EncoderStageConfig(512, 3, Downsample.NONE),
        )
    )
    encoder_mid: MidConfig = field(default_factory=lambda: MidConfig(512, 4))  # LTX-Video 0.9.0
    decoder_mid: MidConfig = field(default_factory=lambda: MidConfig(512, 4))  # LTX-Video 0.9.0
    decoder_stages: tuple[DecoderStageConfig, ...] = field(
        # LTX-Video 0.9.0 decoder, in decoding order (diffusers reverses its tuples).
        default_factory=lambda: (
            DecoderStageConfig(512, 3, Upsample.NONE),
            DecoderStageConfig(512, 3, Upsample.SPACE_TIME),
            DecoderStageConfig(256, 3, Upsample.SPACE_TIME),
            DecoderStageConfig(128, 4, Upsample.SPACE_TIME),
        )
    )
    causal_encoder: bool = True  # LTX-Video: causal encoder
    causal_decoder: bool = True  # REST streams (DESIGN §5); LTX-Video's own decoder is non-causal
    norm_eps: float = 1e-8  # LTX-Video RMSNorm eps
    shortcut_norm_eps: float = 1e-6  # LTX-Video resnet_norm_eps (LayerNorm on width-changing shortcuts)
    activation_checkpointing: bool = False  # design choice: off; memory switch for training

    def __post_init__(self) -> None:
        _check_positive("video_channels", self.video_channels)
        _check_positive("latent_channels", self.latent_channels)
        _check_positive("patch_size", self.patch_size)
        self.encoder_stages = _as_records(EncoderStageConfig, self.encoder_stages, "encoder_stages")
        self.decoder_stages = _as_records(DecoderStageConfig, self.decoder_stages, "decoder_stages")
        self.encoder_mid = _as_record(MidConfig, self.encoder_mid, "encoder_mid")
        self.decoder_mid = _as_record(MidConfig, self.decoder_mid, "decoder_mid")
        if not self.encoder_stages or not self.decoder_stages:
            raise ValueError("VAEConfig needs at least one encoder stage and one decoder stage")
        self._check_widths()
        encoder_ratio = self._ratio(stage.downsample.stride for stage in self.encoder_stages)
        decoder_ratio = self._ratio(stage.upsample.stride for stage in self.decoder_stages)
        if encoder_ratio != decoder_ratio:
            raise ValueError(
                f"encoder compresses (t, h, w) by {encoder_ratio} but the decoder expands by "
                f"{decoder_ratio}; make encoder_stages[].downsample and decoder_stages[].upsample match"
            )
        if encoder_ratio[1] != encoder_ratio[2]:
            raise ValueError(f"height and width compression differ ({encoder_ratio}); use square strides")

    def _check_widths(self) -> None:
        for index, stage in enumerate(self.encoder_stages):
            out = self.encoder_stage_out_channels(index)
            if stage.downsample.pixel_shuffle:
                group = math.prod(stage.downsample.stride)
                if (stage.channels * group) % out != 0 or out % group != 0:
                    raise ValueError(
                        f"encoder_stages[{index}]: a {stage.downsample.value} downsample from {stage.channels} "
                        f"to {out} channels needs {out} divisible by {group} and {stage.channels * group} "
                        f"divisible by {out}; change the stage widths"
                    )
        width = self.decoder_mid.channels
        for index, stage in enumerate(self.decoder_stages):
            factor = stage.upsample_channel_factor
            if factor != 1 and width != stage.channels * factor:
                raise ValueError(
                    f"decoder_stages[{index}] divides width by upsample_channel_factor={factor}, so its input "
                    f"must have {stage.channels * factor} channels, but the previous stage gives {width}; "
                    "change decoder_stages[].channels"
                )
            group = math.prod(stage.upsample.stride)
            if stage.upsample_residual and (stage.channels * factor) % group != 0:
                raise ValueError(
                    f"decoder_stages[{index}]: upsample_residual splits {stage.channels * factor} channels "
                    f"into {group} sub-pixels; use a width divisible by {group} or upsample_residual=false"
                )
            width = stage.channels

    @staticmethod
    def _ratio(strides) -> tuple[int, int, int]:
        total = (1, 1, 1)
        for stride in strides:
            total = tuple(a * b for a, b in zip(total, stride, strict=True))
        return total

    def encoder_stage_out_channels(self, index: int) -> int:
        """Width leaving encoder stage `index`: the next stage's width, or the encoder mid's."""
        if index + 1 < len(self.encoder_stages):
            return self.encoder_stages[index + 1].channels
        return self.encoder_mid.channels

    @property
    def temporal_compression(self) -> int:
        """Video frames per latent frame after the first (8 for REST)."""
        return self._ratio(stage.downsample.stride for stage in self.encoder_stages)[0]

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent cell along height or width (32 for REST): patch x spatial downsamples."""
        return self.patch_size * self._ratio(stage.downsample.stride for stage in self.encoder_stages)[1]

    def latent_frames(self, frames: int) -> int:
        """Latent frames for a clip of `frames` video frames: 1 + (frames - 1) / temporal_compression."""
        if frames < 1 or (frames - 1) % self.temporal_compression != 0:
            raise ValueError(
                f"a clip must have 1 + {self.temporal_compression}k frames (the first frame is encoded "
                f"alone), got {frames}; crop or pad the clip (data.frames)"
            )
        return 1 + (frames - 1) // self.temporal_compression

    def video_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames."""
        _check_positive("latent_frames", latent_frames)
        return 1 + (latent_frames - 1) * self.temporal_compression

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latent of a (3, frames, height, width) clip."""
        ratio = self.spatial_compression
        if height % ratio or width % ratio:
            raise ValueError(
                f"height and width must be multiples of the spatial compression {ratio}, got "
                f"{height}x{width}; change data.resolution"
            )
        return (self.latent_channels, self.latent_frames(frames), height // ratio, width // ratio)


def vae_rest() -> VAEConfig:
    """REST's VAE: 32x32x8, 128 channels (LTX-Video 0.9.0 layout, causal decoder)."""
    return VAEConfig()


def vae_tiny() -> VAEConfig:
    """A tiny VAE with the paper's 8x temporal ratio that trains on a CPU in seconds.

    Design choice: patch 2 and three downsamples (space-time, space-time, time) give 8x8x8; it mixes
    the space-to-depth downsamples and residual upsamples of LTX-Video 0.9.5 so tests cover them.
    """
    return VAEConfig(
        latent_channels=8,
        patch_size=2,
        encoder_stages=(
            EncoderStageConfig(8, 1, Downsample.SPACE_TIME),
            EncoderStageConfig(16, 1, Downsample.SPACE_TIME),
            EncoderStageConfig(16, 1, Downsample.TIME),
        ),
        encoder_mid=MidConfig(32, 1),
        decoder_mid=MidConfig(32, 1),
        decoder_stages=(
            DecoderStageConfig(16, 1, Upsample.TIME, upsample_residual=True, upsample_channel_factor=2),
            DecoderStageConfig(16, 1, Upsample.SPACE_TIME, upsample_residual=True),
            DecoderStageConfig(8, 1, Upsample.SPACE_TIME),
        ),
    )


def _check_positive(name: str, value: int) -> None:
    _check_at_least(name, value, 1)


def _check_at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"VAEConfig {name} must be an int >= {low}, got {value!r}")


def _as_enum(kind: type[Enum], value, key: str):
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ValueError(f"VAEConfig {key}={value!r} is not one of: {choices}") from None


def _as_record(kind: type, value, key: str):
    # YAML / Hydra hand nested records over as mappings; build the dataclass from them.
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        try:
            return kind(**dict(value))
        except TypeError as error:
            raise ValueError(f"VAEConfig {key}: {error}") from None
    raise TypeError(f"VAEConfig {key} must be a {kind.__name__} or a mapping, got {type(value).__name__}")


def _as_records(kind: type, values, key: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"VAEConfig {key} must be a list of {kind.__name__}, got {type(values).__name__}")
    return tuple(_as_record(kind, value, f"{key}[{index}]") for index, value in enumerate(values))
