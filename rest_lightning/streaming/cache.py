"""`IDContextCache`: the per-layer key/value cache of a streaming DiT (REST's ID-Context Cache, DESIGN §5).

Every self-attention layer keeps

- the **ID-Sink**: keys/values of the reference tokens, written once per stream (``set_id_sink``) and
  never evicted;
- the **Context-Cache**: keys/values of the last ``window`` (W) generated chunks, written after each
  chunk's clean pass (``write``), the oldest evicted when a new one arrives.

Keys are stored *before* rotary (what ``DiT.forward_chunk`` returns): positions are applied by the DiT
when it reads a window, at the window's slots, so they stay bounded however long the stream runs.

Memory layout. All buffers are allocated once, in ``__init__``, as non-persistent buffers:
``sink_keys/sink_values (num_layers, B, Lr, D)`` and ``ring_keys/ring_values (num_layers, B, 2 W Lc, D)``.
The ring is *mirrored*: chunk number n is written at slot ``n mod W`` and again at slot ``n mod W + W``,
so the last ``k <= W`` chunks, oldest first, are always the contiguous slots ``[s, s + k)`` with
``s = (n + 1 - k) mod W``: ``read`` returns views, never a copy or a concatenation, and ``write`` costs
two copies of one chunk. The price is twice the context's bytes (the sink is stored once); a ring of W
slots would need a gather (a copy of the whole context) on every read, i.e. on every denoising step.

Switches (the paper's ablations, DESIGN §4.3): ``use_id_sink=False`` reads no sink (the stream runs as if
there were no reference); ``use_context_cache=False`` keeps no chunks, so every chunk sees only itself
(and the sink). Disabled parts allocate nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rest_lightning.models.attention import LayerKV, WindowKV

MIRROR = 2  # each chunk is stored twice in the ring (module doc)


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
    """ID-Sink + mirrored ring of the last W chunks, per layer (module doc).

    Life cycle of one stream::

        cache.reset()                      # forget the previous stream (buffers are kept)
        cache.set_id_sink(dit.encode_id_sink(ref))
        for each chunk:
            windows = cache.read()         # one WindowKV per layer, oldest context chunk first
            ... denoise with dit.forward_chunk(..., windows, pattern) ...
            cache.write(dit.forward_chunk(clean, zeros, ..., cache.read(), pattern).kv)

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
        sink_shape = (shape.num_layers, shape.batch, shape.sink_tokens if config.use_id_sink else 0, shape.width)
        ring_tokens = MIRROR * config.capacity * shape.chunk_tokens
        ring_shape = (shape.num_layers, shape.batch, ring_tokens, shape.width)
        # Non-persistent: a cache is per-stream state, never part of a checkpoint.
        self.register_buffer("sink_keys", torch.zeros(sink_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("sink_values", torch.zeros(sink_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("ring_keys", torch.zeros(ring_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("ring_values", torch.zeros(ring_shape, dtype=dtype, device=device), persistent=False)
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
        """Bytes of every buffer the cache holds (allocated once: constant over a stream)."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self.buffers())

    # --- verbs --------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the sink and the context (a new stream); the buffers are kept and reused."""
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
            self.sink_values[layer].copy_(kv.values)
        self._has_sink = True

    def read(self) -> list[WindowKV]:
        """What the next chunk attends to besides itself, one ``WindowKV`` per layer: the sink
        ``(B, Lr, D)`` (or ``None``) and the held context chunks ``(B, k * Lc, D)`` oldest first (or
        ``None``). Views into the buffers: valid until the next ``write`` or ``reset``."""
        count = self._num_context_chunks
        start_token = self._oldest_slot() * self.shape.chunk_tokens
        stop_token = start_token + count * self.shape.chunk_tokens
        windows = []
        for layer in range(self.shape.num_layers):
            sink = LayerKV(self.sink_keys[layer], self.sink_values[layer]) if self._has_sink else None
            context = None
            if count:
                context = LayerKV(
                    self.ring_keys[layer, :, start_token:stop_token],
                    self.ring_values[layer, :, start_token:stop_token],
                )
            windows.append(WindowKV(sink=sink, context=context, num_context_chunks=count))
        return windows

    def write(self, kv: Sequence[LayerKV]) -> None:
        """Append a generated chunk's keys/values (one ``LayerKV`` of ``(B, Lc, D)`` per layer, from the
        clean pass), evicting the oldest chunk when W are held. A no-op for the chunks' content when the
        context is switched off (the stream position still advances)."""
        self._check_layers(kv, "write")
        capacity = self.config.capacity
        if capacity:
            if self._num_context_chunks == capacity:
                self.evict()
            slot = self._chunks_written % capacity
            lc = self.shape.chunk_tokens
            for layer, layer_kv in enumerate(kv):
                self._check_tokens(layer_kv, lc, "chunk")
                for mirror in range(MIRROR):
                    begin = (slot + mirror * capacity) * lc
                    self.ring_keys[layer, :, begin : begin + lc].copy_(layer_kv.keys)
                    self.ring_values[layer, :, begin : begin + lc].copy_(layer_kv.values)
            self._num_context_chunks += 1
        self._chunks_written += 1

    def evict(self) -> None:
        """Drop the oldest held chunk (its slots are overwritten by a later ``write``). The sink is
        never evicted."""
        if self._num_context_chunks == 0:
            raise ValueError("IDContextCache.evict: the Context-Cache holds no chunk")
        self._num_context_chunks -= 1

    # --- helpers -------------------------------------------------------------------------------------

    def _oldest_slot(self) -> int:
        """Ring slot of the oldest held chunk (mirrored layout: slots ``[s, s + count)`` are in order)."""
        capacity = self.config.capacity
        if capacity == 0:
            return 0
        return (self._chunks_written - self._num_context_chunks) % capacity

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
