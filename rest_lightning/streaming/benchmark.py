"""Measuring a `StreamingGenerator` (DESIGN §5, what ``rest-bench`` reports), after a warm-up stream.

- per-chunk latency: from the moment a chunk's last piece of audio is handed to the generator to the
  moment its frames are in host memory (audio features, denoising, VAE decode); the clean pass that
  writes the cache runs after the frames leave, while the next audio is awaited;
- per-chunk time: between consecutive chunks' frames (everything, cache write included);
- first-frame latency: the first chunk's latency in a fresh stream (the reference already encoded);
- FPS = video frames / stream wall time; real-time factor = wall time / audio duration (< 1 is
  faster than real time);
- cache speed-up: the DiT work of one chunk with a full cache (``steps`` cached calls + the clean pass)
  against what a cache-less engine does for the same chunk: ``steps`` block-causal forwards over
  ``[reference, W context chunks, chunk]``, recomputing the reference and the context every step.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from rest_lightning.streaming.generator import StreamingGenerator

PERCENTILES = (50, 95, 99)
SAMPLE_POSITIONS = (10, 200)  # chunk indices whose latency the report quotes (flat over a stream?)
SAMPLE_HALF_WIDTH = 5  # a quoted latency is the median over chunks i-5 .. i+5 (one chunk alone is noisy)


@dataclass(frozen=True)
class BenchReport:
    """What ``rest-bench`` prints and writes (DESIGN §9 names the first six keys)."""

    first_frame_latency_s: float
    fps: float
    rtf: float
    chunk_latency_s: dict[str, float]  # p50 / p95 / p99 / mean / max over the timed stream
    peak_memory_bytes: int
    cache_speedup: float
    chunk_time_s: dict[str, float]  # per-chunk wall time, cache write included
    chunk_latency_at_s: dict[str, float]  # median latency around chunks SAMPLE_POSITIONS the stream reaches
    dit_chunk_cached_s: float
    dit_chunk_recompute_s: float
    cache_bytes: int
    peak_memory_kind: str
    chunks: int
    video_frames: int
    audio_seconds: float
    device: str
    dtype: str
    resolution: list[int]
    window: int
    steps: int
    dit: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    out = {}
    for p in PERCENTILES:
        # nearest-rank percentile: a value that occurred, no interpolation between samples
        out[f"p{p}"] = ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
    out["mean"] = statistics.fmean(values)
    out["max"] = ordered[-1]
    return out


class _TimedAudio:
    """Hands out one chunk's audio per ``next``, noting when each piece was handed over."""

    def __init__(self, audio: Tensor, pieces: list[int]) -> None:
        self.audio = audio
        self.pieces = pieces
        self.handed: list[float] = []

    def __iter__(self) -> Iterator[Tensor]:
        start = 0
        for size in self.pieces:
            self.handed.append(time.perf_counter())
            yield self.audio[start : start + size]
            start += size


def _chunk_pieces(generator: StreamingGenerator, num_chunks: int) -> tuple[int, list[int]]:
    """Samples of a stream of exactly ``num_chunks`` chunks, cut so each piece completes one chunk (the
    last piece ends the stream, so the last chunk's look-ahead reads zeros)."""
    rule, alignment = generator.frame_rule, generator.audio_encoder.alignment
    cf = generator.config.chunk_frames
    needed = [alignment.samples_needed((c + 1) * cf - 1) for c in range(num_chunks)]
    needed[-1] = rule.first_video_frame(num_chunks) * rule.samples_per_video_frame
    pieces = [needed[0]] + [b - a for a, b in zip(needed[:-1], needed[1:], strict=True)]
    return sum(pieces), pieces


def _timed_stream(generator: StreamingGenerator, ref: Tensor, num_chunks: int, seed: int):
    samples, pieces = _chunk_pieces(generator, num_chunks)
    audio = (torch.rand(samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 0.5
    source = _TimedAudio(audio, pieces)
    out_times, frames = [], 0
    for chunk in generator.generate(ref, source):
        host = chunk.frames.cpu()  # the frames are out when they are in host memory
        out_times.append(time.perf_counter())
        frames += host.shape[2]
    return source.handed, out_times, frames, samples


@torch.inference_mode()
def _median_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cache_speedup(generator: StreamingGenerator, latent_grid: tuple[int, int], repeats: int) -> tuple[float, float]:
    """Seconds of DiT work for one chunk with a full cache, and recomputing the window (module doc)."""
    dit, config, device, dtype = generator.dit, generator.config, generator.device, generator.dtype
    height, width = latent_grid
    cf, window, steps = config.chunk_frames, config.window, len(config.timesteps)
    g = torch.Generator().manual_seed(0)
    channels = dit.config.latent_channels

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    a = generator.audio_encoder.config.n_audio_tokens
    ref = randn(1, channels, 1, height, width)
    history = randn(1, channels, window * cf, height, width)
    chunk = randn(1, channels, cf, height, width)
    audio_chunk = randn(1, cf, a, dit.config.audio_dim)
    audio_window = randn(1, (window + 1) * cf, a, dit.config.audio_dim)
    pattern = generator.pattern
    with torch.inference_mode():
        cache = generator.new_cache(1, latent_grid)
        cache.set_id_sink(dit.encode_id_sink(ref))
        zeros = torch.zeros(1, cf, device=device)
        for c in range(window):
            clean = history[:, :, c * cf : (c + 1) * cf]
            cache.write(dit.forward_chunk(clean, zeros, audio_chunk, cache.read(), pattern).kv)
    t_chunk = torch.full((1, cf), 0.5, device=device)
    window_latents = torch.cat([history, chunk], dim=2)
    window_times = torch.cat([torch.zeros(1, window * cf, device=device), t_chunk], dim=1)

    def cached() -> None:
        windows = cache.read()
        for _ in range(steps):
            dit.forward_chunk(chunk, t_chunk, audio_chunk, windows, pattern)
        dit.forward_chunk(chunk, zeros, audio_chunk, windows, pattern)  # the clean pass

    def recompute() -> None:
        for _ in range(steps):
            dit(window_latents, window_times, audio_window, ref, pattern)

    return _median_time(cached, repeats, device), _median_time(recompute, repeats, device)


def run_benchmark(
    generator: StreamingGenerator,
    resolution: tuple[int, int],
    num_chunks: int,
    warmup_chunks: int,
    speedup_repeats: int,
) -> BenchReport:
    """Warm up with a stream of ``warmup_chunks``, then time a stream of ``num_chunks`` (module doc)."""
    if num_chunks < 1 or warmup_chunks < 0 or speedup_repeats < 1:
        raise ValueError(
            f"need chunks >= 1, warmup_chunks >= 0, speedup_repeats >= 1; got {num_chunks}, {warmup_chunks}, "
            f"{speedup_repeats}"
        )
    device = generator.device
    height, width = resolution
    ref = torch.rand(1, 3, 1, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    if warmup_chunks:
        _timed_stream(generator, ref, warmup_chunks, seed=2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    handed, out_times, frames, samples = _timed_stream(generator, ref, num_chunks, seed=3)
    latencies = [out - hand for hand, out in zip(handed, out_times, strict=True)]
    chunk_times = [out_times[0] - handed[0]] + [b - a for a, b in zip(out_times[:-1], out_times[1:], strict=True)]
    wall = out_times[-1] - handed[0]
    sample_rate = generator.audio_encoder.config.sample_rate
    audio_seconds = samples / sample_rate
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    else:
        # ru_maxrss: kilobytes on Linux, bytes on macOS; the process's peak, models included
        scale = 1 if sys.platform == "darwin" else 1024
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "cpu_peak_rss"
    ratio = generator.spatial_compression
    latent_grid = (height // ratio, width // ratio)
    cached_s, recompute_s = cache_speedup(generator, latent_grid, speedup_repeats)
    dit_config = generator.dit.config
    return BenchReport(
        first_frame_latency_s=latencies[0],
        fps=frames / wall,
        rtf=wall / audio_seconds,
        chunk_latency_s=_percentiles(latencies),
        peak_memory_bytes=int(peak),
        cache_speedup=recompute_s / cached_s,
        chunk_time_s=_percentiles(chunk_times),
        chunk_latency_at_s={
            str(i): statistics.median(latencies[max(0, i - SAMPLE_HALF_WIDTH) : i + SAMPLE_HALF_WIDTH + 1])
            for i in SAMPLE_POSITIONS
            if i < len(latencies)
        },
        dit_chunk_cached_s=cached_s,
        dit_chunk_recompute_s=recompute_s,
        cache_bytes=generator.new_cache(1, latent_grid).nbytes(),
        peak_memory_kind=kind,
        chunks=num_chunks,
        video_frames=frames,
        audio_seconds=audio_seconds,
        device=str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})",
        dtype=str(generator.dtype).removeprefix("torch."),
        resolution=[height, width],
        window=generator.config.window,
        steps=len(generator.config.timesteps),
        dit={"num_layers": dit_config.num_layers, "width": dit_config.width, "num_heads": dit_config.num_heads},
    )


def format_report(report: BenchReport) -> str:
    """A table for the terminal."""
    lat, per = report.chunk_latency_s, report.chunk_time_s
    rows = [
        ("device / dtype", f"{report.device} / {report.dtype}"),
        ("model", f"DiT {report.dit['num_layers']} x {report.dit['width']}, {report.resolution[0]}x{report.resolution[1]}, "
                  f"W={report.window}, {report.steps} steps"),
        ("stream", f"{report.chunks} chunks, {report.video_frames} frames, {report.audio_seconds:.2f} s of audio"),
        ("first-frame latency", f"{report.first_frame_latency_s * 1e3:.1f} ms"),
        ("chunk latency p50/p95/p99", f"{lat['p50'] * 1e3:.1f} / {lat['p95'] * 1e3:.1f} / {lat['p99'] * 1e3:.1f} ms"),
        ("chunk time p50/p95/p99", f"{per['p50'] * 1e3:.1f} / {per['p95'] * 1e3:.1f} / {per['p99'] * 1e3:.1f} ms"),
    ]
    rows += [
        (f"chunk {i} latency (median +-{SAMPLE_HALF_WIDTH})", f"{v * 1e3:.1f} ms")
        for i, v in report.chunk_latency_at_s.items()
    ]
    rows += [
        ("steady-state FPS", f"{report.fps:.2f} (real time: 25)"),
        ("real-time factor", f"{report.rtf:.3f} (< 1 is faster than real time)"),
        ("cache speed-up", f"{report.cache_speedup:.2f}x (DiT per chunk {report.dit_chunk_cached_s * 1e3:.1f} ms "
                           f"cached vs {report.dit_chunk_recompute_s * 1e3:.1f} ms recomputing the window)"),
        ("cache bytes", f"{report.cache_bytes:,}"),
        (f"peak memory ({report.peak_memory_kind})", f"{report.peak_memory_bytes / 2**20:.1f} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
