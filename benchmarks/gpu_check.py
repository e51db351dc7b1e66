"""One short device check (issue 18): the streaming engine, the teacher's training step and the
GPU-marked tests on one CUDA device, in a few minutes; a reduced version on CPU (``--size tiny``).

    bash benchmarks/gpu_check.sh                       # GPU machine: table on stdout, JSON + logs in $OUT
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py --device cpu --size tiny  # smoke

Rows, each in its own subprocess with its own time limit (a failure, hang or out-of-memory in one row
is printed as one line and the next row runs); every row is printed and written to
``<out>/gpu_check.json`` as soon as it finishes, so a run cut short still leaves its figures; the
table (``gpu_check_table.py``) goes to stdout and ``<out>/gpu_check.md``:

- ``env``: device, versions, the dense bf16 peak the MFU is quoted against (``DATASHEET_DENSE_BF16_FLOPS``;
  Lightning's ``get_available_flops`` is recorded beside it), and a measured matmul peak (an
  ``MATMUL_SIDE``-cube matmul in the run's dtype: the practical ceiling);
- ``stream:<size>``: what ``rest-bench size=<size> device=... dtype=... chunks=N`` measures, through the
  same functions (``build_models``, ``build_generator``, ``run_benchmark`` on ``conf/bench.yaml``),
  freshly initialised weights (timings do not depend on them). Adds the DiT share of a chunk's
  latency, derived: ``dit_chunk_cached_s * steps / (steps + 1)`` (the cached measurement times the
  ``steps`` denoising calls and the clean pass; only the former lie on the latency path) over the
  latency p50; the rest is audio features, the VAE decode and the copy to host;
- ``train:<size>``: one teacher training step of that size's DiT (``conf/model/dit``): bidirectional
  pattern, bf16 autocast over float32 weights (the trainer's ``bf16-mixed``), forward + backward +
  AdamW (``DiffusionOptimConfig`` defaults), on a 2-second clip at the size's resolution (latent
  frames ``1 + (T - 1) // 8``, plus the reference frame); a config with activation checkpointing on
  is timed both ways. Model FLOPs: ``teacher_step_flops`` (no recompute counted);
- ``flops:<size>``: model FLOPs counted on the meta device, so exact and free on any machine: a
  teacher step, a streamed chunk's DiT work and its VAE decode (``row_flops``);
- ``pytest``: ``pytest -m gpu`` with a short timeout, its log in ``<out>/pytest_gpu.log``.

Imports stay within torch, lightning, pyyaml, hydra-core and omegaconf (the GPU machine this project
can use lacks the last two; ``gpu_check.sh`` installs them from wheels carried in ``.whl/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from gpu_check_table import TERA, format_table
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
# Dense (no 2:4 sparsity) bf16 tensor-core peak by the vendor's datasheets: H100 SXM and H200 SXM have
# the same 989.4 TFLOP/s (the 1979 TFLOP/s of the datasheets' headline is with sparsity).
DATASHEET_DENSE_BF16_FLOPS = {"h100": 989.4e12, "h200": 989.4e12}
MATMUL_SIDE = {"cuda": 8192, "cpu": 1024}  # design choice: large enough to reach the matmul peak
MATMUL_REPEATS = 10
CLIP_SECONDS = 2.0  # issue 18: the teacher's clip, 2 s at 25 fps = 49 frames -> 7 latent frames
STREAM_SIZES = {"tiny": ("tiny",), "paper": ("small", "rest")}
ROW_LIMIT_S = {
    "env": 60,
    "stream": 150,
    "train": 150,
    "flops": 60,
    "pytest": 90,
}  # design choice: fits 8 minutes
PYTEST_TIMEOUT_S = 60  # per test


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, warmup: int, repeats: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _compose_bench(size: str, device: str, dtype: str, extra: list[str]):
    """``conf/bench.yaml`` composed as ``rest-bench size=<size> ...`` composes it."""
    from rest_lightning.config import compose
    from rest_lightning.sizes import with_size_overrides

    return compose(
        "bench", with_size_overrides([f"size={size}", f"device={device}", f"dtype={dtype}", *extra])
    )


# --- rows (each runs in a child process) -------------------------------------------------------------


def row_env(args: argparse.Namespace) -> dict:
    import lightning
    from lightning.fabric.utilities.throughput import get_available_flops

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    out = {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "dtype": args.dtype,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "device_name": props.name,
            "sm_count": props.multi_processor_count,
            "memory_gib": props.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "lightning_available_flops": get_available_flops(device, dtype),
        }
        name = props.name.lower()
        peaks = [flops for chip, flops in DATASHEET_DENSE_BF16_FLOPS.items() if chip in name]
        out["datasheet_dense_bf16_flops"] = peaks[0] if peaks and dtype == torch.bfloat16 else None
    else:
        out |= {"device_name": platform.processor() or "cpu", "threads": torch.get_num_threads()}
        out["datasheet_dense_bf16_flops"] = None
    side = MATMUL_SIDE[device.type]
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    times = _timed(lambda: a @ b, 3, MATMUL_REPEATS, device)
    out["matmul_side"] = side
    out["matmul_flops"] = 2 * side**3 / statistics.fmean(times)
    print(
        f"env: {out.get('device_name')}, torch {out['torch']}, {side}^3 {args.dtype} matmul "
        f"{out['matmul_flops'] / TERA:.3g} TFLOP/s",
        flush=True,
    )
    return out


def row_stream(args: argparse.Namespace, size: str) -> dict:
    from rest_lightning.generation import build_generator, build_models, resolution_of
    from rest_lightning.sizes import check_size
    from rest_lightning.streaming.benchmark import format_report, run_benchmark

    cfg = _compose_bench(
        size, args.device, args.dtype, [f"chunks={args.chunks}", "out=null", *args.bench_override]
    )
    check_size(cfg)
    start = time.perf_counter()
    models = build_models(cfg)
    generator = build_generator(cfg, models)
    build_s = time.perf_counter() - start
    side = resolution_of(cfg, generator)
    report = run_benchmark(
        generator, (side, side), cfg.chunks, cfg.warmup_chunks, cfg.speedup_repeats, cfg.peak_size, cfg.peak_repeats
    )
    print(format_report(report), flush=True)
    out = report.to_dict()
    steps = report.steps
    dit_on_latency_path = report.dit_chunk_cached_s * steps / (steps + 1)
    out |= {
        "size": size,
        "warmup_chunks": cfg.warmup_chunks,
        "speedup_repeats": cfg.speedup_repeats,
        "compile": cfg.stream.compile,
        "build_s": build_s,
        "dit_share_of_latency_p50": dit_on_latency_path / report.chunk_latency_s["p50"],
    }
    return out


def _train_inputs(cfg, batch: int, device: torch.device):
    """Latents of a ``CLIP_SECONDS`` clip at the size's resolution; returns tensors and the token count."""
    from hydra.utils import instantiate

    from rest_lightning.sizes import check_size

    vae_config = instantiate(cfg.model.vae, _convert_="object")
    video_frames = round(CLIP_SECONDS * cfg.model.audio.fps)
    frames = 1 + (video_frames - 1) // vae_config.temporal_compression  # the clip's latent frames
    grid = check_size(cfg).resolution // vae_config.spatial_compression
    channels, audio_tokens = vae_config.latent_channels, cfg.model.audio.n_audio_tokens
    g = None if device.type == "meta" else torch.Generator(device).manual_seed(0)  # meta: FLOP counting only

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    inputs = {
        "latents": randn(batch, channels, frames, grid, grid),
        "timesteps": torch.rand(batch, frames, generator=g, device=device),
        "audio": randn(batch, frames, audio_tokens, cfg.model.dit.audio_dim),
        "ref": randn(batch, channels, 1, grid, grid),
    }
    target = randn(batch, channels, frames, grid, grid)
    # tokens through the DiT: the clip's latent frames and the reference frame, grid^2 each
    tokens = batch * (frames + 1) * grid * grid
    return inputs, target, tokens, frames, grid


def teacher_step_flops(cfg, batch: int) -> tuple[int, int]:
    """Model FLOPs and tokens of one teacher forward + backward at ``batch``, counted by
    ``FlopCounterMode`` on the meta device: no compute, the same count on any machine (on CPU a real
    pass would miss attention, whose CPU kernel the counter does not know), no checkpoint recompute."""
    from hydra.utils import instantiate

    from rest_lightning.models.attention import AttentionPattern
    from rest_lightning.models.dit import DiT

    meta = torch.device("meta")
    config = instantiate(cfg.model.dit, _convert_="object")
    with meta:
        dit = DiT(dataclasses.replace(config, activation_checkpointing=False))
    inputs, _, tokens, _, _ = _train_inputs(cfg, batch, meta)
    with FlopCounterMode(display=False) as counter:
        dit(pattern=AttentionPattern.bidirectional(), **inputs).float().square().mean().backward()
    return counter.get_total_flops(), tokens


def _train_run(model, opt, cfg, batch: int, args: argparse.Namespace, flops: int) -> dict:
    """Time one (model, batch) teacher step of ``flops`` model FLOPs (``teacher_step_flops``)."""
    from rest_lightning.models.attention import AttentionPattern
    from rest_lightning.models.dit import count_parameters

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    pattern = AttentionPattern.bidirectional()  # the teacher's (stages/teacher.py)
    inputs, target, tokens, frames, grid = _train_inputs(cfg, batch, device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            velocity = model(pattern=pattern, **inputs)
        (velocity.float() - target).square().mean().backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _timed(step, args.train_warmup, args.train_steps, device)
    step_s = statistics.median(times)
    params = count_parameters(model)
    run = {
        "activation_checkpointing": model.config.activation_checkpointing,
        "batch": batch,
        "latent_frames": frames,
        "grid": grid,
        "tokens": tokens,
        "step_s": step_s,
        "step_s_all": times,
        "tokens_per_s": tokens / step_s,
        "model_flops": flops,
        "six_n_tokens": 6 * params * tokens,
        "achieved_flops": flops / step_s,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
    for key, peak in (("mfu_datasheet", args.peak_flops), ("mfu_matmul", args.matmul_flops)):
        run[key] = flops / step_s / peak if peak else None
    return run


def row_train(args: argparse.Namespace, size: str) -> dict:
    from hydra.utils import instantiate

    from rest_lightning.models.dit import DiT, count_parameters
    from rest_lightning.stages.optim import DiffusionOptimConfig

    device = torch.device(args.device)
    cfg = _compose_bench(size, args.device, args.dtype, args.bench_override)
    config = instantiate(cfg.model.dit, _convert_="object")
    optim = DiffusionOptimConfig()
    out = {
        "size": size,
        "dtype": f"{args.dtype} autocast",
        "configured_activation_checkpointing": config.activation_checkpointing,
        "runs": [],
    }
    flops = {batch: teacher_step_flops(cfg, batch)[0] for batch in args.train_batch}
    for ac in [False, True] if config.activation_checkpointing else [False]:
        torch.manual_seed(0)  # this child process runs nothing else: no RNG state to restore
        with torch.device(device):  # built where it runs: a 2B model initialises in seconds
            model = DiT(dataclasses.replace(config, activation_checkpointing=ac)).train()
        out["parameters"] = count_parameters(model)
        opt = torch.optim.AdamW(
            model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
        )
        for batch in args.train_batch:
            try:
                run = _train_run(model, opt, cfg, batch, args, flops[batch])
                mfu = f"{run['mfu_datasheet']:.1%}" if run["mfu_datasheet"] else "n/a"
                print(
                    f"train:{size} ac={ac} B={batch}: {run['step_s'] * 1e3:.1f} ms/step, "
                    f"{run['tokens_per_s']:,.0f} tok/s, {run['achieved_flops'] / TERA:.1f} TFLOP/s, MFU {mfu}",
                    flush=True,
                )
            except Exception as err:  # noqa: BLE001 - one failed batch size leaves the others
                run = {"activation_checkpointing": ac, "batch": batch, "error": _one_line(err)}
                print(f"train:{size} ac={ac} B={batch}: FAILED {run['error']}", flush=True)
            out["runs"].append(run)
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        model, opt = None, None  # frees this variant before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def row_flops(args: argparse.Namespace, size: str) -> dict:
    """Model FLOPs of the size's work, counted by ``FlopCounterMode`` on the meta device (no compute,
    so it runs anywhere in seconds): a teacher step at batch 1 (``_train_inputs``), one DiT chunk call
    with a full cache (``cache_speedup``'s set-up; a chunk costs ``steps`` of them plus the clean pass),
    and the VAE's streaming decode of the first and of a later chunk."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rest_lightning.models.dit import DiT
    from rest_lightning.models.vae import CausalVideoVAE
    from rest_lightning.sizes import check_size
    from rest_lightning.streaming import StreamConfig
    from rest_lightning.streaming.cache import IDContextCache
    from rest_lightning.streaming.rollout import cache_shape

    meta = torch.device("meta")
    cfg = _compose_bench(size, args.device, args.dtype, args.bench_override)
    stream = StreamConfig(**OmegaConf.to_container(cfg.stream))
    config = dataclasses.replace(
        instantiate(cfg.model.dit, _convert_="object"), activation_checkpointing=False
    )
    vae_config = instantiate(cfg.model.vae, _convert_="object")
    with meta:
        dit, vae = DiT(config), CausalVideoVAE(vae_config).eval()
    step_flops, tokens = teacher_step_flops(cfg, 1)
    grid = check_size(cfg).resolution // vae_config.spatial_compression
    out = {"size": size, "teacher_step_flops_b1": step_flops, "teacher_tokens_b1": tokens}
    cf, window, steps = stream.chunk_frames, stream.window, len(stream.timesteps)
    shape = cache_shape(config, 1, (grid, grid), cf)
    cache = IDContextCache(stream.cache_config(), shape, torch.float32, meta)
    latents = torch.empty(1, config.latent_channels, cf, grid, grid, device=meta)
    audio = torch.empty(1, cf, cfg.model.audio.n_audio_tokens, config.audio_dim, device=meta)
    clean = torch.zeros(1, cf, device=meta)
    dit.eval()
    with torch.no_grad():
        cache.set_id_sink(dit.encode_id_sink(latents[:, :, :1]))
        for _ in range(window):
            cache.write(dit.forward_chunk(latents, clean, audio, cache.read(), stream.pattern()).kv)
        with FlopCounterMode(display=False) as counter:
            dit.forward_chunk(latents, clean, audio, cache.read(), stream.pattern())
        out["dit_call_flops"] = counter.get_total_flops()
        out["dit_chunk_flops"] = out["dit_call_flops"] * (steps + 1)  # steps denoising calls + the clean pass
        state = vae.new_decode_state()
        for name in ("vae_first_chunk_flops", "vae_chunk_flops"):
            with FlopCounterMode(display=False) as counter:
                frames = vae.decode_step(latents, state)
            out[name] = counter.get_total_flops()
    out["video_frames_per_chunk"] = frames.shape[2]
    out["resolution"] = check_size(cfg).resolution
    print(
        f"flops:{size}: teacher step (B=1, {tokens} tokens) {out['teacher_step_flops_b1'] / TERA:.3g} TFLOP; "
        f"chunk: DiT {out['dit_chunk_flops'] / TERA:.3g} + VAE decode {out['vae_chunk_flops'] / TERA:.3g} TFLOP",
        flush=True,
    )
    return out


ROWS = {"env": row_env, "stream": row_stream, "train": row_train, "flops": row_flops}


# --- the parent: rows in subprocesses, the table, the JSON ----------------------------------------------


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:400]


def _run_child(args: argparse.Namespace, row: str, limit_s: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            row,
            "--result",
            str(result),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--chunks",
            str(args.chunks),
            "--train-warmup",
            str(args.train_warmup),
            "--train-steps",
            str(args.train_steps),
            "--train-batch",
            *map(str, args.train_batch),
            *extra,
        ]
        for override in args.bench_override:
            cmd += ["--bench-override", override]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=limit_s, cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {limit_s:.0f} s", "wall_s": time.perf_counter() - start}
        wall = time.perf_counter() - start
        if result.is_file():
            return json.loads(result.read_text()) | {"wall_s": wall}
        return {"error": f"child exited {proc.returncode} without a result", "wall_s": wall}


def _run_pytest(args: argparse.Namespace, limit_s: float, out_dir: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        f"--timeout={PYTEST_TIMEOUT_S}",
        "tests",
    ]
    start = time.perf_counter()
    log = out_dir / "pytest_gpu.log"
    try:
        proc = subprocess.run(cmd, timeout=limit_s, cwd=REPO, capture_output=True, text=True)
    except subprocess.TimeoutExpired as err:
        log.write_text(
            (err.stdout or b"").decode(errors="replace")
            if isinstance(err.stdout, bytes)
            else (err.stdout or "")
        )
        return {"error": f"timed out after {limit_s:.0f} s", "wall_s": time.perf_counter() - start}
    log.write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    print(f"pytest -m gpu: exit {proc.returncode}: {summary}", flush=True)
    return {"returncode": proc.returncode, "summary": summary, "wall_s": time.perf_counter() - start}


def _write_json(path: Path, results: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def parent(args: argparse.Namespace) -> int:
    out_dir = Path(args.out or os.environ.get("OUT") or "gpu_check_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget_s
    rows = (
        ["env"]
        + [f"stream:{s}" for s in STREAM_SIZES[args.size]]
        + [f"train:{s}" for s in STREAM_SIZES[args.size]]
    )
    rows += [f"flops:{s}" for s in STREAM_SIZES[args.size]]
    rows += ["pytest"] if args.pytest else []
    if args.rows:
        rows = [row for row in rows if row in args.rows or row.split(":", 1)[0] in args.rows]
    if args.size == "tiny":
        print(
            "gpu_check: --size tiny is the reduced (smoke) version: tiny models, not the paper's sizes",
            flush=True,
        )
    results: dict = {}
    path = out_dir / "gpu_check.json"
    for row in rows:
        kind = row.split(":", 1)[0]
        limit = min(ROW_LIMIT_S[kind], deadline - time.perf_counter())
        if limit < 1:
            results[row] = {"error": "skipped: --budget-s spent"}
            print(f"{row}: skipped (budget spent)", flush=True)
            continue
        print(f"--- {row} (limit {limit:.0f} s)", flush=True)
        try:
            if kind == "pytest":
                results[row] = _run_pytest(args, limit, out_dir)
            else:
                extra = []
                env = results.get("env", {})
                if kind == "train":
                    extra = [
                        "--peak-flops",
                        str(env.get("datasheet_dense_bf16_flops") or 0),
                        "--matmul-flops",
                        str(env.get("matmul_flops") or 0),
                    ]
                results[row] = _run_child(args, row, limit, extra)
        except Exception as err:  # noqa: BLE001 - one failed row leaves the others
            results[row] = {"error": _one_line(err)}
        if "error" in results[row]:
            print(f"{row}: FAILED {results[row]['error']}", flush=True)
        else:
            print(f"{row}: done in {results[row].get('wall_s', 0):.1f} s", flush=True)
        _write_json(path, results)
    table = format_table(results)
    print("\n" + table, flush=True)
    (out_dir / "gpu_check.md").write_text(table + "\n")
    print(f"gpu_check: wrote {path}", flush=True)
    return 0


def child(args: argparse.Namespace) -> int:
    kind, _, size = args.child.partition(":")
    try:
        result = ROWS[kind](args, size) if size else ROWS[kind](args)
    except Exception as err:  # noqa: BLE001 - reported to the parent as the row's error
        traceback.print_exc(limit=3)
        result = {"error": _one_line(err)}
    _write_json(Path(args.result), result)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--size",
        choices=sorted(STREAM_SIZES),
        default="paper",
        help="paper: rest-bench sizes small and rest (dit_small, dit_rest); tiny: CPU smoke",
    )
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--chunks", type=int, default=30, help="chunks in the timed stream")
    parser.add_argument(
        "--bench-override",
        action="append",
        default=[],
        help="extra conf/bench.yaml override for the stream and train rows (repeatable)",
    )
    parser.add_argument("--train-batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--train-warmup", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--no-pytest", dest="pytest", action="store_false")
    parser.add_argument(
        "--rows", nargs="+", help="run only these rows or kinds (env, stream:rest, train, pytest)"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock for all rows together")
    parser.add_argument("--out", default=None, help="output folder (default $OUT, else ./gpu_check_out)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--peak-flops", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--matmul-flops", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
