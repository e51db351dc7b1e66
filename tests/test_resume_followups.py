"""Issue 14 follow-ups: a SLURM requeue resumes the job's own run whatever ``resume=`` it was submitted with,
and ``benchmarks/bench_drift.py`` starts clean each invocation.

The sbatch script is run by bash with a stub ``srun`` that records its arguments, and those arguments are
composed as the job composes them: what is checked is the ``resume`` value the job would train with on its
first start and on a requeue (``SLURM_RESTART_COUNT``), not the text of the script.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

import rest_lightning.launch.slurm as slurm
from rest_lightning.config import ConfigError, compose
from rest_lightning.training import train

REPO = Path(__file__).resolve().parent.parent
SLURM = ("experiment=tiny_vae", "data.cfg.root=/shards", "cluster=slurm", "cluster.submit=false",
         "cluster.gpus_per_node=0")


@pytest.fixture(autouse=True)
def _outside_slurm(monkeypatch):
    for var in [v for v in os.environ if v.startswith("SLURM")]:
        monkeypatch.delenv(var)
    monkeypatch.setattr(slurm, "_sbatch", _refuse_sbatch)


def _refuse_sbatch(script: Path) -> str:
    raise AssertionError("cluster.submit=false must not call sbatch")


def _checkpoint(path: Path, step: int) -> Path:
    """The header of a run's checkpoint: what resume=auto ranks by (vetting reads it weights-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    return path


def _zero_dir(path: Path, *, complete: bool) -> Path:
    """A DeepSpeed ZeRO checkpoint directory as the script sees it: complete once ``latest`` exists."""
    (path / "global_step4").mkdir(parents=True)
    if complete:
        (path / "latest").write_text("global_step4\n")
    return path


def job_resume(run: Path, tmp_path: Path, restart_count: int | None) -> str:
    """Run ``<run>/slurm/train.sbatch`` as SLURM would (first start, or requeue number ``restart_count``)
    with a stub srun, and return ``resume`` of the config the job composes from srun's arguments."""
    stub_bin = tmp_path / "stub_bin"
    stub_bin.mkdir(exist_ok=True)
    args_file = tmp_path / "srun_args.txt"
    (stub_bin / "srun").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {shlex.quote(str(args_file))}\n")
    (stub_bin / "srun").chmod(0o755)
    env = {"PATH": f"{stub_bin}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "42"}
    if restart_count is not None:
        env["SLURM_RESTART_COUNT"] = str(restart_count)
    proc = subprocess.run(["bash", str(run / "slurm" / "train.sbatch")], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    words = args_file.read_text().splitlines()
    assert words[:2] == ["--kill-on-bad-exit=1", "rest-train"], words
    job_cfg = compose("train", words[2:])
    assert job_cfg.run_dir == str(run)
    return job_cfg.resume


def test_resume_auto_keeps_one_srun_line_for_every_start(train_cfg, tmp_path):
    run = tmp_path / "run"
    train(train_cfg(*SLURM))
    script = (run / "slurm" / "train.sbatch").read_text()
    assert "$RESUME" not in script
    _checkpoint(run / "checkpoints" / "hpc_ckpt_1.ckpt", 3)
    assert job_resume(run, tmp_path, None) == job_resume(run, tmp_path, 1) == "auto"


def test_resume_never_starts_fresh_then_every_requeue_resumes_the_jobs_own_checkpoint(train_cfg, tmp_path):
    run = tmp_path / "run"
    train(train_cfg(*SLURM, "resume=never"))
    assert job_resume(run, tmp_path, None) == "never"
    assert job_resume(run, tmp_path, 0) == "never"
    assert job_resume(run, tmp_path, 1) == "never", "requeued before any save: nothing of its own to resume"
    _checkpoint(run / "checkpoints" / "nonfinite-step=00000002.ckpt", 2)
    assert job_resume(run, tmp_path, 1) == "never", "resume=auto ignores nonfinite-* files"
    _zero_dir(run / "checkpoints" / "last.ckpt", complete=False)
    assert job_resume(run, tmp_path, 1) == "never", "an interrupted ZeRO save (no latest) is no checkpoint"
    _checkpoint(run / "checkpoints" / "hpc_ckpt_1.ckpt", 3)
    assert job_resume(run, tmp_path, 1) == "auto", "Lightning's SIGUSR1 save: the requeue must continue it"
    assert job_resume(run, tmp_path, 2) == "auto"


def test_resume_never_requeue_sees_a_zero_directory(train_cfg, tmp_path):
    run = tmp_path / "run"
    train(train_cfg(*SLURM, "resume=never"))
    _zero_dir(run / "checkpoints" / "hpc_ckpt_1.ckpt", complete=True)
    assert job_resume(run, tmp_path, 1) == "auto"


def test_resume_path_applies_to_the_first_start_and_to_requeues_before_any_save(train_cfg, tmp_path):
    run = tmp_path / "run"
    elsewhere = _checkpoint(tmp_path / "other_run" / "checkpoints" / "step=00000004.ckpt", 4)
    train(train_cfg(*SLURM, f"resume='{elsewhere}'"))
    assert job_resume(run, tmp_path, None) == str(elsewhere)
    assert job_resume(run, tmp_path, 1) == str(elsewhere)
    _checkpoint(run / "checkpoints" / "step=00000006.ckpt", 6)
    assert job_resume(run, tmp_path, 1) == "auto"


def test_resume_never_on_a_used_run_directory_is_refused_at_submission(train_cfg, tmp_path):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "last.ckpt", 8)
    with pytest.raises(ConfigError, match=r"resume=never but run_dir=.* already holds checkpoints"):
        train(train_cfg(*SLURM, "resume=never"))
    assert not (run / "slurm").exists() and not (run / "config.yaml").exists()


def test_resume_path_refused_when_a_requeue_would_pick_another_checkpoint(train_cfg, tmp_path):
    """A requeue runs resume=auto: any checkpoint of the run directory that is newer than PATH, or PATH
    from elsewhere while the run directory holds one, would be resumed instead of the job's own."""
    run = tmp_path / "run"
    elsewhere = _checkpoint(tmp_path / "other_run" / "checkpoints" / "last.ckpt", 4)
    _checkpoint(run / "checkpoints" / "step=00000002.ckpt", 2)
    with pytest.raises(ConfigError, match=r"a requeue continues with resume=auto, which would pick .*step=00000002"):
        train(train_cfg(*SLURM, f"resume={elsewhere}"))
    older = _checkpoint(run / "checkpoints" / "step=00000001.ckpt", 1)  # a roll-back to step 1 of this run
    with pytest.raises(ConfigError, match=r"which would pick .*step=00000002"):
        train(train_cfg(*SLURM, f"resume='{older}'"))
    assert not (run / "slurm").exists()

    newest = run / "checkpoints" / "step=00000002.ckpt"
    train(train_cfg(*SLURM, f"resume='{newest}'"))  # the run directory's newest: what auto picks too
    assert job_resume(run, tmp_path, None) == str(newest)
    assert job_resume(run, tmp_path, 1) == "auto"


def test_a_resume_path_from_the_experiment_is_quoted_for_hydra():
    for value in ("/runs/x/checkpoints/step=00000004.ckpt", "/runs/a b's/last.ckpt", "/runs/plain.ckpt"):
        assert compose("train", [f"resume={slurm._hydra_quote(value)}"]).resume == value


def _bench_drift():
    spec = importlib.util.spec_from_file_location("bench_drift", REPO / "benchmarks" / "bench_drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_drift_removes_its_previous_run_and_nothing_else(tmp_path):
    bench = _bench_drift()
    previous = tmp_path / "drift" / "student" / "run"
    _checkpoint(previous / "checkpoints" / "last.ckpt", 40)
    (previous / "config.yaml").write_text("run_dir: x\n")
    (tmp_path / "drift" / "drift.json").write_text("{}\n")
    run_dir = bench.fresh_run_dir(tmp_path / "drift", "student")
    assert run_dir == previous and not previous.exists(), "a second invocation starts at step 0"
    assert (tmp_path / "drift" / "drift.json").exists()

    foreign = tmp_path / "drift" / "no_sink" / "run"
    (foreign / "notes").mkdir(parents=True)
    with pytest.raises(SystemExit, match="not a run directory of this benchmark"):
        bench.fresh_run_dir(tmp_path / "drift", "no_sink")
    assert (foreign / "notes").is_dir()
