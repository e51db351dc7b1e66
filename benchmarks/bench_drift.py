"""Streaming drift over long streams: the ASD student against its ablations (issue 7's drift table).

From one trained tiny teacher and VAE (e.g. `make demo`'s), distils each variant for the same number of
steps with the tiny_student experiment plus the ablation's stage values (the ablation configs' own
deltas), then streams `--chunks` chunks of a validation clip through the real StreamingGenerator in the
stage's validation and prints the per-chunk drift curves it wrote (latent mean/std, LPIPS of each
chunk to the reference, cosine of the chunk latent to the reference latent), first vs last chunk.

    python benchmarks/bench_drift.py --shards demo_out/shards --teacher demo_out/runs/tiny_teacher/checkpoints/last.ckpt \
        --vae demo_out/runs/tiny_vae/checkpoints/last.ckpt --steps 40 --chunks 50 --out demo_out/drift

Every invocation measures from scratch: each variant trains in `<out>/<variant>/run` with resume=never,
and that run directory, left by an earlier invocation (finished or interrupted), is deleted first, so
running the same command twice gives a new table instead of being refused ("a run directory is one run")
or continuing the old run. Only `<out>/<variant>/run` folders holding a run's config.yaml are deleted;
anything else at that path stops the benchmark. The results are `<out>/drift.json` (overwritten).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from rest_lightning.config import compose
from rest_lightning.training import train

# The ablation experiments' stage deltas (conf/experiment/student_no_*.yaml) applied to tiny_student.
VARIANTS = {
    "student (ASD)": [],
    "no ASD (teacher-forced flow matching)": ["stage.asd.weight=0.0", "stage.flow_matching.weight=1.0"],
    "no ID-Sink": ["stage.cache.use_id_sink=false"],
}
SLUGS = {"student (ASD)": "student", "no ASD (teacher-forced flow matching)": "no_asd", "no ID-Sink": "no_sink"}
CURVES = ("latent_mean", "latent_std", "lpips_ref", "id_cos")


def fresh_run_dir(out: Path, slug: str) -> Path:
    """``<out>/<slug>/run`` with an earlier invocation's run removed, so this one starts at step 0."""
    run_dir = out / slug / "run"
    if run_dir.exists():
        if not (run_dir / "config.yaml").is_file():
            raise SystemExit(f"{run_dir} is not a run directory of this benchmark (no config.yaml): move it away "
                             "or pick another --out")
        print(f"removing the previous benchmark run {run_dir}")
        shutil.rmtree(run_dir)
    return run_dir


def run_variant(name: str, deltas: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    run_dir = fresh_run_dir(Path(args.out), SLUGS[name])
    cfg = compose("train", [
        "experiment=tiny_student", f"data.cfg.root={args.shards}", f"init_from={args.teacher}",
        f"stage.vae_checkpoint={args.vae}", "stage.random_teacher_ok=false", f"run_dir={run_dir}", "resume=never",
        f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
        f"checkpoint.every_n_steps={args.steps}", f"stage.validation.stream_chunks={args.chunks}",
        "stage.validation.stream_clips=1", "trainer.limit_val_batches=1", *deltas,
    ])
    result = train(cfg)
    drift = sorted((result.run_dir / "media").glob("drift_step*.json"))[-1]
    data = json.loads(drift.read_text())
    return {curve: data["curves"][curve][0] for curve in CURVES}  # the first (only) streamed clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--out", default="drift_out")
    args = parser.parse_args()

    results = {name: run_variant(name, deltas, args) for name, deltas in VARIANTS.items()}
    print(f"\nstreaming drift over {args.chunks} chunks ({args.steps} distillation steps each, tiny models, CPU)")
    header = f"{'variant':<40}" + "".join(f"{c + ' 0 -> last':>26}" for c in CURVES)
    print(header)
    for name, curves in results.items():
        cells = "".join(f"{f'{v[0]:.3f} -> {v[-1]:.3f}':>26}" for v in (curves[c] for c in CURVES))
        print(f"{name:<40}{cells}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "drift.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
