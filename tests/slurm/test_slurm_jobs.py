"""Real SLURM jobs on the local 2-node cluster, submitted through `rest-train ... cluster=slurm`.

The jobs train ``experiment=tiny_vae`` on the session's tiny shards (CPU, gloo, 1 task per node) with the probe stage of
``slurm_probe.py``, which prints one ``PROBE`` line per rank: what it trained on and what it ended with.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from slurm_probe import weights_digest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

JOB_TIMEOUT_S = 180  # a 2-node tiny job takes ~25 s on a 2-core machine (two Python + Lightning imports)
REQUEUE_TIMEOUT_S = 300  # + Lightning's hpc save, scontrol requeue, cred_expire=10 s, a second start
COMMON = (
    "experiment=tiny_vae", "cluster.nodes=2", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1",
    "cluster.time=00:10:00", "trainer.log_every_n_steps=1", "stage._target_=slurm_probe.ProbeVAEStage",
    "trainer.limit_val_batches=0",
)
PROBE_RE = re.compile(r"PROBE rank=(\d+) world=(\d+) first_step=(\d+) last_step=(\d+) data=(\w+) weights=(\w+)")


def probes(text: str) -> list[dict[str, str]]:
    keys = ("rank", "world", "first_step", "last_step", "data", "weights")
    return [dict(zip(keys, m, strict=True)) for m in PROBE_RE.findall(text)]


def ckpt_weights(path: Path) -> tuple[int, str]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = {k[len("vae."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("vae.")}
    return ckpt["global_step"], weights_digest(net)


@pytest.fixture(scope="module")
def two_node_job(slurm_cluster, tmp_path_factory, tiny_shards):
    """One job: `srun rest-doctor` as a cluster.setup preflight, then 6 DDP steps on 2 nodes."""
    run = tmp_path_factory.mktemp("slurm") / "run"
    t0 = time.monotonic()
    slurm_cluster.submit(*COMMON, f"data.cfg.root={tiny_shards}", "trainer.max_steps=6", f"run_dir={run}",
                         "cluster.setup=['srun rest-doctor timeout_s=30 num_nodes=2 devices=1']")
    job_id = (run / "slurm" / "job_id.txt").read_text().strip()
    slurm_cluster.wait_gone(job_id, JOB_TIMEOUT_S)
    print(f"\n2-node job {job_id}: submitted and finished in {time.monotonic() - t0:.1f} s")
    return run, job_id


def test_two_node_job_ranks_train_the_same_steps_to_identical_weights(slurm_cluster, two_node_job):
    run, job_id = two_node_job
    out = (run / "slurm" / f"{job_id}.out").read_text()
    fields = slurm_cluster.job_fields(job_id)
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), out[-2000:]
    script = (run / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert f"run_dir={run}" in script and "trainer.num_nodes=2" in script and "strategy=ddp" in script

    ranks = sorted(probes(out), key=lambda p: p["rank"])
    assert [p["rank"] for p in ranks] == ["0", "1"], out[-2000:]
    assert all(p["world"] == "2" and p["first_step"] == "0" and p["last_step"] == "6" for p in ranks)
    assert ranks[0]["data"] != ranks[1]["data"], "DDP's sampler must give each rank its own batches"
    assert ranks[0]["weights"] == ranks[1]["weights"], "gradients are all-reduced: weights must agree bitwise"
    step, digest = ckpt_weights(run / "checkpoints" / "last.ckpt")
    assert (step, digest) == (6, ranks[0]["weights"])


def test_doctor_under_two_nodes(two_node_job):
    run, job_id = two_node_job
    out = (run / "slurm" / f"{job_id}.out").read_text()
    for rank in (0, 1):
        assert f"[rank {rank}] launcher: slurm; rank {rank} of 2" in out
        assert f"[rank {rank}] all-reduce: sum of (rank + 1) = 3 (expected 3)" in out
        assert f"[rank {rank}] OK: no problems found" in out
    assert "[rank 0]   node 0 (n1): global ranks [0], local ranks [0]" in out
    assert "[rank 0]   node 1 (n2): global ranks [1], local ranks [0]" in out
    assert out.index("OK: no problems found") < out.index("PROBE"), "the preflight runs before training"


def test_usr1_checkpoints_requeues_and_resumes_to_max_steps(slurm_cluster, tmp_path, tiny_shards):
    run = tmp_path / "run"
    max_steps = 10
    # No periodic checkpoint: the only one before the finish is Lightning's hpc_ckpt, so the resumed
    # run must start from exactly its step. 0.4 s per step leaves time to signal mid-run.
    slurm_cluster.submit(*COMMON, f"data.cfg.root={tiny_shards}", f"trainer.max_steps={max_steps}",
                         "checkpoint.every_n_steps=100",
                         "+stage.step_sleep_s=0.4", f"run_dir={run}")
    job_id = (run / "slurm" / "job_id.txt").read_text().strip()
    err = run / "slurm" / f"{job_id}.err"
    t0 = time.monotonic()
    while not (err.exists() and re.search(r"step [1-9]\d*/", err.read_text())):
        assert time.monotonic() - t0 < JOB_TIMEOUT_S, f"no step >= 1 logged by job {job_id}"
        time.sleep(0.5)
    signalled = time.monotonic()
    assert slurm_cluster.run("scancel", "--signal=USR1", job_id).returncode == 0
    slurm_cluster.wait_gone(job_id, REQUEUE_TIMEOUT_S)
    print(f"\nrequeue job {job_id}: step 1 after {signalled - t0:.1f} s, finished {time.monotonic() - signalled:.1f} "
          "s after USR1")

    fields = slurm_cluster.job_fields(job_id)
    out = (run / "slurm" / f"{job_id}.out").read_text()
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), out[-2000:]
    assert f"=== batch start: job {job_id} restart 1" in out
    hpc_step, _ = ckpt_weights(run / "checkpoints" / "hpc_ckpt_1.ckpt")
    assert 1 <= hpc_step < max_steps
    assert f"resuming from {run / 'checkpoints' / 'hpc_ckpt_1.ckpt'}" in err.read_text()
    ranks = probes(out)
    assert len(ranks) == 2, "only the resumed run reaches the end of training"
    assert all(p["first_step"] == str(hpc_step) and p["last_step"] == str(max_steps) for p in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ckpt_weights(run / "checkpoints" / "last.ckpt") == (max_steps, ranks[0]["weights"])
