"""IDContextCache invariants (DESIGN §5, issue 6): the ID-Sink is never evicted, the cache keeps exactly
the last W chunks oldest first, memory is allocated once and does not grow, the switches act."""

from __future__ import annotations

import pytest
import torch

from rest_lightning.models.attention import AttentionPattern, LayerKV, WindowKV, rotate_into
from rest_lightning.models.rope import RotaryEmbedding, grid_coords
from rest_lightning.streaming import CacheConfig, CacheShape, IDContextCache
from rest_lightning.streaming.benchmark import AllocationCounter
from rest_lightning.streaming.rollout import cache_shape

SHAPE = CacheShape(num_layers=3, batch=2, sink_tokens=4, chunk_tokens=6, width=8)


def chunk_kv(index: int, tokens: int = SHAPE.chunk_tokens) -> list[LayerKV]:
    """Keys/values of chunk ``index`` at every layer, distinct per (chunk, layer, keys/values)."""
    g = torch.Generator().manual_seed(1000 + index)
    return [
        LayerKV(torch.randn(SHAPE.batch, tokens, SHAPE.width, generator=g), torch.randn(SHAPE.batch, tokens, SHAPE.width, generator=g))
        for _ in range(SHAPE.num_layers)
    ]


def sink_kv() -> list[LayerKV]:
    return chunk_kv(-1, SHAPE.sink_tokens)


@pytest.mark.parametrize("window", [1, 2, 4])
def test_ring_holds_the_last_w_chunks_oldest_first_and_never_evicts_the_sink(window: int) -> None:
    cache = IDContextCache(CacheConfig(window=window), SHAPE)
    sink = sink_kv()
    cache.set_id_sink(sink)
    written = []
    for n in range(3 * window + 2):
        windows = cache.read()
        expected = written[-window:]
        assert cache.num_context_chunks == len(expected)
        for layer, view in enumerate(windows):
            assert view.num_context_chunks == len(expected)
            torch.testing.assert_close(view.sink.keys, sink[layer].keys, rtol=0, atol=0)
            torch.testing.assert_close(view.sink.values, sink[layer].values, rtol=0, atol=0)
            if expected:
                keys = torch.cat([kv[layer].keys for kv in expected], dim=1)
                values = torch.cat([kv[layer].values for kv in expected], dim=1)
                torch.testing.assert_close(view.context.keys, keys, rtol=0, atol=0)
                torch.testing.assert_close(view.context.values, values, rtol=0, atol=0)
            else:
                assert view.context is None
        written.append(chunk_kv(n))
        cache.write(written[-1])
    assert cache.chunks_written == 3 * window + 2


def test_memory_is_allocated_once_bytes_after_200_chunks_equal_those_after_w_plus_1() -> None:
    window = 4
    cache = IDContextCache(CacheConfig(window=window), SHAPE)
    cache.set_id_sink(sink_kv())
    pointers = [b.data_ptr() for b in cache.buffers()]
    kv = chunk_kv(0)
    bytes_at = {}
    for n in range(1, 201):
        cache.write(kv)
        cache.read()
        bytes_at[n] = cache.nbytes()
    assert bytes_at[200] == bytes_at[window + 1] == bytes_at[1]
    assert [b.data_ptr() for b in cache.buffers()] == pointers, "a buffer was reallocated"
    # What it holds (module doc): per layer the sink's and W chunks' keys, their values plus one chunk slot;
    # shared by the layers the rotated keys [sink, W chunks, chunk] and one float32 plane of rotation scratch.
    lr, lc = SHAPE.sink_tokens, SHAPE.chunk_tokens
    per_token = SHAPE.batch * SHAPE.width * 4  # float32
    per_layer = (lr + window * lc) + (lr + (window + 1) * lc)
    shared = (lr + (window + 1) * lc) + max(lr, window * lc, lc)
    assert cache.nbytes() == per_token * (SHAPE.num_layers * per_layer + shared)


def test_reads_are_views_into_the_buffers_not_copies() -> None:
    cache = IDContextCache(CacheConfig(window=3), SHAPE)
    cache.set_id_sink(sink_kv())
    for n in range(5):  # the ring has wrapped around
        cache.write(chunk_kv(n))
    view = cache.read()[1]
    assert view.context.keys.untyped_storage().data_ptr() == cache.context_keys.untyped_storage().data_ptr()
    assert view.sink.values.untyped_storage().data_ptr() == cache.values.untyped_storage().data_ptr()
    # [sink, context, chunk slot] values are one slice of the buffer, the sink's and the context's in place
    buffers = view.buffers
    assert buffers.values.data_ptr() == view.sink.values.data_ptr()
    assert buffers.values[:, SHAPE.sink_tokens :].data_ptr() == view.context.values.data_ptr()
    assert buffers.chunk_values.shape[1] == SHAPE.chunk_tokens == buffers.values.shape[1] - SHAPE.sink_tokens - 3 * SHAPE.chunk_tokens


def test_switches_disable_the_sink_and_the_context_and_allocate_nothing_for_them() -> None:
    no_sink = IDContextCache(CacheConfig(window=2, use_id_sink=False), SHAPE)
    no_sink.set_id_sink(sink_kv())
    no_sink.write(chunk_kv(0))
    assert not no_sink.has_sink and all(v.sink is None for v in no_sink.read())
    assert no_sink.sink_keys.numel() == 0

    no_context = IDContextCache(CacheConfig(window=2, use_context_cache=False), SHAPE)
    no_context.set_id_sink(sink_kv())
    for n in range(3):
        no_context.write(chunk_kv(n))
    assert all(v.context is None and v.num_context_chunks == 0 for v in no_context.read())
    assert all(v.sink is not None for v in no_context.read())
    assert no_context.context_keys.numel() == 0


def test_reset_forgets_the_stream_and_keeps_the_buffers() -> None:
    cache = IDContextCache(CacheConfig(window=2), SHAPE)
    cache.set_id_sink(sink_kv())
    cache.write(chunk_kv(0))
    pointers = [b.data_ptr() for b in cache.buffers()]
    cache.reset()
    assert cache.chunks_written == 0 and not cache.has_sink
    assert all(v.sink is None and v.context is None for v in cache.read())
    assert [b.data_ptr() for b in cache.buffers()] == pointers


def test_wrong_shapes_and_layer_counts_are_refused_with_the_cause() -> None:
    cache = IDContextCache(CacheConfig(window=2), SHAPE)
    with pytest.raises(ValueError, match="2 layers, the cache has 3"):
        cache.write(chunk_kv(0)[:2])
    with pytest.raises(ValueError, match="resolution, batch and chunk size"):
        cache.write(chunk_kv(0, tokens=SHAPE.chunk_tokens + 1))
    with pytest.raises(ValueError, match="holds no chunk"):
        cache.evict()
    with pytest.raises(ValueError, match="use_context_cache"):
        CacheConfig(window=0)


# --- the cache's windows in the DiT: attention-ready buffers ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rotate_into_equals_rotary_apply_bit_for_bit(dtype: torch.dtype) -> None:
    rope = RotaryEmbedding(64, 10000.0, 20.0, 2048.0, 2048.0, 0.32, 8.0)
    rotary = rope(grid_coords(torch.arange(3), 2, 2))  # 12 tokens
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = torch.full_like(x, float("nan"))
    work = torch.empty(2, 2, 20, 64)
    rotate_into(rotary, x, out, work)
    assert torch.equal(out, rotary.apply(x))


def _stream_chunks(dit, cache, pattern, windows_of, num_chunks: int):
    """Velocities of ``num_chunks`` chunks streamed through ``cache``, windows passed through ``windows_of``."""
    g = torch.Generator().manual_seed(7)
    grid = (cache.shape.sink_tokens, 1)  # Lr tokens as an Lr x 1 grid (the tiny models' 2x2 = 4 tokens)
    channels, audio_shape = dit.config.latent_channels, (1, pattern.chunk_frames, 4, dit.config.audio_dim)
    velocities, counters = [], []
    with torch.inference_mode():
        cache.set_id_sink(dit.encode_id_sink(torch.randn(1, channels, 1, *grid, generator=g)))
        for _ in range(num_chunks):
            latents = torch.randn(1, channels, pattern.chunk_frames, *grid, generator=g)
            audio, t = torch.randn(*audio_shape, generator=g), torch.full((1, pattern.chunk_frames), 0.5)
            windows = windows_of(cache.read())
            counter = AllocationCounter()
            with counter:
                out = dit.forward_chunk(latents, t, audio, windows, pattern)
            velocities.append(out.velocity)
            counters.append(counter)
            cache.write(dit.forward_chunk(latents, torch.zeros_like(t), audio, windows, pattern).kv)
    return velocities, counters


def test_a_cache_window_equals_a_fresh_window_and_allocates_nothing_that_grows_with_w(tiny_models) -> None:
    """The buffers change where keys are put, not what attention computes: chunk for chunk (N > W, the
    context shifted) the velocity equals that of windows without buffers (rotated and concatenated anew),
    bit for bit; and a chunk step allocates the same bytes for W = 1 and W = 4, the concatenating path
    more with W."""
    def without_buffers(windows):
        return [WindowKV(w.sink, w.context, w.num_context_chunks) for w in windows]

    dit = tiny_models.dit
    allocated = {}
    for window in (1, 4):
        pattern = AttentionPattern.block_causal(window)
        shape = cache_shape(dit.config, 1, (4, 1), pattern.chunk_frames)
        num_chunks = window + 3
        buffered, counted = _stream_chunks(dit, IDContextCache(CacheConfig(window), shape), pattern, list, num_chunks)
        fresh, concatenated = _stream_chunks(
            dit, IDContextCache(CacheConfig(window), shape), pattern, without_buffers, num_chunks
        )
        for a, b in zip(buffered, fresh, strict=True):
            assert torch.equal(a, b)
        allocated[window] = (counted[-1].bytes, concatenated[-1].bytes)
    assert allocated[1][0] == allocated[4][0], allocated
    assert allocated[4][1] > allocated[1][1] > allocated[1][0], allocated
