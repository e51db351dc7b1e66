"""DeepSpeed ZeRO across SLURM nodes: 2-node jobs on the local cluster, requeued and resumed from their ZeRO checkpoint.

``experiment=tiny_teacher`` (one optimizer, as DeepSpeed needs) with the probe stage of ``slurm_probe.py`` on CPU
nodes: ``CPUDeepSpeedStrategy`` (gloo), one task per node, so every collective crosses the two nodes'
addresses. Each job is checked against an uninterrupted 2-node job of the same seed, and its final ZeRO
checkpoint is turned into one safetensors file by ``rest-ckpt export``, as a user would.
"""

from __future__ import annotations

import importlib
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_probe import first_divergence, job_wall_s, probe_records

from rest_lightning.checkpoint import ZERO_SAFE_GLOBALS, is_zero_checkpoint, zero_tag_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

JOB_TIMEOUT_S = 300  # a 2-node DeepSpeed job takes ~60 s here (deepspeed's import alone is ~10 s per task)
REQUEUE_TIMEOUT_S = 420  # + the ZeRO save, scontrol requeue, cred_expire=10 s, a second start
COMMON = (
    "experiment=tiny_teacher", "cluster.nodes=2", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1",
    "cluster.time=00:15:00", "trainer.log_every_n_steps=1", "stage._target_=slurm_probe.ProbeTeacherStage",
    "trainer.limit_val_batches=0", "checkpoint.every_n_steps=100", "trainer.max_steps=8",
)
ZERO = {"deepspeed_zero2": (), "deepspeed_zero3": ("stage.optim.ema_decay=null",)}  # conf/strategy/deepspeed_zero3.yaml


def max_abs_diff(a: object, b: object) -> float:
    """Largest |a - b| over the tensors of two nested states (dicts, lists, tensors, numbers, objects by their
    attributes); a structure, key, shape or non-tensor value that differs counts as infinitely different."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return float("inf")
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf")
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max((max_abs_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if type(a) is type(b) and hasattr(a, "__dict__"):  # e.g. DeepSpeed's loss scaler, which has no __eq__
        return max_abs_diff(vars(a), vars(b))
    return 0.0 if a == b else float("inf")


def zero_optimizer_states(ckpt: Path) -> list[object]:
    """Each rank's ZeRO optimizer partition (``*optim_states.pt`` in the tag folder ``latest`` names), loaded as
    weights only with the project's DeepSpeed allowlist (``ZERO_SAFE_GLOBALS``: the loss scaler and its kin)."""
    files = sorted(zero_tag_dir(ckpt).glob("*optim_states.pt"))
    assert files, f"no optimizer partitions in {zero_tag_dir(ckpt)}"
    classes = [getattr(importlib.import_module(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1])
               for name in sorted(ZERO_SAFE_GLOBALS)]
    with torch.serialization.safe_globals(classes):
        return [torch.load(f, map_location="cpu", weights_only=True)["optimizer_state_dict"] for f in files]


@pytest.mark.parametrize("strategy", list(ZERO))
def test_two_node_zero_job_requeues_and_resumes_to_the_weights_of_an_uninterrupted_run(
        slurm_cluster, tmp_path, tiny_shards, strategy):
    train = (*COMMON, f"data.cfg.root={tiny_shards}", f"strategy={strategy}", *ZERO[strategy])
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    t0 = time.monotonic()
    # The reference first: a submission takes seconds, and the interrupted job must not finish before the signal.
    # 2 s a batch on the interrupted job's first start only (slurm_probe), so the signal below lands mid-run.
    slurm_cluster.submit(*train, f"run_dir={reference}")
    slurm_cluster.submit(*train, "+stage.step_sleep_s=2", f"run_dir={interrupted}")
    job, ref_job = ((run / "slurm" / "job_id.txt").read_text().strip() for run in (interrupted, reference))
    assert f"strategy={strategy}" in (interrupted / "slurm" / "train.sbatch").read_text()
    err = interrupted / "slurm" / f"{job}.err"
    while not (err.exists() and re.search(r"step [1-9]\d*/", err.read_text())):
        assert time.monotonic() - t0 < JOB_TIMEOUT_S, f"no step >= 1 logged by job {job}: " + \
            (err.read_text()[-3000:] if err.exists() else "no .err yet")
        assert slurm_cluster.run("squeue", "-h", "-j", job).stdout.strip(), \
            f"job {job} left the queue before step 1: {err.read_text()[-3000:] if err.exists() else ''}"
        time.sleep(0.5)
    step1 = time.monotonic() - t0
    assert slurm_cluster.run("scancel", "--signal=USR1", job).returncode == 0
    slurm_cluster.wait_gone(job, REQUEUE_TIMEOUT_S)
    slurm_cluster.wait_gone(ref_job, JOB_TIMEOUT_S)

    out, ref_out = ((run / "slurm" / f"{j}.out").read_text() for run, j in ((interrupted, job), (reference, ref_job)))
    fields = slurm_cluster.job_fields(job)
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), \
        out[-1500:] + err.read_text()[-3000:]
    assert slurm_cluster.job_fields(ref_job)["JobState"] == "COMPLETED", \
        (reference / "slurm" / f"{ref_job}.err").read_text()[-3000:]
    hpc = interrupted / "checkpoints" / "hpc_ckpt_1.ckpt"
    assert is_zero_checkpoint(hpc), "the requeue signal's save is a ZeRO directory"
    assert f"resuming from {hpc}" in err.read_text()
    for rank in (0, 1):
        assert f"rank {rank} of 2" in err.read_text()

    # Every batch after the resume on the data, RNG, weights (ZeRO-3: each rank's partition) and scheduler state of
    # the uninterrupted job; the final weights (exported) and optimizer partitions equal to the last bit.
    divergence = first_divergence(probe_records(out), probe_records(ref_out))
    exported = {}
    for name, run in (("requeued", interrupted), ("reference", reference)):
        target = tmp_path / f"{name}.safetensors"
        proc = slurm_cluster.run("rest-ckpt", "export", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"out={target}",
                                 timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        exported[name] = load_file(target)
    assert exported["requeued"] and all(v.dtype == torch.float32 for v in exported["requeued"].values())
    diffs = {"weights": max_abs_diff(exported["requeued"], exported["reference"]),
             "optimizer": max_abs_diff(zero_optimizer_states(interrupted / "checkpoints" / "last.ckpt"),
                                       zero_optimizer_states(reference / "checkpoints" / "last.ckpt"))}
    print(f"\n{strategy} 2-node job {job}: {job_wall_s(out, job)} s from start to finish (USR1 at step >= 1, "
          f"{step1:.1f} s after the first submission; resumed from a ZeRO checkpoint); uninterrupted job {ref_job}: "
          f"{job_wall_s(ref_out, ref_job)} s; {len(exported['requeued'])} tensors exported; "
          "max abs difference, requeued vs uninterrupted: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    assert divergence is None and not any(diffs.values()), \
        f"{strategy}: the requeued job differs: {divergence or 'only in the final checkpoint'}; {diffs}"
