"""IDContextCache invariants (DESIGN §5, issue 6): the ID-Sink is never evicted, the ring keeps exactly
the last W chunks oldest first, memory is allocated once and does not grow, the switches act."""

from __future__ import annotations

import pytest
import torch

from rest_lightning.models.attention import LayerKV
from rest_lightning.streaming import CacheConfig, CacheShape, IDContextCache

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
    # What it holds: one sink and a mirrored ring of W chunks, keys and values, nothing else.
    per_token = SHAPE.num_layers * SHAPE.batch * SHAPE.width * 4 * 2  # float32, keys + values
    assert cache.nbytes() == per_token * (SHAPE.sink_tokens + 2 * window * SHAPE.chunk_tokens)


def test_reads_are_views_into_the_buffers_not_copies() -> None:
    cache = IDContextCache(CacheConfig(window=3), SHAPE)
    cache.set_id_sink(sink_kv())
    for n in range(5):  # the ring has wrapped around
        cache.write(chunk_kv(n))
    view = cache.read()[1]
    assert view.context.keys.untyped_storage().data_ptr() == cache.ring_keys.untyped_storage().data_ptr()
    assert view.sink.values.untyped_storage().data_ptr() == cache.sink_values.untyped_storage().data_ptr()


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
    assert no_context.ring_keys.numel() == 0


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
