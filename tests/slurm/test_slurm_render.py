"""`cluster=slurm` without a cluster: the rendered sbatch script, config conflicts, the in-job allocation check."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import rest_lightning.launch.slurm as slurm
from rest_lightning.config import ConfigError, compose
from rest_lightning.training import train

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NNODES", "SLURM_STEP_NUM_NODES", "SLURM_NTASKS",
              "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE",
              "SLURM_JOB_NUM_NODES", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_NAME")


@pytest.fixture(autouse=True)
def _outside_slurm(monkeypatch):
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)


def _refuse_sbatch(script: Path) -> str:
    raise AssertionError("cluster.submit=false must not call sbatch")


def test_submit_false_renders_the_script_and_the_job_recomposes_the_same_config(train_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "_sbatch", _refuse_sbatch)
    run = tmp_path / "run"
    cfg = train_cfg(
        "experiment=tiny_vae", "data.cfg.root=/shards", "cluster=slurm", "cluster.submit=false", "cluster.nodes=4",
        "cluster.gpus_per_node=8", "trainer.accelerator=gpu", "cluster.partition=gpu", "cluster.account=proj",
        "cluster.time=01:00:00", "cluster.cpus_per_task=6", "cluster.extra_sbatch=[--exclusive]",
        "cluster.setup=['module load cuda', 'source .venv/bin/activate']", "trainer.max_steps=7",
        "++init_from_key_map={model.: student.}", run_dir=run,
    )
    result = train(cfg)
    assert result.run_dir == run and result.global_step == 0 and result.last_checkpoint is None
    assert not (run / "slurm" / "job_id.txt").exists()
    assert (run / "config.yaml").exists(), "the run directory is fixed at submission"
    lines = (run / "slurm" / "train.sbatch").read_text().splitlines()
    expected = [
        "--job-name=tiny_vae", "--partition=gpu", "--account=proj", "--time=01:00:00", "--nodes=4",
        "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=6", "--mem=0", "--signal=SIGUSR1@90",
        "--requeue", "--open-mode=append", f"--chdir={Path.cwd()}", f"--output={run}/slurm/%j.out",
        f"--error={run}/slurm/%j.err", "--exclusive",
    ]
    assert [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")] == expected
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert lines.index("module load cuda") < lines.index("source .venv/bin/activate") < srun

    words = shlex.split(lines[srun])
    assert words[:3] == ["srun", "--kill-on-bad-exit=1", "rest-train"]
    job_cfg = compose("train", words[3:])  # what every rank of the job composes
    assert (job_cfg.run_dir, job_cfg.trainer.num_nodes, job_cfg.trainer.devices, job_cfg.strategy.name) == \
        (str(run), 4, 8, "ddp")
    assert list(job_cfg.overrides) == words[3:], "the job records the overrides it was composed with"
    same = OmegaConf.merge(cfg, {"trainer": {"num_nodes": 4, "devices": 8}, "strategy": {"name": "ddp"},
                                 "overrides": words[3:]})
    assert OmegaConf.to_container(job_cfg, resolve=True) == OmegaConf.to_container(same, resolve=True)


@pytest.mark.parametrize(("overrides", "message"), [
    (("cluster.gpus_per_node=8",), r"cluster.gpus_per_node=8 but trainer.accelerator=cpu"),
    (("cluster.gpus_per_node=0", "strategy=ddp_spawn"), r"strategy=ddp_spawn cannot run under SLURM"),
    (("cluster.gpus_per_node=0", "cluster.nodes=2", "trainer.num_nodes=3"), r"trainer.num_nodes=3 but cluster.nodes=2"),
    (("cluster.gpus_per_node=0", "cluster.array=4"), r"cluster.array=4 splits rest-prep's inputs"),
])
def test_cluster_and_trainer_numbers_that_disagree_are_refused(train_cfg, tmp_path, overrides, message):
    cfg = train_cfg("experiment=tiny_vae", "data.cfg.root=/shards", "cluster=slurm", "cluster.submit=false", *overrides)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("env", "message"), [
    ({"SLURM_NNODES": "2", "SLURM_NTASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"},
     r"trainer.num_nodes=1 but SLURM job 42 runs on 2 node\(s\)"),
    ({"SLURM_NNODES": "1", "SLURM_NTASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2"},
     r"trainer.devices=1 but SLURM job 42 runs 2 task\(s\) per node"),
    ({"SLURM_STEP_ID": None, "SLURM_NNODES": "1", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2"},
     r"not under srun"),
])
def test_inside_a_job_an_allocation_mismatch_is_an_error_at_start(train_cfg, tmp_path, monkeypatch, env, message):
    base = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "tiny_vae"}
    for var, value in {**base, **env}.items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    cfg = train_cfg("experiment=tiny_vae", "data.cfg.root=/shards", "cluster=slurm")  # trainer=cpu: 1 node, 1 device
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists(), "refused before the run directory is written"


def test_signal_lead_renders_into_the_requeue_signal(train_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "_sbatch", _refuse_sbatch)
    common = ("experiment=tiny_vae", "data.cfg.root=/shards", "cluster=slurm", "cluster.submit=false",
              "cluster.gpus_per_node=0")
    scripts = {}
    for name, extra in (("default", ()), ("short", ("cluster.time=00:02:00", "cluster.signal_lead_s=20"))):
        train(train_cfg(*common, *extra, run_dir=tmp_path / name))
        text = (tmp_path / name / "slurm" / "train.sbatch").read_text()
        scripts[name] = [line for line in text.splitlines() if line.startswith(("#SBATCH --signal", "#SBATCH --time"))]
    assert scripts["default"] == ["#SBATCH --time=24:00:00", "#SBATCH --signal=SIGUSR1@90"]
    assert scripts["short"] == ["#SBATCH --time=00:02:00", "#SBATCH --signal=SIGUSR1@20"]


@pytest.mark.parametrize(("overrides", "message"), [
    (("cluster.time=00:02:00", "cluster.signal_lead_s=120"),
     r"cluster.signal_lead_s=120 is not shorter than cluster.time=00:02:00 \(120 s\)"),
    (("cluster.time=1:30", "cluster.signal_lead_s=150"), r"not shorter than cluster.time=1:30 \(120 s\)"),
    (("cluster.signal_lead_s=0",), r"cluster.signal_lead_s=0 must be between 1 and 65535"),
    (("cluster.signal_lead_s=70000",), r"cluster.signal_lead_s=70000 must be between 1 and 65535"),
    (("cluster.time=2h",), r"cluster.time='2h' is not a SLURM time limit"),
])
def test_a_signal_lead_the_time_limit_cannot_hold_is_refused(train_cfg, tmp_path, overrides, message):
    cfg = train_cfg("experiment=tiny_vae", "data.cfg.root=/shards", "cluster=slurm", "cluster.submit=false",
                    "cluster.gpus_per_node=0", *overrides)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("text", "seconds"), [
    ("24:00:00", 86400), ("00:02:00", 120), ("2", 120), ("1:30", 120), ("00:00:30", 60), ("1-0", 86400),
    ("1-2:03", 93780), ("1-2:3:4", 93840), ("UNLIMITED", None), ("0", None),
])
def test_time_limit_in_seconds_reads_every_sbatch_form(text, seconds):
    assert slurm.time_limit_s(text) == seconds


def test_parse_tasks_per_node():
    assert slurm.parse_tasks_per_node("2(x3),1") == (2, 2, 2, 1)
    assert slurm.parse_tasks_per_node("8") == (8,)
    with pytest.raises(ValueError, match="cannot parse"):
        slurm.parse_tasks_per_node("two")


def test_prep_array_renders_tasks_and_a_merge_submitted_after_them(tmp_path, monkeypatch):
    from rest_lightning.cli.prep import run as prep_run

    calls = []

    def fake_sbatch(script: Path, *options: str) -> str:
        calls.append((script.name, options))
        return str(100 + len(calls))

    monkeypatch.setattr(slurm, "_sbatch", fake_sbatch)
    monkeypatch.chdir(tmp_path)
    user = ["input=videos", "output=shards", "cluster=slurm", "cluster.array=4", "cluster.cpus_per_task=3",
            "cluster.time=02:00:00", "cluster.setup=['source .venv/bin/activate']", "prep.workers=3"]
    sub = prep_run(compose("prep", user))
    assert calls == [("prep_tasks.sbatch", ()),
                     ("prep_merge.sbatch", ("--dependency=afterok:101", "--kill-on-invalid-dep=yes"))]
    assert (sub.array_job, sub.merge_job) == ("101", "102") and sub.slurm_dir == tmp_path / "shards" / "slurm"
    tasks, merge = sub.task_script.read_text(), sub.merge_script.read_text()
    for line in ("#SBATCH --array=0-3", "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=3", "#SBATCH --time=02:00:00",
                 "#SBATCH --requeue", f"#SBATCH --output={sub.slurm_dir}/%A_%a.out", "source .venv/bin/activate"):
        assert line in tasks, line
    assert "--array" not in merge and "#SBATCH --cpus-per-task=1" in merge

    srun = [line for line in tasks.splitlines() if line.startswith("srun ")][0]
    words = shlex.split(srun)
    assert words[:3] == ["srun", "--kill-on-bad-exit=1", "rest-prep"]
    assert f"input={tmp_path / 'videos'}" in words and f"output={tmp_path / 'shards'}" in words
    job_cfg = compose("prep", words[3:])  # what each array task composes: the user's config, step=task
    assert (job_cfg.step, job_cfg.cluster.array, job_cfg.prep.workers) == ("task", 4, 3)
    merge_words = shlex.split([line for line in merge.splitlines() if line.startswith("srun ")][0])
    assert merge_words[3:] == [*words[3:-1], "step=merge"]
    assert (sub.slurm_dir / "jobs.json").read_text().strip() == '{"array": "101", "merge": "102", "tasks": 4}'

    monkeypatch.setattr(slurm, "_sbatch", _refuse_sbatch)
    written = prep_run(compose("prep", [*user, "output=other", "cluster.submit=false"]))
    assert written.array_job is None and written.task_script.exists() and written.merge_script.exists()
