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
from slurm_probe import batch_marks, first_divergence, job_wall_s, probe_records, weights_digest

from rest_lightning.launch.slurm import SIGNAL_EARLY_S, time_limit_s

pytestmark = pytest.mark.slurm

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


def max_abs_diffs(a: Path, b: Path) -> dict[str, float]:
    """Largest |a - b| between two Lightning checkpoints, per state: the stage's weights (EMA apart), its EMA
    copy, and every optimizer's state tensors. Keys or shapes that differ count as infinitely different."""
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))

    def diff(x: dict, y: dict) -> float:
        if x.keys() != y.keys():
            return float("inf")
        worst = 0.0
        for key in x:
            u, v = x[key], y[key]
            if not isinstance(u, torch.Tensor):
                worst = max(worst, 0.0 if u == v else float("inf"))
            elif u.shape != v.shape:
                return float("inf")
            elif u.numel():
                worst = max(worst, (u.double() - v.double()).abs().max().item())
        return worst

    sa, sb = ca["state_dict"], cb["state_dict"]
    split = {"weights": lambda k: not k.startswith("ema."), "EMA": lambda k: k.startswith("ema.")}
    diffs = {name: diff({k: v for k, v in sa.items() if keep(k)}, {k: v for k, v in sb.items() if keep(k)})
             for name, keep in split.items()}
    def flat(optimizer: dict) -> dict:  # {"param.slot": tensor}, e.g. "3.exp_avg"
        return {f"{p}.{n}": t for p, slots in optimizer["state"].items() for n, t in slots.items()}

    oa, ob = ca["optimizer_states"], cb["optimizer_states"]
    diffs["optimizer"] = float("inf") if len(oa) != len(ob) else \
        max((diff(flat(x), flat(y)) for x, y in zip(oa, ob, strict=True)), default=0.0)
    return diffs


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


TIME_LIMIT = "00:02:00"  # SLURM's smallest useful limit: it counts whole minutes and tests them every 30 s
SIGNAL_LEAD_S = 20  # SIGUSR1 70-100 s into the job: after a 2-node start (~25 s here), 20 s before the kill
STEP_S = 10  # one first-start step at most (4.5 s of sleep + compute beside the reference job): the checkpoint
# is written at the end of the step the signal falls in (launch/requeue.py)


def test_time_limit_signal_requeues_to_the_weights_of_an_uninterrupted_run(slurm_cluster, tmp_path, tiny_shards):
    """The requeue path as production meets it: no hand-sent signal, only ``--time`` and ``--signal``. A job whose
    time limit ends mid-run is signalled by SLURM, checkpoints and requeues; its resumed start must train every
    remaining batch exactly as an uninterrupted job of the same seed does: same data, RNG, weights, EMA, optimizer
    and scheduler at every batch, and the same final checkpoint (max abs difference 0)."""
    max_steps = 24
    # Only the first start sleeps (slurm_probe: 4.5 s a batch, 108 s in all), so it is still training when the
    # signal comes however fast the nodes start; the requeued start and the reference run at full speed.
    train = (*COMMON, f"data.cfg.root={tiny_shards}", f"trainer.max_steps={max_steps}", "checkpoint.every_n_steps=100")
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    slurm_cluster.submit(*train, f"cluster.time={TIME_LIMIT}", f"cluster.signal_lead_s={SIGNAL_LEAD_S}",
                         "+stage.step_sleep_s=4.5", f"run_dir={interrupted}")
    slurm_cluster.submit(*train, f"run_dir={reference}")  # runs beside it when the nodes have a CPU to spare
    t0 = time.monotonic()
    job, ref_job = ((run / "slurm" / "job_id.txt").read_text().strip() for run in (interrupted, reference))
    assert f"#SBATCH --signal=SIGUSR1@{SIGNAL_LEAD_S}" in (interrupted / "slurm" / "train.sbatch").read_text()
    slurm_cluster.wait_gone(job, REQUEUE_TIMEOUT_S)
    job_s = time.monotonic() - t0
    slurm_cluster.wait_gone(ref_job, JOB_TIMEOUT_S)

    out = (interrupted / "slurm" / f"{job}.out").read_text()
    fields = slurm_cluster.job_fields(job)
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), out[-2000:]
    assert int(fields["Restarts"]) >= 1, f"job {job} finished without being requeued: {out[-2000:]}"
    ref_out = (reference / "slurm" / f"{ref_job}.out").read_text()
    assert slurm_cluster.job_fields(ref_job)["JobState"] == "COMPLETED", ref_out[-2000:]

    # The signal came from the time limit: between LEAD and LEAD + SIGNAL_EARLY_S before it (the hpc checkpoint
    # is written at the end of the step the signal falls in; the batch start line within a second of the start).
    hpc = interrupted / "checkpoints" / "hpc_ckpt_1.ckpt"
    signalled_after = hpc.stat().st_mtime - batch_marks(out, job)[0][1]
    limit = time_limit_s(TIME_LIMIT)
    print(f"\ntime-limit job {job}: {job_wall_s(out, job)} s from start to finish, {job_s:.1f} s after submission "
          f"(restarts {fields['Restarts']}); SIGUSR1 {signalled_after:.0f} s after the start of a {limit} s limit "
          f"(lead {SIGNAL_LEAD_S} s); uninterrupted job {ref_job}: {job_wall_s(ref_out, ref_job)} s")
    assert limit - SIGNAL_LEAD_S - SIGNAL_EARLY_S - 2 <= signalled_after <= limit - SIGNAL_LEAD_S + STEP_S + 3, \
        f"the checkpoint was written {signalled_after:.0f} s into the job, not by the time-limit signal"
    hpc_step, _ = ckpt_weights(hpc)
    assert 1 <= hpc_step < max_steps
    assert f"resuming from {hpc}" in (interrupted / "slurm" / f"{job}.err").read_text()

    diffs = max_abs_diffs(interrupted / "checkpoints" / "last.ckpt", reference / "checkpoints" / "last.ckpt")
    print("max abs difference, requeued vs uninterrupted, step "
          f"{max_steps}: " + ", ".join(f"{name} {value:.3g}" for name, value in diffs.items()))
    divergence = first_divergence(probe_records(out), probe_records(ref_out))
    assert divergence is None and not any(diffs.values()), \
        f"resumed from step {hpc_step}, the requeued job differs: " \
        f"{divergence or 'only in the final checkpoint'}; {diffs}"
    assert ckpt_weights(interrupted / "checkpoints" / "last.ckpt")[0] == max_steps
