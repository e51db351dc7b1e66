"""The audio-to-video latent DiT of REST (DESIGN §4.2, §4.3): LTX-Video's transformer block with audio in
the cross-attention slot, a reference prefix (the ID-Sink) and a per-latent-frame timestep.

Tokens. A clip's latent ``(B, C, F, H, W)`` becomes ``F`` frames of ``L = H * W`` tokens (patch 1x1x1,
as LTX-Video). The reference latent ``(B, C, 1, H, W)`` becomes ``L`` reference tokens that always sit
at diffusion time 0 (clean) and are prefixed to the video tokens in self-attention.

Who sees whom (``AttentionPattern``). Reference queries see only the reference keys, in every pattern,
so the reference tokens' states are a function of the reference alone: the teacher and the streaming
student (which computes them once, as its ID-Sink) see the same reference. Video queries see the
reference and the video frames the pattern allows: all frames (``bidirectional``, teacher) or their
chunk's window ``[chunks c-W .. c]`` (``block_causal``, student). Cross-attention is frame-level:
latent frame i attends only to frame i's audio tokens; reference tokens have no cross-attention.

Positions ("within the window", DESIGN §5). Rotary coordinates are ``(t, h, w)``: ``h, w`` the token's
latent row and column; ``t`` a *window* time position, in latent frames:

- A query chunk ``c`` has a window that starts at chunk ``s_c`` (``s_c = 0`` for ``bidirectional``,
  the whole clip being one window; ``s_c = max(0, c - W)`` for ``block_causal``). Inside it, frame
  ``k`` of chunk ``j`` sits at ``t = (j - s_c) * chunk_frames + k``. So the current chunk sits at
  ``min(c, W) * chunk_frames + k`` and no position ever exceeds ``(W + 1) * chunk_frames - 1``
  however long a stream runs; a clip of at most ``W + 1`` chunks has plain positions ``0 .. F - 1``.
- The reference (ID-Sink) tokens sit at the fixed ``t = ref_time_position`` (default -1: one latent
  frame before the window's first frame).
- Rotary is applied to queries and keys when attention reads them, never stored: the block-causal
  forward rotates each gathered window, and a cache (``IDContextCache``) keeps un-rotated keys, which
  ``forward_chunk`` rotates at the slots of the window it is given.

Rotary scores depend only on coordinate differences, so between video tokens the score is that of
absolute positions (``(j - s_c) - (i - s_c) = j - i``); towards the sink, the distance from the current
chunk is ``min(c, W) * chunk_frames + k - ref_time_position``: it stops growing once the window is full,
which is what a stream of any length needs in order to see only distances it saw in training.

Streaming hook. ``encode_id_sink(ref)`` returns the per-layer keys/values of the reference tokens;
``forward_chunk(chunk, ..., windows)`` runs one chunk whose self-attention reads ``[sink, context
chunks, itself]`` from ``WindowKV`` objects (one per layer) and returns the chunk's own per-layer
keys/values for the cache to store. Chunk by chunk this equals the block-causal forward over the whole
history (tested).

Names follow LTX-Video (diffusers ``LTXVideoTransformer3DModel``): ``proj_in``, ``time_embed``,
``transformer_blocks.{i}.{norm1, attn1, norm2, attn2, ff, scale_shift_table}``, ``norm_out``,
``scale_shift_table``, ``proj_out``; ``models/ltx_dit_keymap.py`` maps LTX-Video weights onto them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rest_lightning.models.attention import (
    AttentionPattern,
    AttentionPlan,
    ChunkPlan,
    FrameCrossAttention,
    LayerKV,
    SelfAttention,
    WindowKV,
    build_attention_plan,
)
from rest_lightning.models.rope import Rotary, RotaryEmbedding, grid_coords

NUM_MODULATIONS = 6  # shift/scale/gate for self-attention and for the MLP (AdaLN-single, PixArt-alpha)
NUM_OUTPUT_MODULATIONS = 2  # shift/scale of the final norm (LTX-Video)


@dataclass
class DiTConfig:
    """Size and conditioning of the DiT. Paper-scale defaults are LTX-Video 2B's (REST's DiT is believed
    to be LTX-Video-sized, reference/paper.md §2.2); ``conf/model/dit/*.yaml`` hold the named sizes."""

    latent_channels: int = 128  # LTX-Video VAE latent channels (DESIGN §3)
    width: int = 2048  # LTX-Video 2B: 32 heads x 64
    num_layers: int = 28  # LTX-Video 2B; REST's 28 blocks (reference/paper.md §2.2, unofficial)
    num_heads: int = 32  # LTX-Video 2B
    mlp_ratio: int = 4  # LTX-Video FeedForward (diffusers default mult=4)
    audio_dim: int = 768  # design choice: channels of the AudioEncoder's tokens (AudioConfig.token_dim)
    norm_eps: float = 1e-6  # LTX-Video norm_eps (block RMSNorms)
    qk_norm_eps: float = 1e-5  # LTX-Video LTXAttention QK RMSNorm eps
    timestep_scale: float = 1000.0  # LTX-Video: the model sees sigma * 1000 (1000 training timesteps)
    timestep_channels: int = 256  # LTX-Video / PixArt-alpha sinusoidal timestep channels
    rope_theta: float = 10000.0  # LTX-Video positional_embedding_theta
    rope_base_frames: float = 20.0  # LTX-Video positional_embedding_max_pos[0]
    rope_base_height: float = 2048.0  # LTX-Video positional_embedding_max_pos[1]
    rope_base_width: float = 2048.0  # LTX-Video positional_embedding_max_pos[2]
    rope_time_scale: float = (
        0.32  # LTX-Video pipeline: temporal compression / fps = 8 / 25 s per latent frame
    )
    rope_space_scale: float = 32.0  # LTX-Video pipeline: spatial compression (pixels per latent)
    ref_time_position: float = -1.0  # design choice: the ID-Sink one latent frame before the window
    activation_checkpointing: bool = False  # recompute each block in backward (memory for time)
    pretrained: str | None = None  # local diffusers LTXVideoTransformer3DModel folder (model.dit.pretrained)
    pretrained_cross_attention: bool = (
        True  # LTX text cross-attention -> audio cross-attention (else re-init)
    )
    pretrained_audio_projection: bool = (
        False  # LTX caption_projection -> audio_projection (audio_dim must match)
    )

    def __post_init__(self) -> None:
        for key in (
            "latent_channels",
            "width",
            "num_layers",
            "num_heads",
            "mlp_ratio",
            "audio_dim",
            "timestep_channels",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiTConfig.{key}={value!r}: expected a positive int")
        if self.width % self.num_heads:
            raise ValueError(
                f"DiTConfig.width={self.width} does not divide into num_heads={self.num_heads}; "
                "pick width = num_heads * head_dim"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"DiTConfig head_dim = width / num_heads = {self.head_dim} must be even (rotary rotates "
                "channel pairs); change width or num_heads"
            )
        if self.timestep_channels % 2:
            raise ValueError(f"DiTConfig.timestep_channels={self.timestep_channels}: expected an even number")
        for key in (
            "norm_eps",
            "qk_norm_eps",
            "timestep_scale",
            "rope_theta",
            "rope_base_frames",
            "rope_base_height",
            "rope_base_width",
            "rope_time_scale",
            "rope_space_scale",
        ):
            if not getattr(self, key) > 0:
                raise ValueError(f"DiTConfig.{key}={getattr(self, key)!r}: expected a positive number")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


def timestep_sinusoids(timesteps: Tensor, channels: int) -> Tensor:
    """Sinusoidal embedding ``(N,)`` -> ``(N, channels)`` float32, cos half first (diffusers
    ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``, max period 10000 as in DDPM)."""
    half = channels // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoids -> MLP (``linear_1``, SiLU, ``linear_2``), LTX-Video's ``timestep_embedder``."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(channels, width)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(width, width)

    def forward(self, sinusoids: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(sinusoids)))


class AdaLNSingle(nn.Module):
    """AdaLN-single (PixArt-alpha, LTX-Video ``time_embed``): one timestep embedding shared by all
    blocks, here per latent frame, each block adding its own ``scale_shift_table``."""

    def __init__(self, width: int, timestep_channels: int, timestep_scale: float) -> None:
        super().__init__()
        self.timestep_channels = timestep_channels
        self.timestep_scale = timestep_scale
        self.timestep_embedder = TimestepEmbedder(timestep_channels, width)
        self.act = nn.SiLU()
        self.linear = nn.Linear(width, NUM_MODULATIONS * width)

    def forward(self, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """Flow times ``(B, F)`` in [0, 1] -> block modulation ``(B, F, 6 * D)`` and the embedding
        ``(B, F, D)`` (which modulates the output norm)."""
        sinusoids = timestep_sinusoids(timesteps.flatten() * self.timestep_scale, self.timestep_channels)
        embedded = self.timestep_embedder(sinusoids.to(self.linear.weight.dtype))
        modulation = self.linear(self.act(embedded))
        return modulation.unflatten(0, timesteps.shape), embedded.unflatten(0, timesteps.shape)


class AudioProjection(nn.Module):
    """Audio tokens ``(..., audio_dim)`` -> model width, the layout of LTX-Video's caption projection
    (``linear_1``, tanh-GELU, ``linear_2``)."""

    def __init__(self, audio_dim: int, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(audio_dim, width)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(width, width)

    def forward(self, audio: Tensor) -> Tensor:
        return self.linear_2(self.act_1(self.linear_1(audio)))


class FeedForward(nn.Module):
    """MLP ``proj_in`` -> tanh-GELU -> ``proj_out`` (LTX-Video ``ff.net.0.proj`` / ``ff.net.2``)."""

    def __init__(self, width: int, mlp_ratio: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(width, mlp_ratio * width)
        self.act = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(mlp_ratio * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(self.act(self.proj_in(x)))


@dataclass(frozen=True)
class Modulation:
    """A block's AdaLN values for a group of frames, each ``(B, G, 1, D)`` (broadcast over tokens)."""

    shift_msa: Tensor
    scale_msa: Tensor
    gate_msa: Tensor
    shift_mlp: Tensor
    scale_mlp: Tensor
    gate_mlp: Tensor


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """LTX-Video transformer block: AdaLN-modulated self-attention, frame-level audio cross-attention on
    the un-normalised stream (as LTX-Video's ``attn2``), AdaLN-modulated MLP; gated residuals."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        width = config.width
        self.norm1 = nn.RMSNorm(width, eps=config.norm_eps, elementwise_affine=False)
        self.attn1 = SelfAttention(width, config.num_heads, config.qk_norm_eps)
        self.norm2 = nn.RMSNorm(width, eps=config.norm_eps, elementwise_affine=False)
        self.attn2 = FrameCrossAttention(width, config.num_heads, width, config.qk_norm_eps)
        self.ff = FeedForward(width, config.mlp_ratio)
        # LTX-Video init: randn / sqrt(D), so modulation starts near identity but not exactly at it.
        self.scale_shift_table = nn.Parameter(torch.randn(NUM_MODULATIONS, width) / width**0.5)

    def modulation(self, temb: Tensor) -> Modulation:
        """``temb (B, G, 6 * D)`` (one row per frame) -> per-frame AdaLN values. Row g uses only
        ``temb[:, g]``: frame i's modulation depends only on frame i's timestep (tested)."""
        values = self.scale_shift_table + temb.unflatten(-1, (NUM_MODULATIONS, -1))  # (B, G, 6, D)
        return Modulation(*values.unsqueeze(2).unbind(dim=3))

    def _mlp(self, x: Tensor, mod: Modulation) -> Tensor:
        return x + self.ff(_modulate(self.norm2(x), mod.shift_mlp, mod.scale_mlp)) * mod.gate_mlp

    def forward_reference(self, x_ref: Tensor, temb_ref: Tensor, rotary: Rotary) -> tuple[Tensor, LayerKV]:
        """Reference tokens alone: ``x_ref (B, 1, Lr, D)``, ``temb_ref (B, 1, 6 * D)`` -> new ``x_ref`` and
        this layer's ID-Sink keys/values ``(B, Lr, D)``."""
        mod = self.modulation(temb_ref)
        h = _modulate(self.norm1(x_ref), mod.shift_msa, mod.scale_msa)
        out, kv = self.attn1.forward_reference(h.flatten(1, 2), rotary)
        x_ref = x_ref + out.view_as(x_ref) * mod.gate_msa
        return self._mlp(x_ref, mod), kv

    def forward(
        self,
        x_ref: Tensor | None,
        x: Tensor,
        temb_ref: Tensor | None,
        temb: Tensor,
        audio: Tensor,
        plan: AttentionPlan,
    ) -> tuple[Tensor | None, Tensor]:
        """``x_ref (B, 1, Lr, D)`` or ``None``, ``x (B, F, L, D)``, ``temb_ref (B, 1, 6D)``, ``temb (B, F, 6D)``,
        ``audio (B, F, A, D)`` -> new ``(x_ref, x)``."""
        mod = self.modulation(temb)
        h = _modulate(self.norm1(x), mod.shift_msa, mod.scale_msa)
        h_ref, mod_ref = None, None
        if x_ref is not None:
            assert temb_ref is not None
            mod_ref = self.modulation(temb_ref)
            h_ref = _modulate(self.norm1(x_ref), mod_ref.shift_msa, mod_ref.scale_msa).flatten(1, 2)
        out_ref, out = self.attn1(h_ref, h.flatten(1, 2), plan)
        x = x + out.view_as(x) * mod.gate_msa
        x = x + self.attn2(x, audio)
        x = self._mlp(x, mod)
        if x_ref is not None:
            assert out_ref is not None and mod_ref is not None
            x_ref = self._mlp(x_ref + out_ref.view_as(x_ref) * mod_ref.gate_msa, mod_ref)
        return x_ref, x

    def forward_chunk(
        self, x: Tensor, temb: Tensor, audio: Tensor, window: WindowKV, plan: ChunkPlan
    ) -> tuple[Tensor, LayerKV]:
        """One chunk ``x (B, chunk_frames, L, D)`` reading cached ``window`` -> new ``x`` and the chunk's
        keys/values at this layer."""
        mod = self.modulation(temb)
        h = _modulate(self.norm1(x), mod.shift_msa, mod.scale_msa)
        out, kv = self.attn1.forward_chunk(h.flatten(1, 2), window, plan)
        x = x + out.view_as(x) * mod.gate_msa
        x = x + self.attn2(x, audio)
        return self._mlp(x, mod), kv


@dataclass(frozen=True)
class ChunkOutput:
    """Result of ``DiT.forward_chunk``: the chunk's velocity ``(B, C, chunk_frames, H, W)`` and its
    keys/values at every layer (``num_layers`` entries of ``(B, chunk_frames * H * W, D)``)."""

    velocity: Tensor
    kv: list[LayerKV]


class DiT(nn.Module):
    """Audio-to-video latent DiT (module doc). Predicts the rectified-flow velocity ``v = noise - x0``."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.proj_in = nn.Linear(config.latent_channels, width)
        self.time_embed = AdaLNSingle(width, config.timestep_channels, config.timestep_scale)
        self.audio_projection = AudioProjection(config.audio_dim, width)
        # Learned stand-ins for a dropped condition (classifier-free guidance, DESIGN §4.2): a dropped
        # audio group becomes this one token, a dropped reference has this embedding at every position.
        self.null_audio = nn.Parameter(torch.randn(width) / width**0.5)
        self.null_ref = nn.Parameter(torch.randn(width) / width**0.5)
        self.rope = RotaryEmbedding(
            width,
            config.rope_theta,
            config.rope_base_frames,
            config.rope_base_height,
            config.rope_base_width,
            config.rope_time_scale,
            config.rope_space_scale,
        )
        self.transformer_blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.num_layers)])
        self.norm_out = nn.LayerNorm(width, eps=config.norm_eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(NUM_OUTPUT_MODULATIONS, width) / width**0.5)
        self.proj_out = nn.Linear(width, config.latent_channels)

    # --- inputs --------------------------------------------------------------------------------------

    def _check_latents(self, latents: Tensor, name: str) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"{name} must be (B, {self.config.latent_channels}, F, H, W) (DiTConfig.latent_channels), "
                f"got {tuple(latents.shape)}"
            )

    def _tokens(self, latents: Tensor) -> Tensor:
        """``(B, C, F, H, W)`` -> ``(B, F, H * W, D)``, tokens in row-major (h, w) order per frame."""
        return self.proj_in(latents.permute(0, 2, 3, 4, 1).flatten(2, 3))

    def _audio_tokens(
        self, audio: Tensor | None, drop_audio: Tensor | None, batch: int, frames: int
    ) -> Tensor:
        """``(B, F, A, audio_dim)`` -> ``(B, F, A, D)``; ``None`` -> the null token ``(B, F, 1, D)``."""
        if audio is None:
            return self.null_audio.expand(batch, frames, 1, -1)
        if audio.ndim != 4 or audio.shape[:2] != (batch, frames) or audio.shape[-1] != self.config.audio_dim:
            raise ValueError(
                f"audio must be (B={batch}, F={frames}, A, {self.config.audio_dim}) (DiTConfig.audio_dim), "
                f"got {tuple(audio.shape)}"
            )
        tokens = self.audio_projection(audio)
        if drop_audio is not None:
            tokens = torch.where(drop_audio[:, None, None, None], self.null_audio.to(tokens.dtype), tokens)
        return tokens

    def _reference_tokens(self, ref: Tensor, drop_ref: Tensor | None) -> Tensor:
        """``(B, C, 1, H, W)`` -> ``(B, 1, H * W, D)`` (dropped rows -> the null embedding)."""
        self._check_latents(ref, "ref")
        if ref.shape[2] != 1:
            raise ValueError(f"ref must hold one latent frame (B, C, 1, H, W), got {tuple(ref.shape)}")
        tokens = self._tokens(ref)
        if drop_ref is not None:
            tokens = torch.where(drop_ref[:, None, None, None], self.null_ref.to(tokens.dtype), tokens)
        return tokens

    def _reference_modulation(self, batch: int, device: torch.device) -> Tensor:
        """The reference is clean: AdaLN at t = 0 -> ``(B, 1, 6 * D)``."""
        modulation, _ = self.time_embed(torch.zeros(batch, 1, device=device))
        return modulation

    def _ref_rotary(self, height: int, width: int, device: torch.device) -> Rotary:
        times = torch.full((1,), self.config.ref_time_position, device=device)
        return self.rope(grid_coords(times, height, width))

    def _output(self, x: Tensor, embedded: Tensor, height: int, width: int) -> Tensor:
        """``x (B, F, L, D)``, per-frame embedding ``(B, F, D)`` -> velocity ``(B, C, F, H, W)``."""
        values = self.scale_shift_table + embedded.unsqueeze(2)  # (B, F, 2, D)
        shift, scale = values.unsqueeze(2).unbind(dim=3)  # each (B, F, 1, D)
        out = self.proj_out(_modulate(self.norm_out(x), shift, scale))  # (B, F, L, C)
        return out.unflatten(2, (height, width)).permute(0, 4, 1, 2, 3)

    # --- forward passes --------------------------------------------------------------------------------

    def forward(
        self,
        latents: Tensor,
        timesteps: Tensor,
        audio: Tensor | None,
        ref: Tensor | None,
        pattern: AttentionPattern,
        drop_audio: Tensor | None = None,
        drop_ref: Tensor | None = None,
    ) -> Tensor:
        """Velocity of a clip.

        Args:
            latents: noisy latents ``(B, C, F, H, W)``.
            timesteps: flow time of every latent frame ``(B, F)`` in [0, 1] (0 clean, 1 noise).
            audio: audio tokens per latent frame ``(B, F, A, audio_dim)``; ``None`` = dropped for all.
            ref: reference latent ``(B, C, 1, H, W)`` (same H, W); ``None`` = no reference tokens at all
                (LTX-Video parity, no-reference ablation); to *drop* it for guidance use ``drop_ref``.
            pattern: self-attention pattern (bidirectional teacher, block-causal student).
            drop_audio, drop_ref: ``(B,)`` bool, rows whose condition is replaced by the null token.

        Returns:
            velocity ``(B, C, F, H, W)``, same dtype as the model.
        """
        self._check_latents(latents, "latents")
        batch, _, frames, height, width = latents.shape
        if timesteps.shape != (batch, frames):
            raise ValueError(
                f"timesteps must be (B={batch}, F={frames}), one per latent frame, got {tuple(timesteps.shape)}"
            )
        if ref is not None and ref.shape[3:] != latents.shape[3:]:
            raise ValueError(
                f"ref grid {tuple(ref.shape[3:])} differs from the latents' {tuple(latents.shape[3:])}"
            )
        x = self._tokens(latents)
        temb, embedded = self.time_embed(timesteps)
        audio_tokens = self._audio_tokens(audio, drop_audio, batch, frames)
        x_ref, temb_ref = None, None
        if ref is not None:
            x_ref = self._reference_tokens(ref, drop_ref)
            temb_ref = self._reference_modulation(batch, latents.device)
        plan = build_attention_plan(
            pattern,
            frames,
            height,
            width,
            ref is not None,
            self.rope,
            self.config.ref_time_position,
            latents.device,
        )
        for block in self.transformer_blocks:
            if self.config.activation_checkpointing and torch.is_grad_enabled():
                x_ref, x = checkpoint(
                    block, x_ref, x, temb_ref, temb, audio_tokens, plan, use_reentrant=False
                )
            else:
                x_ref, x = block(x_ref, x, temb_ref, temb, audio_tokens, plan)
        return self._output(x, embedded, height, width)

    def encode_id_sink(self, ref: Tensor, drop_ref: Tensor | None = None) -> list[LayerKV]:
        """Keys/values of the reference tokens at every layer (the ID-Sink), computed once per stream.

        ``ref (B, C, 1, H, W)`` -> ``num_layers`` ``LayerKV`` of ``(B, H * W, D)``, before rotary.
        """
        x_ref = self._reference_tokens(ref, drop_ref)
        temb_ref = self._reference_modulation(ref.shape[0], ref.device)
        rotary = self._ref_rotary(ref.shape[3], ref.shape[4], ref.device)
        sink = []
        for block in self.transformer_blocks:
            x_ref, kv = block.forward_reference(x_ref, temb_ref, rotary)
            sink.append(kv)
        return sink

    def forward_chunk(
        self,
        latents: Tensor,
        timesteps: Tensor,
        audio: Tensor | None,
        windows: Sequence[WindowKV],
        pattern: AttentionPattern,
        drop_audio: Tensor | None = None,
    ) -> ChunkOutput:
        """One chunk of a stream, its self-attention reading cached keys/values.

        Args:
            latents: the chunk ``(B, C, pattern.chunk_frames, H, W)``.
            timesteps: ``(B, chunk_frames)`` in [0, 1].
            audio: ``(B, chunk_frames, A, audio_dim)`` or ``None`` (dropped).
            windows: one ``WindowKV`` per layer (ID-Sink + up to ``pattern.window`` context chunks).
            pattern: a ``block_causal`` pattern (gives the window length and chunk size).
            drop_audio: ``(B,)`` bool or ``None``.

        Returns:
            ``ChunkOutput``: velocity ``(B, C, chunk_frames, H, W)`` and the chunk's per-layer keys/values.
        """
        self._check_latents(latents, "latents")
        batch, _, frames, height, width = latents.shape
        if frames != pattern.chunk_frames:
            raise ValueError(
                f"a chunk holds AttentionPattern.chunk_frames={pattern.chunk_frames} latent frames, got {frames}"
            )
        if len(windows) != len(self.transformer_blocks):
            raise ValueError(
                f"give one WindowKV per layer ({len(self.transformer_blocks)}), got {len(windows)}"
            )
        first = windows[0]
        plan = first.chunk_plan(pattern, height, width, self.rope, self.config.ref_time_position, latents.device)
        x = self._tokens(latents)
        temb, embedded = self.time_embed(timesteps)
        audio_tokens = self._audio_tokens(audio, drop_audio, batch, frames)
        kv = []
        for block, window in zip(self.transformer_blocks, windows, strict=True):
            x, layer_kv = block.forward_chunk(x, temb, audio_tokens, window, plan)
            kv.append(layer_kv)
        return ChunkOutput(self._output(x, embedded, height, width), kv)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device: no memory is touched)."""
    return sum(p.numel() for p in module.parameters())
