"""Attention of the DiT: who sees whom (``AttentionPattern``), where each token sits (``AttentionPlan``,
``ChunkPlan``) and the layers (``SelfAttention``, ``FrameCrossAttention``) in LTX-Video's layout.

Self-attention never builds a token-by-token mask for a whole clip:

- bidirectional (teacher): reference queries attend to the reference keys; video queries attend to
  ``[reference, all video]``. Two ``scaled_dot_product_attention`` calls, no mask, so fused kernels
  apply.
- block-causal with window W (student): the video keys of every chunk's window ``[chunks c-W .. c]``
  are gathered into a ``(B, num_chunks, S * chunk_tokens, D)`` tensor, ``S = min(W + 1, num_chunks)``,
  and rotated at their *window* positions; each chunk's queries attend to ``[reference, its window]``
  with a key-padding mask of ``num_chunks * (ref_tokens + S * chunk_tokens)`` booleans. Memory: the
  gathered keys and values are ``S`` times the clip's keys and values (per layer, freed after it); a
  dense mask would be ``(ref + video tokens)^2`` booleans and would not express window positions. The
  compute is the windowed one, not the full clip's.
- one chunk with cached context (streaming): queries of the chunk attend to ``[ID-Sink, context
  chunks, itself]`` read from a ``WindowKV``; keys arrive before rotary and are rotated here, at read
  time, at their window positions (``ChunkPlan``), so a cache never stores a position. A window from
  an ``IDContextCache`` carries ``WindowBuffers``: preallocated operands laid out ``[sink, context,
  chunk]``, values already in place, so outside autograd the layer rotates the keys *into* them and
  writes the chunk's own keys/values into their last slot, with no concatenation and no allocation
  that grows with the window; its ``ChunkPlan`` comes from the cache's ``ChunkPlans`` (built once per
  context length). Under autograd (the student's exit step) the layer rotates and concatenates into
  new tensors, since backward needs its operands kept and the buffers are shared and rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rest_lightning.models.rope import PAIR, Rotary, RotaryEmbedding, grid_coords

PatternKind = Literal["bidirectional", "block_causal"]
PATTERN_KINDS: tuple[str, ...] = ("bidirectional", "block_causal")


@dataclass(frozen=True)
class AttentionPattern:
    """Which video frames a frame's queries see in self-attention (the reference is always seen by
    video queries; reference queries see only the reference, in every pattern).

    - ``bidirectional``: every frame sees every frame of the clip (the teacher, DESIGN §4.2).
    - ``block_causal``: frames are grouped into chunks of ``chunk_frames`` latent frames; chunk c sees
      chunks ``max(0, c - window) .. c`` (the student, DESIGN §4.3), bidirectionally inside a chunk.

    Fields:
        kind: ``"bidirectional"`` or ``"block_causal"``.
        window: W, previous chunks a chunk sees (the Context-Cache length; DESIGN §3 default 4 is a
            design choice, REST does not publish it). Ignored by ``bidirectional``.
        chunk_frames: latent frames per chunk (DESIGN §3: one latent frame = 8 video frames, design choice).
    """

    kind: PatternKind = "bidirectional"
    window: int = 4  # design choice (DESIGN §3): Context-Cache of 4 chunks
    chunk_frames: int = 1  # design choice (DESIGN §3): chunk = 1 latent frame

    def __post_init__(self) -> None:
        if self.kind not in PATTERN_KINDS:
            raise ValueError(f"AttentionPattern.kind={self.kind!r} is not one of {', '.join(PATTERN_KINDS)}")
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"AttentionPattern.window={self.window!r}: expected an int >= 0 (chunks)")
        if not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
            raise ValueError(f"AttentionPattern.chunk_frames={self.chunk_frames!r}: expected an int >= 1")

    @classmethod
    def bidirectional(cls) -> AttentionPattern:
        return cls(kind="bidirectional")

    @classmethod
    def block_causal(cls, window: int, chunk_frames: int = 1) -> AttentionPattern:
        return cls(kind="block_causal", window=window, chunk_frames=chunk_frames)

    @property
    def is_causal(self) -> bool:
        return self.kind == "block_causal"

    def num_chunks(self, num_frames: int) -> int:
        """Chunks in a clip of ``num_frames`` latent frames (must be a multiple of ``chunk_frames``)."""
        if num_frames < 1 or num_frames % self.chunk_frames:
            raise ValueError(
                f"a clip of {num_frames} latent frames does not split into chunks of "
                f"AttentionPattern.chunk_frames={self.chunk_frames}; use a multiple of it"
            )
        return num_frames // self.chunk_frames

    def window_start(self, chunk: int) -> int:
        """First chunk of ``chunk``'s window: the chunk its window position 0 holds."""
        return max(0, chunk - self.window) if self.is_causal else 0

    def visible_frames(self, num_frames: int) -> Tensor:
        """``(F, F)`` bool: ``[i, j]`` is True when frame i's queries see frame j's keys."""
        if not self.is_causal:
            return torch.ones(num_frames, num_frames, dtype=torch.bool)
        chunk = torch.arange(num_frames) // self.chunk_frames
        self.num_chunks(num_frames)
        distance = chunk[:, None] - chunk[None, :]
        return (distance >= 0) & (distance <= self.window)

    def dense_mask(self, num_frames: int, tokens_per_frame: int, ref_tokens: int) -> Tensor:
        """Token-level mask over ``[reference, video]`` of shape ``(Nr + Nv, Nr + Nv)`` bool (True = may
        attend). Memory ``(Nr + Nv)^2`` bytes: for tests and small clips, never built by the model."""
        frames = self.visible_frames(num_frames).repeat_interleave(tokens_per_frame, 0)
        frames = frames.repeat_interleave(tokens_per_frame, 1)
        total = ref_tokens + frames.shape[0]
        mask = torch.zeros(total, total, dtype=torch.bool)
        mask[:ref_tokens, :ref_tokens] = True
        mask[ref_tokens:, :ref_tokens] = True
        mask[ref_tokens:, ref_tokens:] = frames
        return mask


@dataclass(frozen=True)
class LayerKV:
    """Keys and values of a set of tokens at one layer, after QK-norm and *before* rotary.

    Fields:
        keys, values: ``(B, N, D)``.
    """

    keys: Tensor
    values: Tensor


@dataclass(frozen=True)
class WindowBuffers:
    """Preallocated attention operands of one layer's window, laid out ``[sink, context, chunk]`` (given
    by ``IDContextCache.read``; module doc). ``Ns`` = sink tokens (0 without a sink), ``k`` = context chunks.

    Fields:
        keys: ``(B, Ns + (k + 1) * Lc, D)``, rewritten by every call with the rotated keys (one buffer
            shared by all layers of a cache: a layer's rotated keys are dead once its attention ran).
        values: ``(B, Ns + (k + 1) * Lc, D)``: the sink's and the context's values in place (the window's
            ``sink.values`` / ``context.values`` are views of it), the chunk's own values written last.
        sink_keys, context_keys, chunk_keys: the parts of ``keys`` (``None`` where the part is empty).
        chunk_values: the last ``Lc`` rows of ``values``.
        work: float32 ``(1 or 2, B, max(Ns, k * Lc, Lc) or more, D)``: rotation scratch (``rotate_into``).
        plans: the cache's ``ChunkPlans`` (rotary tables built once per context length).
    """

    keys: Tensor
    values: Tensor
    sink_keys: Tensor | None
    context_keys: Tensor | None
    chunk_keys: Tensor
    chunk_values: Tensor
    work: Tensor
    plans: ChunkPlans


@dataclass(frozen=True)
class WindowKV:
    """What one chunk reads at one layer besides its own keys/values: the ID-Sink (reference tokens,
    ``None`` when the model runs without a reference) and the Context-Cache chunks, oldest first.

    Fields:
        sink: reference keys/values ``(B, Lr, D)`` or ``None``.
        context: keys/values of ``num_context_chunks`` chunks, ``(B, num_context_chunks * Lc, D)``, oldest
            first; ``None`` exactly when ``num_context_chunks == 0`` (the first chunk of a stream).
        num_context_chunks: chunks in ``context`` (0 .. W).
        buffers: preallocated operands (a cache's window) or ``None`` (rotate and concatenate anew).
    """

    sink: LayerKV | None
    context: LayerKV | None
    num_context_chunks: int
    buffers: WindowBuffers | None = None

    def __post_init__(self) -> None:
        if (self.context is None) != (self.num_context_chunks == 0):
            raise ValueError(
                f"WindowKV.context must be None exactly when num_context_chunks == 0, got "
                f"num_context_chunks={self.num_context_chunks} and context={'None' if self.context is None else 'set'}"
            )

    def chunk_plan(
        self,
        pattern: AttentionPattern,
        height: int,
        width: int,
        rope: RotaryEmbedding,
        ref_time_position: float,
        device: torch.device,
    ) -> ChunkPlan:
        """The ``ChunkPlan`` of a chunk reading this window: from the cache's ``ChunkPlans`` when the window
        has buffers (no tables rebuilt per call), else built (``build_chunk_plan``)."""
        args = (pattern, self.num_context_chunks, height, width, self.sink is not None, rope, ref_time_position, device)
        if self.buffers is not None:
            return self.buffers.plans.get(*args)
        return build_chunk_plan(*args)


@dataclass(frozen=True)
class AttentionPlan:
    """Positions and gather indices for one forward over a clip, built once and shared by all layers.

    Fields:
        pattern: the pattern it realises.
        num_chunks, chunk_tokens: clip layout (``chunk_tokens = chunk_frames * H * W``).
        ref_rotary: reference tokens at the ID-Sink time position, ``(Lr, D)``; ``None`` without reference.
        query_rotary: bidirectional ``(Nv, D)``; block-causal ``(num_chunks, Lc, D)`` (each chunk at
            its slot in its own window).
        key_rotary: bidirectional ``(Nv, D)``; block-causal ``(S, Lc, D)`` per window slot.
        window_index: block-causal ``(num_chunks, S)`` long: the chunk slot s of chunk c's window holds.
        key_mask: block-causal ``(num_chunks, Lr + S * Lc)`` bool (valid keys), or ``None`` if all valid.
    """

    pattern: AttentionPattern
    num_chunks: int
    chunk_tokens: int
    ref_rotary: Rotary | None
    query_rotary: Rotary
    key_rotary: Rotary
    window_index: Tensor | None
    key_mask: Tensor | None


@dataclass(frozen=True)
class ChunkPlan:
    """Positions for one chunk that reads cached context: context chunk k at window slot k, the chunk
    itself at slot ``num_context_chunks``, the sink at the ID-Sink time position.

    Fields:
        query_rotary: ``(Lc, D)``, also used for the chunk's own keys.
        context_rotary: ``(num_context_chunks * Lc, D)``.
        sink_rotary: ``(Lr, D)`` or ``None`` without reference.
    """

    query_rotary: Rotary
    context_rotary: Rotary
    sink_rotary: Rotary | None
    num_context_chunks: int


def _slot_times(slots: Tensor, chunk_frames: int) -> Tensor:
    """Time positions of the frames of chunks at window ``slots`` ``(...,)`` -> ``(..., chunk_frames)``."""
    return slots[..., None] * chunk_frames + torch.arange(chunk_frames, device=slots.device)


def build_attention_plan(
    pattern: AttentionPattern,
    num_frames: int,
    height: int,
    width: int,
    has_ref: bool,
    rope: RotaryEmbedding,
    ref_time_position: float,
    device: torch.device,
) -> AttentionPlan:
    """Plan a forward over ``num_frames`` latent frames of ``height x width`` tokens (see module doc)."""
    num_chunks = pattern.num_chunks(num_frames)
    chunk_tokens = pattern.chunk_frames * height * width
    ref_rotary = None
    if has_ref:
        ref_rotary = rope(grid_coords(torch.full((1,), ref_time_position, device=device), height, width))
    if not pattern.is_causal:
        # The window is the whole clip: frame f sits at time f.
        frames = rope(grid_coords(torch.arange(num_frames, device=device), height, width))
        return AttentionPlan(pattern, num_chunks, chunk_tokens, ref_rotary, frames, frames, None, None)

    slots = min(pattern.window + 1, num_chunks)
    chunks = torch.arange(num_chunks, device=device)
    starts = (chunks - pattern.window).clamp(min=0)  # window_start of every chunk
    slot_ids = torch.arange(slots, device=device)
    window_index = (starts[:, None] + slot_ids[None, :]).clamp(max=num_chunks - 1)
    valid = slot_ids[None, :] <= (chunks - starts)[:, None]  # (num_chunks, S)
    query_times = _slot_times(chunks - starts, pattern.chunk_frames)  # (num_chunks, chunk_frames)
    query_rotary = rope(grid_coords(query_times, height, width))  # (num_chunks, Lc, D)
    key_rotary = rope(grid_coords(_slot_times(slot_ids, pattern.chunk_frames), height, width))  # (S, Lc, D)
    key_mask = None
    if not bool(valid.all()):
        ref_tokens = height * width if has_ref else 0
        video_valid = valid.repeat_interleave(chunk_tokens, dim=1)
        key_mask = torch.cat(
            [torch.ones(num_chunks, ref_tokens, dtype=torch.bool, device=device), video_valid], 1
        )
    return AttentionPlan(
        pattern, num_chunks, chunk_tokens, ref_rotary, query_rotary, key_rotary, window_index, key_mask
    )


@dataclass(frozen=True)
class WindowRotary:
    """Rotary tables of every position a chunk of a ``block_causal`` window can read: window slots
    ``0 .. W`` (``slots``, ``((W + 1) * Lc, D)``) and the ID-Sink (``sink``, ``(Lr, D)`` or ``None``). A
    ``ChunkPlan`` for k context chunks is a pair of slices of ``slots``: rows ``[0, k Lc)`` for the context,
    ``[k Lc, (k + 1) Lc)`` for the chunk itself. Built once per window by ``ChunkPlans``, per call otherwise;
    the same computation either way, so both give the same bits."""

    slots: Rotary
    sink: Rotary | None
    chunk_tokens: int

    def plan(self, num_context_chunks: int) -> ChunkPlan:
        lc, k = self.chunk_tokens, num_context_chunks

        def rows(begin: int, end: int) -> Rotary:
            return Rotary(self.slots.cos[begin:end], self.slots.sin[begin:end])

        return ChunkPlan(rows(k * lc, (k + 1) * lc), rows(0, k * lc), self.sink, k)

    def nbytes(self) -> int:
        tables = [self.slots] + ([self.sink] if self.sink is not None else [])
        return sum(t.numel() * t.element_size() for r in tables for t in (r.cos, r.sin))


def build_window_rotary(
    pattern: AttentionPattern,
    height: int,
    width: int,
    has_sink: bool,
    rope: RotaryEmbedding,
    ref_time_position: float,
    device: torch.device,
) -> WindowRotary:
    """The ``WindowRotary`` of a ``block_causal`` pattern on an ``height x width`` latent grid."""
    if not pattern.is_causal:
        raise ValueError(
            "a chunk with cached context needs AttentionPattern(kind='block_causal'); the bidirectional "
            "teacher sees future frames, which a stream does not have"
        )
    slots = torch.arange(pattern.window + 1, device=device)
    slot_rotary = rope(grid_coords(_slot_times(slots, pattern.chunk_frames).flatten(), height, width))
    sink_rotary = None
    if has_sink:
        sink_rotary = rope(grid_coords(torch.full((1,), ref_time_position, device=device), height, width))
    return WindowRotary(slot_rotary, sink_rotary, pattern.chunk_frames * height * width)


def _check_context_fits(pattern: AttentionPattern, num_context_chunks: int) -> None:
    if not 0 <= num_context_chunks <= pattern.window:
        raise ValueError(
            f"{num_context_chunks} context chunks do not fit AttentionPattern.window={pattern.window}; "
            "evict the oldest before reading"
        )


def build_chunk_plan(
    pattern: AttentionPattern,
    num_context_chunks: int,
    height: int,
    width: int,
    has_sink: bool,
    rope: RotaryEmbedding,
    ref_time_position: float,
    device: torch.device,
) -> ChunkPlan:
    """Plan one chunk reading ``num_context_chunks`` cached chunks (``0 .. pattern.window``)."""
    window_rotary = build_window_rotary(pattern, height, width, has_sink, rope, ref_time_position, device)
    _check_context_fits(pattern, num_context_chunks)
    return window_rotary.plan(num_context_chunks)


class ChunkPlans:
    """The ``WindowRotary`` of each window a cache is read with, built once and kept (a cache holds one
    ``ChunkPlans``): a stream then builds no rotary table per call (it would allocate ``(W + 1) Lc + Lr``
    rows of cos and sin each time). Plans are slices of it, equal bit for bit to ``build_chunk_plan``'s."""

    def __init__(self) -> None:
        self._tables: dict[tuple, WindowRotary] = {}

    def get(
        self,
        pattern: AttentionPattern,
        num_context_chunks: int,
        height: int,
        width: int,
        has_sink: bool,
        rope: RotaryEmbedding,
        ref_time_position: float,
        device: torch.device,
    ) -> ChunkPlan:
        # The rope module is keyed by identity: its scales are fixed at construction.
        key = (pattern, height, width, has_sink, id(rope), ref_time_position, str(device))
        tables = self._tables.get(key)
        if tables is None:
            tables = build_window_rotary(pattern, height, width, has_sink, rope, ref_time_position, device)
            self._tables[key] = tables
        _check_context_fits(pattern, num_context_chunks)
        return tables.plan(num_context_chunks)

    def nbytes(self) -> int:
        """Bytes of the tables built so far (one ``WindowRotary`` per window and resolution read)."""
        return sum(tables.nbytes() for tables in self._tables.values())


def rotate_into(rotary: Rotary, x: Tensor, out: Tensor, work: Tensor) -> None:
    """``out[...] = rotary.apply(x)`` for ``x, out (B, N, D)``, bit for bit (the same float32 products and
    sum), written into ``out`` through ``work`` instead of new tensors. ``work``: float32 ``(1, B, >= N, D)``
    when ``out`` is float32 (it is the accumulator then), ``(2, B, >= N, D)`` otherwise."""
    tokens = x.shape[-2]
    rotated = work[0, :, :tokens]
    x_float = out if out.dtype == torch.float32 else work[1, :, :tokens]
    x_float.copy_(x)  # x.float()
    # rotated * sin with rotated = (-x_odd, x_even) interleaved; (-a) * b == -(a * b) exactly
    torch.mul(x_float[..., 1::PAIR], rotary.sin[..., 0::PAIR], out=rotated[..., 0::PAIR])
    rotated[..., 0::PAIR].neg_()
    torch.mul(x_float[..., 0::PAIR], rotary.sin[..., 1::PAIR], out=rotated[..., 1::PAIR])
    x_float.mul_(rotary.cos).add_(rotated)
    if x_float is not out:
        out.copy_(x_float)  # .to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with LTX-Video's parameters: ``to_q/to_k/to_v/to_out`` and an RMSNorm over the
    whole width on queries and keys (``norm_q/norm_k``, "rms_norm_across_heads").

    Args:
        width: D, query and output channels.
        num_heads: heads; ``width`` must divide by it.
        context_width: channels of the tokens keys/values come from.
        qk_norm_eps: epsilon of the QK RMSNorm.
    """

    def __init__(self, width: int, num_heads: int, context_width: int, qk_norm_eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(context_width, width)
        self.to_v = nn.Linear(context_width, width)
        self.to_out = nn.Linear(width, width)
        self.norm_q = nn.RMSNorm(width, eps=qk_norm_eps, elementwise_affine=True)
        self.norm_k = nn.RMSNorm(width, eps=qk_norm_eps, elementwise_affine=True)

    def queries(self, x: Tensor) -> Tensor:
        """``(..., N, D)`` -> normalised queries ``(..., N, D)`` before rotary."""
        return self.norm_q(self.to_q(x))

    def keys_values(self, x: Tensor) -> LayerKV:
        """``(..., N, Dc)`` -> normalised keys and values ``(..., N, D)``, keys before rotary."""
        return LayerKV(self.norm_k(self.to_k(x)), self.to_v(x))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Attention of ``q (G, Nq, D)`` over ``k, v (G, Nk, D)`` -> ``(G, Nq, D)`` after ``to_out``.

        ``key_mask``: ``(G, Nk)`` bool (True = may attend) or ``None``.
        """
        heads_q = q.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (G, heads, Nq, head_dim)
        heads_k = k.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        heads_v = v.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(heads_q, heads_k, heads_v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).flatten(-2))


class SelfAttention(Attention):
    """Self-attention over ``[reference, video]`` tokens following an ``AttentionPlan`` (module doc)."""

    def __init__(self, width: int, num_heads: int, qk_norm_eps: float) -> None:
        super().__init__(width, num_heads, width, qk_norm_eps)

    def forward_reference(self, x_ref: Tensor, rotary: Rotary) -> tuple[Tensor, LayerKV]:
        """Reference tokens attend to themselves only. ``x_ref (B, Lr, D)`` -> output ``(B, Lr, D)`` and
        their keys/values (what the ID-Sink caches at this layer)."""
        kv = self.keys_values(x_ref)
        q = rotary.apply(self.queries(x_ref))
        return self.attend(q, rotary.apply(kv.keys), kv.values), kv

    def forward(
        self, x_ref: Tensor | None, x_video: Tensor, plan: AttentionPlan
    ) -> tuple[Tensor | None, Tensor]:
        """``x_ref (B, Lr, D)`` or ``None``, ``x_video (B, Nv, D)`` -> outputs of the same shapes."""
        out_ref, ref_keys, ref_values = None, None, None
        if x_ref is not None:
            assert plan.ref_rotary is not None
            out_ref, ref_kv = self.forward_reference(x_ref, plan.ref_rotary)
            ref_keys, ref_values = plan.ref_rotary.apply(ref_kv.keys), ref_kv.values
        q = self.queries(x_video)
        kv = self.keys_values(x_video)
        if not plan.pattern.is_causal:
            q, k, v = plan.query_rotary.apply(q), plan.key_rotary.apply(kv.keys), kv.values
            if ref_keys is not None:
                k, v = torch.cat([ref_keys, k], dim=1), torch.cat([ref_values, v], dim=1)
            return out_ref, self.attend(q, k, v)
        return out_ref, self._block_causal(q, kv, ref_keys, ref_values, plan)

    def _block_causal(
        self, q: Tensor, kv: LayerKV, ref_keys: Tensor | None, ref_values: Tensor | None, plan: AttentionPlan
    ) -> Tensor:
        batch, _, width = q.shape
        num_chunks, chunk_tokens = plan.num_chunks, plan.chunk_tokens
        q = plan.query_rotary.apply(q.view(batch, num_chunks, chunk_tokens, width))
        # (B, num_chunks, S, Lc, D): slot s of chunk c's window, rotated at the slot's window position.
        k = plan.key_rotary.apply(kv.keys.view(batch, num_chunks, chunk_tokens, width)[:, plan.window_index])
        v = kv.values.view(batch, num_chunks, chunk_tokens, width)[:, plan.window_index]
        k, v = k.flatten(2, 3), v.flatten(2, 3)  # (B, num_chunks, S * Lc, D)
        if ref_keys is not None:
            k = torch.cat([ref_keys[:, None].expand(-1, num_chunks, -1, -1), k], dim=2)
            v = torch.cat([ref_values[:, None].expand(-1, num_chunks, -1, -1), v], dim=2)
        mask = None
        if plan.key_mask is not None:
            mask = plan.key_mask[None].expand(batch, -1, -1).flatten(0, 1)
        out = self.attend(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), mask)
        return out.view(batch, num_chunks * chunk_tokens, width)

    def forward_chunk(self, x_chunk: Tensor, window: WindowKV, plan: ChunkPlan) -> tuple[Tensor, LayerKV]:
        """One chunk ``x_chunk (B, Lc, D)`` attends to ``[sink, context, itself]`` -> output ``(B, Lc, D)``
        and the chunk's own keys/values (before rotary: what the Context-Cache stores)."""
        if window.num_context_chunks != plan.num_context_chunks:
            raise ValueError(
                f"WindowKV holds {window.num_context_chunks} context chunks but the ChunkPlan was built "
                f"for {plan.num_context_chunks}"
            )
        if (window.sink is None) != (plan.sink_rotary is None):
            raise ValueError("WindowKV.sink and the ChunkPlan disagree on whether there is an ID-Sink")
        if window.context is not None:
            expected = window.num_context_chunks * x_chunk.shape[1]
            if window.context.keys.shape[1] != expected:
                raise ValueError(
                    f"WindowKV.context holds {window.context.keys.shape[1]} tokens; {window.num_context_chunks} "
                    f"chunks of {x_chunk.shape[1]} tokens need {expected}"
                )
        own = self.keys_values(x_chunk)
        q = plan.query_rotary.apply(self.queries(x_chunk))
        if window.buffers is not None and not torch.is_grad_enabled():
            return self._attend_in_buffers(q, own, window, window.buffers, plan), own
        keys, values = [plan.query_rotary.apply(own.keys)], [own.values]
        if window.context is not None:
            keys.insert(0, plan.context_rotary.apply(window.context.keys))
            values.insert(0, window.context.values)
        if window.sink is not None:
            assert plan.sink_rotary is not None
            keys.insert(0, plan.sink_rotary.apply(window.sink.keys))
            values.insert(0, window.sink.values)
        return self.attend(q, torch.cat(keys, dim=1), torch.cat(values, dim=1)), own

    def _attend_in_buffers(
        self, q: Tensor, own: LayerKV, window: WindowKV, buffers: WindowBuffers, plan: ChunkPlan
    ) -> Tensor:
        """``forward_chunk`` on a cache's window: rotate ``[sink, context, chunk]`` keys into ``buffers.keys``,
        put the chunk's values after the cached ones, attend over both (no concatenation)."""
        if window.sink is not None:
            assert plan.sink_rotary is not None and buffers.sink_keys is not None
            rotate_into(plan.sink_rotary, window.sink.keys, buffers.sink_keys, buffers.work)
        if window.context is not None:
            assert buffers.context_keys is not None
            rotate_into(plan.context_rotary, window.context.keys, buffers.context_keys, buffers.work)
        rotate_into(plan.query_rotary, own.keys, buffers.chunk_keys, buffers.work)
        buffers.chunk_values.copy_(own.values)
        return self.attend(q, buffers.keys, buffers.values)


class FrameCrossAttention(Attention):
    """Frame-level cross-attention (the slot LTX-Video uses for text): latent frame i's tokens attend
    only to frame i's audio tokens. No rotary (as in LTX-Video's ``attn2``)."""

    def forward(self, x: Tensor, audio: Tensor) -> Tensor:
        """``x (B, F, L, D)``, ``audio (B, F, A, D)`` -> ``(B, F, L, D)``."""
        if audio.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"audio tokens for {tuple(audio.shape[:2])} (batch, frames) do not match the video's "
                f"{tuple(x.shape[:2])}: give one group of audio tokens per latent frame"
            )
        q = self.queries(x).flatten(0, 1)  # (B * F, L, D): one attention problem per frame
        kv = self.keys_values(audio.flatten(0, 1))
        return self.attend(q, kv.keys, kv.values).view(x.shape)
