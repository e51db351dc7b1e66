"""Training throughput of the three SynthTalk stages on this machine (issue 12.5; not a test).

    PYTHONPATH=. python benchmarks/bench_synthtalk_train.py [--steps 300] [--budget quick|full] [--out bench_train_out]

Builds the demo's corpus (``--budget quick``: 64 speakers x 3 s, 32 px, tight crops; ``full``: the ``full:``
section of ``conf/demo.yaml``, as ``rest-demo budget=full`` would), then trains ``synthtalk_vae``,
``synthtalk_teacher`` (on that VAE's latents) and ``synthtalk_student`` (from that teacher) for ``--steps``
each, with the demo's batch sizes, and reads each run's telemetry (``logs/metrics.csv``): steps/s,
samples/s and the share of each step spent waiting for data, as medians over the logged steps after the
first 20% (warm-up). It prints what the demo's budgets (``conf/demo.yaml``, of the chosen budget) cost at those rates, so the
budgets are measured, not guessed. Figures depend on the CPU and on what else runs: run it alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from rest_lightning.cli.demo import budget_settings
from rest_lightning.config import compose
from rest_lightning.training import train

ROOT = Path(__file__).resolve().parents[1]


def telemetry(run_dir: Path, batch_size: int) -> dict[str, float]:
    """Medians of the logged training telemetry after the first 20% of logged steps."""
    rows = [r for r in csv.DictReader((run_dir / "logs" / "metrics.csv").open()) if r.get("train/samples_per_s")]
    rows = rows[len(rows) // 5:]
    samples = statistics.median(float(r["train/samples_per_s"]) for r in rows)
    wait = statistics.median(float(r["train/data_wait_fraction"]) for r in rows)
    return {"steps_per_s": samples / batch_size, "samples_per_s": samples, "data_wait_fraction": wait,
            "logged_steps": len(rows)}


def run_stage(experiment: str, run_dir: Path, steps: int, *overrides: str) -> tuple[Path, dict[str, float]]:
    cfg = compose("train", [
        f"experiment={experiment}", f"run_dir={run_dir}", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1", f"checkpoint.every_n_steps={steps}",
        "trainer.log_every_n_steps=5", *overrides,
    ])
    result = train(cfg)
    return result.last_checkpoint, telemetry(run_dir, int(cfg.data.cfg.batch_size))


def main() -> None:
    from rest_lightning.cli.prep import run as run_prep_cli

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per stage")
    parser.add_argument("--budget", choices=["quick", "full"], default="quick", help="the demo budget to measure")
    parser.add_argument("--out", default="bench_train_out", help="working folder (cleared when this script made it)")
    args = parser.parse_args()

    demo = OmegaConf.load(ROOT / "conf" / "demo.yaml")
    demo.budget = args.budget
    demo = budget_settings(demo)
    out = Path(args.out).resolve()
    if out.exists():
        if not (out / ".bench_synthtalk_train").exists():
            raise SystemExit(f"--out {out} exists and was not made by this benchmark")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ".bench_synthtalk_train").touch()
    raw, shards, latents = out / "raw", out / "shards", out / "latents"
    run_prep_cli(compose("prep", ["mode=synth", f"output={raw}", *(f"synth.{k}={v}" for k, v in demo.synth.items())]))
    run_prep_cli(compose("prep", [f"input={raw}", f"output={shards}", "prep.progress=false",
                                  *(f"prep.{k}={v}" for k, v in demo.prep.items())]))
    clip = f"data.cfg.latent_frames={demo.prep.latent_frames}"

    results: dict[str, dict[str, float]] = {}
    vae, results["vae"] = run_stage("synthtalk_vae", out / "vae", args.steps, f"data.cfg.root={shards}", clip)
    run_prep_cli(compose("prep", ["mode=encode", f"input={shards}", f"output={latents}", f"encode.vae={vae}",
                                  "encode.progress=false"]))
    teacher, results["teacher"] = run_stage("synthtalk_teacher", out / "teacher", args.steps,
                                            f"data.cfg.root={latents}", clip, f"stage.vae_checkpoint={vae}")
    _, results["student"] = run_stage("synthtalk_student", out / "student", args.steps, f"data.cfg.root={latents}",
                                      clip, f"init_from={teacher}", f"stage.vae_checkpoint={vae}")

    budgets = {"vae": demo.vae_steps, "teacher": demo.teacher_steps, "student": demo.student_steps}
    print(f"\nSynthTalk training throughput at {demo.prep.size} px, {args.steps} steps per stage "
          f"(medians after warm-up); budget={args.budget}")
    print(f"{'stage':<10}{'steps/s':>10}{'samples/s':>12}{'data wait':>12}{'demo steps':>12}{'demo min':>10}")
    for stage, r in results.items():
        minutes = budgets[stage] / r["steps_per_s"] / 60
        print(f"{stage:<10}{r['steps_per_s']:>10.2f}{r['samples_per_s']:>12.1f}{r['data_wait_fraction']:>12.1%}"
              f"{budgets[stage]:>12}{minutes:>10.1f}")
    (out / "throughput.json").write_text(json.dumps({"steps": args.steps, "budget": args.budget, "size": demo.prep.size,
                                                        "stages": results}, indent=2) + "\n")
    print(f"wrote {out / 'throughput.json'}")


if __name__ == "__main__":
    main()
