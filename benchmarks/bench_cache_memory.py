"""Cache memory and per-chunk DiT time: the mirrored ring (before issue 15) against ``IDContextCache``'s
attention-ready buffers, side by side in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_cache_memory.py [--size 64] [--chunks 40] [--windows 1 4 8]

Per window W it streams the same chunks through both caches, interleaved chunk by chunk (the same
machine state for both), and reports per cache: bytes held (buffers; the new cache also counts its
rotary tables), bytes allocated per chunk (``AllocationCounter``: every tensor an aten op returns that is
not a view or an in-place result, summed over one chunk's steady-state DiT work: ``steps`` denoising calls,
the clean pass and the cache write), the largest single allocation, and per-chunk time (median over the
chunks after W + 1, the window full). Bytes held: the buffers, and for the new cache its rotary tables
(``ChunkPlans``: ``(W + 1) Lc + Lr`` rows of cos and sin, which the old path rebuilt on every call). "before" is the pre-issue-15 cache, kept only here: a mirrored
ring read as views whose windows carry no buffers, so every call rotates into new tensors and
concatenates sink, context and chunk (the library's path for windows without buffers, still used under
autograd), and rebuilds the rotary tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from rest_lightning.models.attention import AttentionPattern, LayerKV, WindowKV
from rest_lightning.models.dit import DiT
from rest_lightning.streaming.benchmark import AllocationCounter
from rest_lightning.streaming.cache import CacheConfig, CacheShape, IDContextCache
from rest_lightning.streaming.rollout import cache_shape

MIRROR = 2
STEPS = 4  # the default few-step list (StreamConfig.timesteps)
CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"


class MirroredRingCache(nn.Module):
    """The cache before issue 15 (rest_lightning/streaming/cache.py at e52aacf), reduced to what a stream
    uses: sink + a mirrored ring of 2 W chunk slots, each chunk written twice so reads are views."""

    def __init__(self, config: CacheConfig, shape: CacheShape) -> None:
        super().__init__()
        self.config, self.shape = config, shape
        sink = (shape.num_layers, shape.batch, shape.sink_tokens, shape.width)
        ring = (shape.num_layers, shape.batch, MIRROR * config.capacity * shape.chunk_tokens, shape.width)
        for name, size in (("sink_keys", sink), ("sink_values", sink), ("ring_keys", ring), ("ring_values", ring)):
            self.register_buffer(name, torch.zeros(size), persistent=False)
        self.written = self.held = 0

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def set_id_sink(self, sink: Sequence[LayerKV]) -> None:
        for layer, kv in enumerate(sink):
            self.sink_keys[layer].copy_(kv.keys)
            self.sink_values[layer].copy_(kv.values)

    def read(self) -> list[WindowKV]:
        lc, capacity = self.shape.chunk_tokens, self.config.capacity
        start = (self.written - self.held) % capacity * lc
        stop = start + self.held * lc
        return [
            WindowKV(
                LayerKV(self.sink_keys[layer], self.sink_values[layer]),
                LayerKV(self.ring_keys[layer, :, start:stop], self.ring_values[layer, :, start:stop]) if self.held else None,
                self.held,
            )
            for layer in range(self.shape.num_layers)
        ]

    def write(self, kv: Sequence[LayerKV]) -> None:
        lc, capacity = self.shape.chunk_tokens, self.config.capacity
        self.held = min(self.held + 1, capacity)
        slot = self.written % capacity
        for layer, layer_kv in enumerate(kv):
            for mirror in range(MIRROR):
                begin = (slot + mirror * capacity) * lc
                self.ring_keys[layer, :, begin : begin + lc].copy_(layer_kv.keys)
                self.ring_values[layer, :, begin : begin + lc].copy_(layer_kv.values)
        self.written += 1


def chunk_step(dit: DiT, cache, pattern: AttentionPattern, latents, audio) -> None:
    """One chunk's DiT work in a stream: ``STEPS`` denoising calls on the window, the clean pass, the write."""
    windows = cache.read()
    t = torch.full((1, pattern.chunk_frames), 0.5)
    for _ in range(STEPS):
        dit.forward_chunk(latents, t, audio, windows, pattern)
    cache.write(dit.forward_chunk(latents, torch.zeros_like(t), audio, windows, pattern).kv)


def measure(dit: DiT, side: int, window: int, chunks: int, ratio: int, audio_tokens: int) -> dict[str, dict[str, float]]:
    grid = (side // ratio, side // ratio)
    pattern = AttentionPattern.block_causal(window)
    shape = cache_shape(dit.config, 1, grid, pattern.chunk_frames)
    caches = {"before": MirroredRingCache(CacheConfig(window), shape), "after": IDContextCache(CacheConfig(window), shape)}
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, dit.config.latent_channels, 1, *grid, generator=g)
    times: dict[str, list[float]] = {name: [] for name in caches}
    counted: dict[str, AllocationCounter] = {}
    with torch.inference_mode():
        sink = dit.encode_id_sink(ref)
        for cache in caches.values():
            cache.set_id_sink(sink)
        for c in range(chunks):
            latents = torch.randn(1, dit.config.latent_channels, 1, *grid, generator=g)
            audio = torch.randn(1, 1, audio_tokens, dit.config.audio_dim, generator=g)
            order = list(caches) if c % 2 == 0 else list(reversed(caches))  # alternate who goes first
            for name in order:
                start = time.perf_counter()
                chunk_step(dit, caches[name], pattern, latents, audio)
                if c > window:  # the window is full
                    times[name].append(time.perf_counter() - start)
            if c == window + 1:
                for name in caches:
                    counted[name] = AllocationCounter()
                    with counted[name]:
                        chunk_step(dit, caches[name], pattern, latents, audio)
    return {
        name: {
            "buffer_bytes": sum(b.numel() * b.element_size() for b in caches[name].buffers()),
            "table_bytes": caches[name].nbytes() - sum(b.numel() * b.element_size() for b in caches[name].buffers()),
            "allocated_per_chunk": counted[name].bytes,
            "allocations_per_chunk": counted[name].count,
            "largest_allocation": counted[name].largest,
            "chunk_ms": statistics.median(times[name]) * 1e3,
        }
        for name in caches
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="video side in pixels (tiny: 64 -> 8x8 latent grid)")
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--width", type=int, default=64, help="DiT width (dit_tiny: 64)")
    parser.add_argument("--layers", type=int, default=2, help="DiT layers (dit_tiny: 2)")
    args = parser.parse_args()
    torch.manual_seed(0)
    tiny = instantiate(OmegaConf.load(CONF_MODEL / "dit" / "dit_tiny.yaml"))
    dit = DiT(dataclasses.replace(tiny, width=args.width, num_layers=args.layers)).eval()
    ratio = instantiate(OmegaConf.load(CONF_MODEL / "vae" / "vae_tiny.yaml")).spatial_compression
    audio_tokens = instantiate(OmegaConf.load(CONF_MODEL / "audio" / "log_mel_tiny.yaml")).n_audio_tokens
    print(f"DiT {args.layers} x {args.width}, {args.size}x{args.size} px, float32, CPU, {torch.get_num_threads()} thread(s)")
    header = (
        f"{'W':>3} {'cache':>7} {'buffers':>11} {'+ tables':>9} {'alloc/chunk':>12} {'allocs':>7} {'largest':>9} "
        f"{'ms/chunk':>9}"
    )
    print(header)
    measure(dit, args.size, args.windows[0], args.windows[0] + 3, ratio, audio_tokens)  # warm-up, not reported
    for window in args.windows:
        for name, row in measure(dit, args.size, window, args.chunks, ratio, audio_tokens).items():
            print(
                f"{window:>3} {name:>7} {row['buffer_bytes']:>11,} {row['table_bytes']:>9,} {row['allocated_per_chunk']:>12,} "
                f"{row['allocations_per_chunk']:>7} {row['largest_allocation']:>9,} {row['chunk_ms']:>9.2f}"
            )


if __name__ == "__main__":
    main()
