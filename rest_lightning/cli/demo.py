"""``rest-demo``: train the three REST stages on the built-in synthetic corpus and show that they learn.

Each step calls the same library function as its own CLI:

1. a synthetic talking-head corpus with ground truth (``rest-prep mode=synth``), enough speakers that the
   held-out test split has several;
2. prep to WebDataset shards, split by speaker (``rest-prep``);
3. stage 1, the causal VAE (``rest-train experiment=synthtalk_vae``);
4. the VAE's latents added to the shards (``rest-prep mode=encode``): stages 2-3 read them;
5. stage 2, the audio-to-video teacher (``experiment=synthtalk_teacher``);
6. stage 3, the ASD student distilled from it, streaming through the ID-Context Cache
   (``experiment=synthtalk_student``);
7. SynthTalk on the held-out speakers (``rest-eval protocol=synthtalk_v1``): ground truth, ground truth
   through the VAE, the teacher on independent clips, the student streamed for ``stream_seconds``. Writes
   ``table.md`` (printed), ``mouth.png`` (mouth opening over time: the audio's vs each row's) and
   ``side_by_side.mp4`` (every row for one test speaker, with its audio).

``seeds=[0,1,2]`` retrains every stage per seed on the same corpus and adds a table pooled over seeds
(``synthtalk/table.md``; each seed's own under ``synthtalk/seed<N>/``); ``ablations=true`` also trains the
no-ASD, no-Context-Cache and no-ID-Sink students (``ABLATIONS``) and scores them beside the student.

``budget=quick`` (the default, about 10 minutes on 2 cores) runs at 32 px; ``budget=full`` applies the
``full:`` section of ``conf/demo.yaml`` (more speakers, more steps). ``out_dir`` is the demo's own folder:
each run starts it afresh (a folder the demo did not make is refused, never deleted).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError, compose

log = logging.getLogger(__name__)

SUMMARY = "Train VAE, teacher and ASD student on the built-in synthetic corpus (CPU) and score them on held-out speakers."
MARKER = ".rest-demo"  # written into out_dir: only a folder holding it is ever cleared
BUDGETS = ("quick", "full")


def _fresh_out_dir(out: Path) -> None:
    """Start ``out`` empty: clear it when an earlier demo made it, refuse any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(f"out_dir={out} is not empty and was not made by rest-demo; give a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by rest-demo: the next run clears this folder\n")


def budget_settings(cfg: DictConfig) -> DictConfig:
    """The demo config of ``cfg.budget``: the top-level values, merged with ``full:`` when budget=full."""
    if cfg.budget not in BUDGETS:
        raise ConfigError(f"budget={cfg.budget!r} is not one of {', '.join(BUDGETS)}")
    settings = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "full"])
    return OmegaConf.merge(settings, cfg.full) if cfg.budget == "full" else settings


def _train(experiment: str, run_dir: Path, steps: int, seed: int, *overrides: str):
    from rest_lightning.training import train

    return train(compose("train", [
        f"experiment={experiment}", f"run_dir={run_dir}", f"seed={seed}", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}", f"checkpoint.every_n_steps={steps}", *overrides,
    ]))


# The ablation students (issue 12; the deltas of conf/experiment/student_no_*.yaml on synthtalk_student).
# Each streams with the cache it was trained with: the checkpoint decides it (stored_models.stream_config).
ABLATIONS = {
    "no_asd": ["stage.asd.weight=0.0", "stage.flow_matching.weight=1.0"],  # teacher-forced flow matching
    "no_context": ["stage.cache.use_context_cache=false"],
    "no_sink": ["stage.cache.use_id_sink=false"],
}


def _train_and_score(cfg: DictConfig, seed: int, shards: Path, out: Path, tag: str) -> dict[str, Path | None]:
    """Stages 3-7 for one training seed: VAE, its latents, teacher, student(s), SynthTalk into ``out/synthtalk/tag``."""
    from rest_lightning.cli.eval import run as run_eval
    from rest_lightning.cli.prep import run as run_prep_cli

    runs, latents, evaluation = out / "runs" / tag, out / "latents" / tag, out / "synthtalk" / tag
    clip = f"data.cfg.latent_frames={cfg.prep.latent_frames}"
    named = f" (seed {seed})" if tag else ""
    outputs: dict[str, Path | None] = {}

    log.info("[demo 3/7] stage 1: the causal VAE, %d steps%s", cfg.vae_steps, named)
    vae = _train("synthtalk_vae", runs / "vae", cfg.vae_steps, seed, f"data.cfg.root={shards}", clip)
    outputs["VAE checkpoint"] = vae.last_checkpoint

    log.info("[demo 4/7] the VAE's latents -> %s", latents)
    run_prep_cli(compose("prep", [
        "mode=encode", f"input={shards}", f"output={latents}", f"encode.vae={vae.last_checkpoint}",
        "encode.progress=false",
    ]))

    log.info("[demo 5/7] stage 2: the audio-to-video teacher, %d steps at lr %g%s", cfg.teacher_steps, cfg.teacher_lr,
             named)
    teacher = _train("synthtalk_teacher", runs / "teacher", cfg.teacher_steps, seed, f"data.cfg.root={latents}",
                     clip, f"stage.vae_checkpoint={vae.last_checkpoint}", f"stage.optim.lr={cfg.teacher_lr}")
    outputs["teacher checkpoint"] = teacher.last_checkpoint

    students = {"student": []} | (ABLATIONS if cfg.ablations else {})
    for name, overrides in students.items():
        what = "the ASD student (ID-Context Cache)" if name == "student" else f"ablation {name} ({' '.join(overrides)})"
        log.info("[demo 6/7] stage 3: %s, %d steps%s", what, cfg.student_steps, named)
        student = _train("synthtalk_student", runs / name, cfg.student_steps, seed, f"data.cfg.root={latents}",
                         clip, f"init_from={teacher.last_checkpoint}", f"stage.vae_checkpoint={vae.last_checkpoint}",
                         *overrides)
        outputs[f"{name} checkpoint"] = student.last_checkpoint

    log.info("[demo 7/7] SynthTalk on the held-out speakers: %.0f s streams%s", cfg.stream_seconds, named)
    ckpts = ", ".join(f"{name}: '{outputs[f'{name} checkpoint']}'" for name in ["teacher", *students])
    run_eval(compose("eval", [
        f"testset={shards}", "protocol=synthtalk_v1", f"out={evaluation}", f"vae_ckpt={vae.last_checkpoint}",
        f"ckpts={{{ckpts}}}", f"synthtalk.stream_seconds={cfg.stream_seconds}", f"synthtalk.seed={cfg.seed}",
        f"synthtalk.latent_frames={cfg.prep.latent_frames}", f"synthtalk.teacher_steps={cfg.eval_teacher_steps}",
    ]))
    outputs["SynthTalk table"] = evaluation / "table.md"
    outputs["mouth opening plot"] = evaluation / "mouth.png"
    outputs["side-by-side video"] = evaluation / "side_by_side.mp4"
    outputs["per-speaker scores"] = evaluation / "scores.json"
    return outputs


def _pooled_table(out: Path, seeds: Sequence[int]) -> Path:
    """``out/synthtalk/table.md``: every seed's speakers pooled per row, then lip-sync r seed by seed."""
    from eval.synthtalk import pool_runs

    return pool_runs({f"seed {s}": out / "synthtalk" / f"seed{s}" for s in seeds}, out / "synthtalk")


def _demo(cfg: DictConfig) -> None:
    from rest_lightning.cli.prep import run as run_prep_cli

    cfg = budget_settings(cfg)
    seeds = [int(s) for s in cfg.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={list(cfg.seeds)} must be a non-empty list of distinct training seeds")
    out = Path(cfg.out_dir).resolve()
    _fresh_out_dir(out)
    raw, shards = out / "raw", out / "shards"
    outputs: dict[str, Path | None] = {}
    started = time.perf_counter()

    log.info("[demo 1/7] synthetic talking-head corpus (%d speakers) -> %s", cfg.synth.n_speakers, raw)
    run_prep_cli(compose("prep", [
        "mode=synth", f"output={raw}", f"synth.seed={cfg.seed}", *(f"synth.{k}={v}" for k, v in cfg.synth.items()),
    ]))

    log.info("[demo 2/7] rest-prep -> %s", shards)
    run_prep_cli(compose("prep", [
        f"input={raw}", f"output={shards}", f"prep.seed={cfg.seed}", "prep.progress=false",
        *(f"prep.{k}={v}" for k, v in cfg.prep.items()),
    ]))
    outputs["shards (manifest.json)"] = shards

    if len(seeds) == 1:
        outputs |= _train_and_score(cfg, seeds[0], shards, out, "")
    else:
        for seed in seeds:
            outputs |= {f"{k} (seed {seed})": v for k, v in _train_and_score(cfg, seed, shards, out, f"seed{seed}").items()
                        if "checkpoint" not in k}
        outputs["SynthTalk table, pooled"] = _pooled_table(out, seeds)
    table = outputs.get("SynthTalk table, pooled") or outputs["SynthTalk table"]
    print("\n" + Path(table).read_text())
    print(f"rest-demo finished in {(time.perf_counter() - started) / 60:.1f} min. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:<32} {path}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-demo", "demo", SUMMARY, _demo, argv)


if __name__ == "__main__":
    sys.exit(main())
