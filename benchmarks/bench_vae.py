"""Benchmark the causal video VAE: encode/decode frames per second and streaming decode cost.

For each config (random weights, materialised), batch 1, float32, after one warm-up pass:
- encode and decode throughput of a whole clip (video frames per second);
- streaming decode (`decode_step`, one latent frame per call): seconds per steady-state step (which
  makes `temporal_compression` video frames), the frames per second that gives, and its cost per
  video frame over the whole-clip decode's cost per video frame (1.0 = streaming costs nothing extra).

Usage: PYTHONPATH=. python benchmarks/bench_vae.py [--configs vae_tiny vae_rest] [--size 256]
       [--latent-frames 3] [--repeats 2] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from rest_lightning.models.vae import CausalVideoVAE, VAEConfig, vae_rest, vae_tiny

PRESETS: dict[str, Callable[[], VAEConfig]] = {"vae_tiny": vae_tiny, "vae_rest": vae_rest}


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def bench_config(name: str, size: int, latent_frames: int, repeats: int, device: torch.device) -> dict:
    """Median timings of one preset; returns a row of the table."""
    torch.manual_seed(0)
    model = CausalVideoVAE(PRESETS[name]()).to(device).eval()
    config = model.config
    frames = config.video_frames(latent_frames)
    video = torch.rand(1, 3, frames, size, size, device=device) * 2 - 1
    encode_times, decode_times, step_times = [], [], []
    with torch.inference_mode():
        for attempt in range(repeats + 1):  # attempt 0 is the warm-up
            encode_time, latent = _timed(partial(model.encode, video), device)
            decode_time, _ = _timed(partial(model.decode, latent), device)
            state = model.new_decode_state()
            steps = []
            for index in range(latent_frames):
                step_time, _ = _timed(
                    partial(model.decode_step, latent[:, :, index : index + 1], state), device
                )
                steps.append(step_time)
            if attempt > 0:
                encode_times.append(encode_time)
                decode_times.append(decode_time)
                step_times.append(statistics.mean(steps[1:]))  # steady state: each step makes t frames
    encode_time, decode_time, step_time = (
        statistics.median(t) for t in (encode_times, decode_times, step_times)
    )
    stream_frame_s = step_time / config.temporal_compression  # each steady-state step makes t frames
    full_frame_s = decode_time / frames
    return {
        "config": name,
        "params_m": sum(parameter.numel() for parameter in model.parameters()) / 1e6,
        "clip": f"{frames}x{size}x{size}",
        "latent": "x".join(str(dim) for dim in config.latent_shape(frames, size, size)),
        "encode_fps": frames / encode_time,
        "decode_fps": frames / decode_time,
        "encode_s": encode_time,
        "decode_s": decode_time,
        "stream_step_s": step_time,
        "stream_fps": 1.0 / stream_frame_s,
        "stream_over_full_per_frame": stream_frame_s / full_frame_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--latent-frames", type=int, default=3, help="latent frames per clip (>= 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.latent_frames < 2:
        parser.error("--latent-frames must be >= 2 so a steady-state streaming step exists")
    device = torch.device(args.device)
    rows = [bench_config(name, args.size, args.latent_frames, args.repeats, device) for name in args.configs]
    header = (
        f"device={device} threads={torch.get_num_threads()} dtype=float32 batch=1 torch={torch.__version__} "
        f"repeats={args.repeats} (median after 1 warm-up)"
    )
    print(header)
    columns = (
        "config",
        "params_m",
        "clip",
        "latent",
        "encode_fps",
        "decode_fps",
        "stream_fps",
        "stream_step_s",
        "stream_over_full_per_frame",
    )
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": header, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
