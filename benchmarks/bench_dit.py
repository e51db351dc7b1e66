"""DiT training-step benchmark (issue 5): forward + backward time, peak memory, attention share, and the
parameter counts of every ``conf/model/dit`` size.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dit.py                      # dit_tiny, dit_small on CPU
    PYTHONPATH=. .venv/bin/python benchmarks/bench_dit.py --sizes dit_small --frames 9 --grid 16 --device cuda

Each size runs in its own subprocess. Peak memory of a step: on CPU the peak of the profiler's memory
timeline (parameters, gradients, activations, temporaries; one profiled step after the timed ones); on
CUDA, ``torch.cuda.max_memory_allocated``. Tokens per step = batch x (frames +
1 reference frame) x grid^2. Attention share = time in the ``scaled_dot_product_attention`` kernels
(forward and backward) over the whole step, from ``torch.profiler``. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.dit import DiT, count_parameters

CONF_DIT = Path(__file__).resolve().parents[1] / "conf" / "model" / "dit"
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention")


def load_config(size: str):
    return instantiate(OmegaConf.load(CONF_DIT / f"{size}.yaml"))


def parameter_counts() -> dict[str, int]:
    counts = {}
    for path in sorted(CONF_DIT.glob("*.yaml")):
        with torch.device("meta"):
            counts[path.stem] = count_parameters(DiT(load_config(path.stem)))
    return counts


def bench_one(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = load_config(args.one)
    model = DiT(config).to(device).train()
    pattern = (
        AttentionPattern.block_causal(args.window)
        if args.pattern == "block_causal"
        else AttentionPattern.bidirectional()
    )
    b, f, g = args.batch, args.frames, args.grid
    latents = torch.randn(b, config.latent_channels, f, g, g, device=device)
    ref = torch.randn(b, config.latent_channels, 1, g, g, device=device)
    audio = torch.randn(b, f, args.audio_tokens, config.audio_dim, device=device)
    t = torch.rand(b, f, device=device)
    target = torch.randn_like(latents)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss = (model(latents, t, audio, ref, pattern) - target).square().mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)

    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if use_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    # CPU has no allocator statistics: the profiler's memory timeline (deprecated but the only CPU
    # source) gives live bytes by category over the step; its peak total is the step's peak.
    with torch.profiler.profile(
        activities=activities,
        profile_memory=not use_cuda,
        record_shapes=not use_cuda,
        with_stack=not use_cuda,
    ) as prof:
        step()
    if use_cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
            _, sizes = json.loads(Path(f"{tmp}/timeline.json").read_text())
        peak = max(sum(s) for s in sizes)
    events = prof.key_averages()
    total = sum((e.self_device_time_total if use_cuda else e.self_cpu_time_total) for e in events)
    attention = sum(
        (e.self_device_time_total if use_cuda else e.self_cpu_time_total)
        for e in events
        if any(op in e.key for op in ATTENTION_OPS)
    )
    return {
        "size": args.one,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "pattern": pattern.kind,
        "window": pattern.window if pattern.is_causal else None,
        "batch": b,
        "latent_frames": f,
        "grid": g,
        "tokens_per_step": b * (f + 1) * g * g,
        "parameters": count_parameters(model),
        "step_seconds_median": statistics.median(times),
        "step_seconds_all": times,
        "peak_memory_bytes": peak,
        "peak_memory_kind": "cuda max_memory_allocated"
        if use_cuda
        else "profiler memory timeline peak (all categories)",
        "attention_share": attention / total if total else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["dit_tiny", "dit_small"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=5, help="latent frames (5 = 33 video frames)")
    parser.add_argument("--grid", type=int, default=8, help="latent grid side (8 = 256x256 video at 32x)")
    parser.add_argument("--audio-tokens", type=int, default=4)
    parser.add_argument("--pattern", choices=["bidirectional", "block_causal"], default="bidirectional")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one size in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(bench_one(args)))
        return
    results = []
    for size in args.sizes:
        forwarded = [
            "--device",
            args.device,
            "--batch",
            str(args.batch),
            "--frames",
            str(args.frames),
            "--grid",
            str(args.grid),
            "--audio-tokens",
            str(args.audio_tokens),
            "--pattern",
            args.pattern,
            "--window",
            str(args.window),
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(
            [sys.executable, __file__, "--one", size, *forwarded], check=True, capture_output=True, text=True
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"parameters": parameter_counts(), "steps": results}, indent=2))


if __name__ == "__main__":
    main()
