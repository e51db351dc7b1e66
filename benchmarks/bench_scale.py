"""Checkpoint save/load time and size per strategy, and 2-process DDP against 1 process (CPU, tiny configs).

    python benchmarks/bench_scale.py --shards SHARDS [--out scale.json]

Save/load: the tiny teacher (one optimizer, so every strategy takes it) trains 2 steps in one process under
``auto`` (a single .ckpt file), ``deepspeed_zero2`` and ``deepspeed_zero3`` (ZeRO directories, CPU test
path); then the full checkpoint is written ``--repeats`` times (``trainer.save_checkpoint``) and read back
(``strategy.load_checkpoint``), median seconds and bytes on disk reported, plus the fp32 consolidation of
a ZeRO directory (``checkpoint.load_zero_weights``, what export and init_from do).

Scaling: the tiny VAE trains ``--steps`` steps under 1 process and under ``strategy=ddp trainer.devices=2``
(gloo); the median per-step ``train/samples_per_s`` logged by the Telemetry callback (steps after the
first two) gives the step time; efficiency = samples/s (2 processes) / (2 x samples/s (1 process)). On a
2-core machine both ranks share the cores with the data loading, so this is a floor, not a promise.
Each measurement runs ``rest-train`` in its own subprocess; the figures go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rest_train(args: list[str]) -> None:
    env = {**os.environ, "MASTER_PORT": str(_free_port()), "CI": "1", "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "rest_lightning.cli.train", *args], env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"rest-train {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def measure_checkpoint(strategy: str, shards: str, repeats: int) -> dict:
    """In this process: train 2 steps under ``strategy``, then time saves and loads of the full state."""
    import lightning as L

    import rest_lightning.training as training
    from rest_lightning.config import compose

    timings: dict = {}

    class Timer(L.Callback):
        def on_train_end(self, trainer, pl_module):
            path = Path(trainer.default_root_dir) / "bench.ckpt"
            saves, loads = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                trainer.save_checkpoint(path)
                saves.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                trainer.strategy.load_checkpoint(path)
                loads.append(time.perf_counter() - t0)
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            timings.update(save_s=statistics.median(saves), load_s=statistics.median(loads),
                           bytes=sum(p.stat().st_size for p in files), path=str(path))

    with tempfile.TemporaryDirectory() as tmp:
        extra = ["stage.optim.ema_decay=null"] if strategy == "deepspeed_zero3" else []
        cfg = compose("train", ["experiment=tiny_teacher", f"data.cfg.root={shards}", f"strategy={strategy}",
                                "trainer.max_steps=2", "trainer.limit_val_batches=0", "logger=none",
                                f"run_dir={tmp}/run", *extra])
        original = training.build_callbacks
        training.build_callbacks = lambda c, r: [*original(c, r), Timer()]
        training.train(cfg)
        training.build_callbacks = original
        if strategy.startswith("deepspeed"):
            from rest_lightning.checkpoint import load_zero_weights

            t0 = time.perf_counter()
            state, _ = load_zero_weights(timings["path"])
            timings["consolidate_fp32_s"] = time.perf_counter() - t0
            timings["fp32_bytes"] = sum(v.numel() * v.element_size() for v in state.values())
    timings.pop("path")
    return timings


def measure_step_time(shards: str, devices: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = ["experiment=tiny_vae", f"data.cfg.root={shards}", f"trainer.max_steps={steps}",
                "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "logger=csv", f"run_dir={run}",
                f"checkpoint.every_n_steps={steps}"]
        if devices > 1:
            args += ["strategy=ddp", f"trainer.devices={devices}"]
        _rest_train(args)
        with open(run / "logs" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/samples_per_s")]
    rates = [float(r["train/samples_per_s"]) for r in rows[2:]]  # skip warm-up steps (LPIPS build, GAN start)
    batch = 2  # tiny_vae data.cfg.batch_size, per rank
    samples_per_s = statistics.median(rates)
    return {"devices": devices, "samples_per_s": samples_per_s, "step_s": batch * devices / samples_per_s,
            "steps_measured": len(rates),
            "data_wait_fraction": statistics.median(float(r["train/data_wait_fraction"]) for r in rows[2:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, help="a rest-prep output (32x32, latent_frames=2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one strategy, in-process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_checkpoint(args.one, args.shards, args.repeats)))
        return
    report: dict = {"checkpoint": {}, "scaling": {}}
    for strategy in ("auto", "deepspeed_zero2", "deepspeed_zero3"):
        env = {**os.environ, "MASTER_PORT": str(_free_port())}
        out = subprocess.run([sys.executable, __file__, "--shards", args.shards, "--repeats", str(args.repeats),
                              "--one", strategy], env=env, capture_output=True, text=True, check=True)
        report["checkpoint"][strategy] = json.loads(out.stdout.strip().splitlines()[-1])
    one = measure_step_time(args.shards, 1, args.steps)
    two = measure_step_time(args.shards, 2, args.steps)
    report["scaling"] = {"1_process": one, "2_process_ddp": two,
                         "efficiency": two["samples_per_s"] / (2 * one["samples_per_s"]),
                         "cpu_cores": os.cpu_count()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
