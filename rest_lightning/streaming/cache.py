"""`IDContextCache`: the per-layer key/value cache of a streaming DiT (REST's ID-Context Cache, DESIGN §5).

Every self-attention layer keeps

- the **ID-Sink**: keys/values of the reference tokens, written once per stream (``set_id_sink``) and
  never evicted;
- the **Context-Cache**: keys/values of the last ``window`` (W) generated chunks, written after each
  chunk's clean pass (``write``), the oldest evicted when a new one arrives.

Keys are stored *before* rotary (what ``DiT.forward_chunk`` returns): positions are applied by the DiT
when it reads a window, at the window's slots, so they stay bounded however long the stream runs.

Memory layout. All buffers are allocated once, in ``__init__``, as non-persistent buffers, laid out so
the attention of a chunk reads them without concatenating (``models/attention.py``, ``WindowBuffers``):

- ``sink_keys (num_layers, B, Lr, D)`` and ``context_keys (num_layers, B, W Lc, D)``: keys before rotary,
  the context oldest first;
- ``values (num_layers, B, Lr + W Lc + Lc, D)``: ``[sink, context oldest first, one chunk slot]``, so a
  layer's values ``[sink, context, chunk]`` are one contiguous slice once the chunk's own values are
  written into the slot;
- ``window_keys (B, Lr + (W + 1) Lc, D)``: the rotated keys ``[sink, context, chunk]`` of the layer being
  computed, rewritten by every call (shared by all layers: a layer's rotated keys are dead once its
  attention ran), and ``rotation_work``, float32 scratch of the largest part rotated at once.

The context stays oldest first by shifting: ``evict`` moves the W - 1 younger chunks one slot down
(W - 1 chunk copies, once per chunk) and ``write`` fills the last slot. Per layer that is
``2 Lr + (2 W + 1) Lc`` tokens of keys and values (a mirrored ring read as views held ``2 Lr + 4 W Lc``
and still made every call rotate into new tensors and concatenate them), plus the shared
``Lr + (W + 1) Lc`` and the scratch. The ``ChunkPlans`` (rotary tables, one per context length
0 .. W) are built on first use and kept.

Switches (the paper's ablations, DESIGN §4.3): ``use_id_sink=False`` reads no sink (the stream runs as if
there were no reference); ``use_context_cache=False`` keeps no chunks, so every chunk sees only itself
(and the sink). Disabled parts allocate nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rest_lightning.models.attention import ChunkPlans, LayerKV, WindowBuffers, WindowKV


@dataclass(frozen=True)
class CacheConfig:
    """What an ``IDContextCache`` keeps.

    Fields:
        window: W, chunks kept in the Context-Cache (DESIGN §3: 4 chunks, a design choice; REST does
            not publish it). Must equal the ``AttentionPattern.window`` the student was trained with.
        use_id_sink: keep the reference's keys/values (the ID-Sink); False = the no-ID-Sink ablation.
        use_context_cache: keep the last W chunks; False = the no-Context-Cache ablation.
    """

    window: int = 4  # design choice (DESIGN §3)
    use_id_sink: bool = True
    use_context_cache: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(
                f"CacheConfig.window={self.window!r}: expected an int >= 1 (chunks); to keep no context "
                "set use_context_cache=false"
            )

    @property
    def capacity(self) -> int:
        """Chunks the Context-Cache holds: W, or 0 when the context is switched off."""
        return self.window if self.use_context_cache else 0


@dataclass(frozen=True)
class CacheShape:
    """Sizes of one stream's cache.

    Fields:
        num_layers: self-attention layers of the DiT.
        batch: B, streams generated together.
        sink_tokens: Lr, reference tokens (latent ``H * W``).
        chunk_tokens: Lc, tokens of one chunk (``chunk_frames * H * W``).
        width: D, the model width (keys and values are ``(B, N, D)``).
    """

    num_layers: int
    batch: int
    sink_tokens: int
    chunk_tokens: int
    width: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "batch", "sink_tokens", "chunk_tokens", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CacheShape.{name}={value!r}: expected a positive int")


class IDContextCache(nn.Module):
    """ID-Sink + the last W chunks, oldest first, per layer, in attention-ready buffers (module doc).

    Life cycle of one stream::

        cache.reset()                      # forget the previous stream (buffers are kept)
        cache.set_id_sink(dit.encode_id_sink(ref))
        for each chunk:
            windows = cache.read()         # one WindowKV per layer, oldest context chunk first
            ... denoise with dit.forward_chunk(..., windows, pattern) ...
            cache.write(dit.forward_chunk(clean, zeros, ..., windows, pattern).kv)

    Args:
        config: window and switches.
        shape: layer count and tensor sizes.
        dtype, device: of the buffers (the DiT's).
    """

    def __init__(
        self,
        config: CacheConfig,
        shape: CacheShape,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.shape = shape
        layers, batch, width, lc = shape.num_layers, shape.batch, shape.width, shape.chunk_tokens
        self._sink_tokens = shape.sink_tokens if config.use_id_sink else 0  # Ns, tokens held for the sink
        context_tokens = config.capacity * lc
        window_tokens = self._sink_tokens + context_tokens + lc  # [sink, context, chunk]
        rotated_at_once = max(self._sink_tokens, context_tokens, lc)  # the largest part rotate_into handles
        # float32 buffers accumulate the rotation in place; other dtypes need a float32 accumulator too
        work_planes = 1 if dtype == torch.float32 else 2

        def zeros(*size: int, dtype: torch.dtype = dtype) -> Tensor:
            return torch.zeros(size, dtype=dtype, device=device)

        # Non-persistent: a cache is per-stream state, never part of a checkpoint.
        self.register_buffer("sink_keys", zeros(layers, batch, self._sink_tokens, width), persistent=False)
        self.register_buffer("context_keys", zeros(layers, batch, context_tokens, width), persistent=False)
        self.register_buffer("values", zeros(layers, batch, window_tokens, width), persistent=False)
        self.register_buffer("window_keys", zeros(batch, window_tokens, width), persistent=False)
        self.register_buffer(
            "rotation_work", zeros(work_planes, batch, rotated_at_once, width, dtype=torch.float32), persistent=False
        )
        self._plans = ChunkPlans()
        self._has_sink = False
        self._chunks_written = 0  # chunks written since reset (the stream position)
        self._num_context_chunks = 0  # chunks currently held, 0 .. capacity

    # --- state ------------------------------------------------------------------------------------

    @property
    def has_sink(self) -> bool:
        """Whether ``read`` returns an ID-Sink (set, and not switched off)."""
        return self._has_sink

    @property
    def chunks_written(self) -> int:
        """Chunks written since the last ``reset`` (evicted ones included)."""
        return self._chunks_written

    @property
    def num_context_chunks(self) -> int:
        """Chunks ``read`` returns as context: ``min(chunks_written, capacity)`` minus evictions."""
        return self._num_context_chunks

    def nbytes(self) -> int:
        """Bytes the cache holds: its buffers (allocated once) and the rotary tables of its ``ChunkPlans``
        (built on first use, one per context length, so constant from chunk W + 1 on)."""
        buffers = sum(buffer.numel() * buffer.element_size() for buffer in self.buffers())
        return buffers + self._plans.nbytes()

    # --- verbs --------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the sink and the context (a new stream); the buffers and rotary tables are kept."""
        self._has_sink = False
        self._chunks_written = 0
        self._num_context_chunks = 0

    def set_id_sink(self, sink: Sequence[LayerKV]) -> None:
        """Store the reference's keys/values, one ``LayerKV`` of ``(B, Lr, D)`` per layer (from
        ``DiT.encode_id_sink``). A no-op when the sink is switched off."""
        if not self.config.use_id_sink:
            return
        self._check_layers(sink, "set_id_sink")
        for layer, kv in enumerate(sink):
            self._check_tokens(kv, self.shape.sink_tokens, "ID-Sink")
            self.sink_keys[layer].copy_(kv.keys)
            self.values[layer, :, : self._sink_tokens].copy_(kv.values)
        self._has_sink = True

    def read(self) -> list[WindowKV]:
        """What the next chunk attends to besides itself, one ``WindowKV`` per layer: the sink
        ``(B, Lr, D)`` (or ``None``), the held context chunks ``(B, k * Lc, D)`` oldest first (or
        ``None``) and the ``WindowBuffers`` its attention fills. Views into the buffers: valid until the
        next ``write``, ``evict`` or ``reset``."""
        ns, lc, count = self._sink_tokens, self.shape.chunk_tokens, self._num_context_chunks
        context_end = ns + count * lc  # the chunk's own slot follows the context
        start = 0 if self._has_sink else ns  # an unset sink is not attended to
        stop = context_end + lc
        keys = self.window_keys
        windows = []
        for layer in range(self.shape.num_layers):
            values = self.values[layer]
            sink = LayerKV(self.sink_keys[layer], values[:, :ns]) if self._has_sink else None
            context = None
            if count:
                context = LayerKV(self.context_keys[layer, :, : count * lc], values[:, ns:context_end])
            buffers = WindowBuffers(
                keys=keys[:, start:stop],
                values=values[:, start:stop],
                sink_keys=keys[:, :ns] if self._has_sink else None,
                context_keys=keys[:, ns:context_end] if count else None,
                chunk_keys=keys[:, context_end:stop],
                chunk_values=values[:, context_end:stop],
                work=self.rotation_work,
                plans=self._plans,
            )
            windows.append(WindowKV(sink=sink, context=context, num_context_chunks=count, buffers=buffers))
        return windows

    def write(self, kv: Sequence[LayerKV]) -> None:
        """Append a generated chunk's keys/values (one ``LayerKV`` of ``(B, Lc, D)`` per layer, from the
        clean pass), evicting the oldest chunk when W are held. A no-op for the chunks' content when the
        context is switched off (the stream position still advances)."""
        self._check_layers(kv, "write")
        if self.config.capacity:
            if self._num_context_chunks == self.config.capacity:
                self.evict()
            ns, lc = self._sink_tokens, self.shape.chunk_tokens
            begin = self._num_context_chunks * lc  # the first free slot: the context stays oldest first
            for layer, layer_kv in enumerate(kv):
                self._check_tokens(layer_kv, lc, "chunk")
                self.context_keys[layer, :, begin : begin + lc].copy_(layer_kv.keys)
                self.values[layer, :, ns + begin : ns + begin + lc].copy_(layer_kv.values)
            self._num_context_chunks += 1
        self._chunks_written += 1

    def evict(self) -> None:
        """Drop the oldest held chunk: the younger ones move one slot down (one chunk copy each, all layers
        at once), so the context stays oldest first at the start of its buffers. The sink is never evicted."""
        if self._num_context_chunks == 0:
            raise ValueError("IDContextCache.evict: the Context-Cache holds no chunk")
        ns, lc = self._sink_tokens, self.shape.chunk_tokens
        for slot in range(1, self._num_context_chunks):  # in order: each copy reads a slot not yet overwritten
            keep, to = slice(slot * lc, (slot + 1) * lc), slice((slot - 1) * lc, slot * lc)
            self.context_keys[:, :, to].copy_(self.context_keys[:, :, keep])
            self.values[:, :, ns + to.start : ns + to.stop].copy_(self.values[:, :, ns + keep.start : ns + keep.stop])
        self._num_context_chunks -= 1

    # --- helpers -------------------------------------------------------------------------------------

    def _check_layers(self, kv: Sequence[LayerKV], verb: str) -> None:
        if len(kv) != self.shape.num_layers:
            raise ValueError(
                f"IDContextCache.{verb}: got keys/values of {len(kv)} layers, the cache has "
                f"{self.shape.num_layers} (CacheShape.num_layers = DiTConfig.num_layers)"
            )

    def _check_tokens(self, kv: LayerKV, tokens: int, what: str) -> None:
        expected = (self.shape.batch, tokens, self.shape.width)
        if tuple(kv.keys.shape) != expected or tuple(kv.values.shape) != expected:
            raise ValueError(
                f"IDContextCache: {what} keys/values must be (B, N, D) = {expected}, got "
                f"{tuple(kv.keys.shape)} and {tuple(kv.values.shape)}; was the cache built for this "
                "resolution, batch and chunk size?"
            )
