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
  ``[reference, W context chunks, chunk]``, recomputing the reference and the context every step. Timed
  as *pairs*: each repeat times one cached and one recomputing chunk back to back (their order
  alternating), so both see the same machine state; the speed-up is the median of the per-pair ratios
  recomputed / cached, with a distribution-free 95% interval of that median (order statistics of the
  ratios, ``median_interval``). Two unpaired medians on a loaded machine disagreed by 2.5x between runs;
- efficiency, "MFU vs measured matmul peak": the model part is the DiT work of one cached chunk (the
  ``steps`` calls + the clean pass, as in the speed-up), its FLOPs counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over one such chunk (matmuls and attention; elementwise
  work is not counted), divided by the median of its paired timings: the achieved FLOP/s. The peak is the
  best FLOP/s of ``peak_repeats`` square ``peak_size`` matmuls in float32 and bfloat16 on the same device,
  measured in the same run (the better dtype wins); MFU = achieved / peak.
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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from rest_lightning.streaming.generator import StreamingGenerator

PERCENTILES = (50, 95, 99)
SAMPLE_POSITIONS = (10, 200)  # chunk indices whose latency the report quotes (flat over a stream?)
SAMPLE_HALF_WIDTH = 5  # a quoted latency is the median over chunks i-5 .. i+5 (one chunk alone is noisy)
CONFIDENCE = 0.95  # coverage of the speed-up's interval
PEAK_DTYPES = (torch.float32, torch.bfloat16)  # the matmul peak is the better of the two


@dataclass(frozen=True)
class BenchReport:
    """What ``rest-bench`` prints and writes (DESIGN §9 names the first six keys)."""

    first_frame_latency_s: float
    fps: float
    rtf: float
    chunk_latency_s: dict[str, float]  # p50 / p95 / p99 / mean / max over the timed stream
    peak_memory_bytes: int
    cache_speedup: float  # median over pairs of recomputed / cached
    chunk_time_s: dict[str, float]  # per-chunk wall time, cache write included
    chunk_latency_at_s: dict[str, float]  # median latency around chunks SAMPLE_POSITIONS the stream reaches
    dit_chunk_cached_s: float  # median of the paired cached timings
    dit_chunk_recompute_s: float  # median of the paired recomputing timings
    cache_speedup_interval: list[float]  # CONFIDENCE interval of the median ratio (order statistics)
    cache_speedup_pairs: int
    chunk_latency_series_s: list[float]  # per chunk of the timed stream, in order
    chunk_time_series_s: list[float]
    efficiency: dict[str, float | int | str]  # "MFU vs measured matmul peak" (module doc)
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


class AllocationCounter(TorchDispatchMode):
    """Counts the tensors aten ops allocate while active: every returned tensor that is not a view or an
    in-place / ``out=`` result of an input (per the op's schema) is a new allocation. Device-independent
    (CPU has no allocator statistics; on CUDA ``torch.cuda.memory_stats`` agrees with it). Kernel
    workspaces that never surface as tensors (e.g. inside a fused attention) are not seen.

    Fields (read after the ``with`` block): ``bytes`` allocated in all, ``count`` of tensors, ``largest``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.count = 0
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, tuple | list) else (out,)
        for declared, value in zip(func._schema.returns, results, strict=False):
            if declared.alias_info is None and isinstance(value, Tensor):
                size = value.numel() * value.element_size()
                self.bytes += size
                self.count += 1
                self.largest = max(self.largest, size)
        return out


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


def _seconds(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval of the median of independent ``values``: the order statistics
    ``(x_(j), x_(n+1-j))`` with the largest j such that ``P(j <= Binomial(n, 1/2) <= n - j) >= confidence``.
    Needs ``n >= 6`` at 95%; with fewer values it is ``(min, max)``, whose coverage is below ``confidence``."""
    ordered, n = sorted(values), len(values)
    # P(Binomial(n, 1/2) < j), accumulated until it exceeds half the allowed miss
    best, tail = 1, 0.0
    for j in range(1, n // 2 + 1):
        tail += math.comb(n, j - 1) / 2**n
        if 2 * tail > 1 - confidence:
            break
        best = j
    return ordered[best - 1], ordered[n - best]


@dataclass(frozen=True)
class PairedTimes:
    """``cache_speedup``'s result: seconds per repeat of the cached and the recomputing chunk, paired."""

    cached_s: list[float]
    recompute_s: list[float]
    flops: int  # of one cached chunk (FlopCounterMode)

    @property
    def ratios(self) -> list[float]:
        return [r / c for c, r in zip(self.cached_s, self.recompute_s, strict=True)]


def _count_flops(fn) -> int:
    """FLOPs of ``fn()`` by ``FlopCounterMode`` (matmuls, attention); CPU's fused attention op is not in
    torch's table, so it is counted here with torch's own attention formula."""

    def cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    )
    with counter:
        fn()
    return counter.get_total_flops()


@torch.inference_mode()
def matmul_peaks(device: torch.device, size: int, repeats: int) -> dict[str, float]:
    """The best FLOP/s of ``repeats`` ``size x size`` matmuls on ``device`` (after one warm-up), per dtype of
    ``PEAK_DTYPES``."""
    rates = {}
    for dtype in PEAK_DTYPES:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=g).to(device, dtype)
        b = torch.randn(size, size, generator=g).to(device, dtype)
        torch.mm(a, b)  # warm-up
        seconds = min(_seconds(lambda: torch.mm(a, b), device) for _ in range(repeats))  # noqa: B023
        rates[str(dtype).removeprefix("torch.")] = 2 * size**3 / seconds
    return rates


def cache_speedup(generator: StreamingGenerator, latent_grid: tuple[int, int], repeats: int) -> PairedTimes:
    """Seconds of DiT work for one chunk with a full cache, and recomputing the window, timed in pairs
    (module doc), and the FLOPs of one cached chunk."""
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

    cached_s, recompute_s = [], []
    with torch.inference_mode():
        cached(), recompute()  # warm-up
        for i in range(repeats):
            # one pair per repeat, back to back; who goes first alternates (no order bias)
            if i % 2 == 0:
                cached_s.append(_seconds(cached, device))
                recompute_s.append(_seconds(recompute, device))
            else:
                recompute_s.append(_seconds(recompute, device))
                cached_s.append(_seconds(cached, device))
        flops = _count_flops(cached)
    return PairedTimes(cached_s, recompute_s, flops)


def run_benchmark(
    generator: StreamingGenerator,
    resolution: tuple[int, int],
    num_chunks: int,
    warmup_chunks: int,
    speedup_repeats: int,
    peak_size: int,
    peak_repeats: int,
) -> BenchReport:
    """Warm up with a stream of ``warmup_chunks``, then time a stream of ``num_chunks``, the paired cache
    speed-up and the matmul peak (module doc)."""
    if num_chunks < 1 or warmup_chunks < 0 or speedup_repeats < 1 or peak_size < 1 or peak_repeats < 1:
        raise ValueError(
            f"need chunks >= 1, warmup_chunks >= 0, speedup_repeats >= 1, peak_size >= 1, peak_repeats >= 1; got "
            f"{num_chunks}, {warmup_chunks}, {speedup_repeats}, {peak_size}, {peak_repeats}"
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
    paired = cache_speedup(generator, latent_grid, speedup_repeats)
    cached_s, recompute_s = statistics.median(paired.cached_s), statistics.median(paired.recompute_s)
    matmul_rates = matmul_peaks(device, peak_size, peak_repeats)
    peak_dtype = max(matmul_rates, key=matmul_rates.__getitem__)
    achieved = paired.flops / cached_s
    dit_config = generator.dit.config
    return BenchReport(
        first_frame_latency_s=latencies[0],
        fps=frames / wall,
        rtf=wall / audio_seconds,
        chunk_latency_s=_percentiles(latencies),
        peak_memory_bytes=int(peak),
        cache_speedup=statistics.median(paired.ratios),
        chunk_time_s=_percentiles(chunk_times),
        chunk_latency_at_s={
            str(i): statistics.median(latencies[max(0, i - SAMPLE_HALF_WIDTH) : i + SAMPLE_HALF_WIDTH + 1])
            for i in SAMPLE_POSITIONS
            if i < len(latencies)
        },
        dit_chunk_cached_s=cached_s,
        dit_chunk_recompute_s=recompute_s,
        cache_speedup_interval=list(median_interval(paired.ratios)),
        cache_speedup_pairs=len(paired.ratios),
        chunk_latency_series_s=latencies,
        chunk_time_series_s=chunk_times,
        efficiency={
            "name": "MFU vs measured matmul peak",
            "model_part": "DiT work of one cached chunk (steps forward_chunk calls + the clean pass)",
            "flops_per_chunk": paired.flops,
            "achieved_flops_per_s": achieved,
            "peak_flops_per_s": matmul_rates[peak_dtype],
            "peak_dtype": peak_dtype,
            "peak_matmul_size": peak_size,
            "mfu": achieved / matmul_rates[peak_dtype],
            **{f"matmul_{name}_flops_per_s": rate for name, rate in matmul_rates.items()},
        },
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
    (low, high), eff = report.cache_speedup_interval, report.efficiency
    own_peak = eff.get(f"matmul_{report.dtype}_flops_per_s")  # the model's dtype, when it is one of PEAK_DTYPES
    same_dtype = f"; {eff['achieved_flops_per_s'] / own_peak:.1%} of the {report.dtype} one" if own_peak else ""
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
        ("cache speed-up", f"{report.cache_speedup:.2f}x, {CONFIDENCE:.0%} interval {low:.2f}-{high:.2f}x "
                           f"(median of {report.cache_speedup_pairs} paired ratios; DiT per chunk "
                           f"{report.dit_chunk_cached_s * 1e3:.1f} ms cached vs {report.dit_chunk_recompute_s * 1e3:.1f} ms "
                           "recomputing the window)"),
        (str(eff["name"]), f"{eff['mfu']:.2%} (DiT cached chunk {eff['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s, "
                           f"{eff['flops_per_chunk'] / 1e6:.1f} MFLOP per chunk; peak {eff['peak_flops_per_s'] / 1e9:.1f} "
                           f"GFLOP/s = best {eff['peak_dtype']} {eff['peak_matmul_size']}^2 matmul{same_dtype})"),
        ("cache bytes", f"{report.cache_bytes:,}"),
        (f"peak memory ({report.peak_memory_kind})", f"{report.peak_memory_bytes / 2**20:.1f} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
