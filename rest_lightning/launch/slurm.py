"""``cluster=slurm``: render an sbatch script into the run directory, submit it, and check the allocation.

One command, two places (DESIGN §7)::

    rest-train experiment=NAME cluster=slurm cluster.nodes=N cluster.gpus_per_node=G [key=value ...]

- **Outside a job** (no ``SLURM_JOB_ID``): :func:`submit` fixes the run directory once, writes
  ``<run_dir>/slurm/train.sbatch`` (``--nodes=N``, ``--ntasks-per-node`` = devices per node,
  ``--signal=SIGUSR1@LEAD`` with LEAD = ``cluster.signal_lead_s`` (90), ``--requeue``, output files in
  ``<run_dir>/slurm/``) whose ``srun`` line is the same ``rest-train`` with the same overrides plus
  ``run_dir=<that folder>``, ``trainer.num_nodes``, ``trainer.devices`` (and ``strategy=ddp`` where it was
  ``auto``), then runs ``sbatch --parsable`` and records the job id. ``cluster.submit=false`` writes and
  logs the script without submitting it.
- **Inside the job** (``SLURM_JOB_ID`` set): :func:`check_allocation` compares the config's
  ``trainer.num_nodes``/``trainer.devices`` with what SLURM allocated and refuses a mismatch with a
  message, before any process group could wait forever for a rank that does not exist; training then
  goes on and Lightning's ``SLURMEnvironment`` sets the ranks. On ``SIGUSR1`` (LEAD to LEAD + 60 s before
  the time limit, or ``scancel --signal=USR1 JOBID``) every rank writes ``checkpoints/hpc_ckpt_N.ckpt`` at
  the end of that training step and rank 0 runs ``scontrol requeue`` (``launch/requeue.py``); the requeued
  job starts the same ``srun`` line with ``resume=auto``, which picks the newest checkpoint by step (:func:`rest_lightning.checkpoint.find_resume_checkpoint`).

**Resume across requeues.** The submitted ``resume=`` applies to the job's first start; every requeue
(``SLURM_RESTART_COUNT`` > 0) must continue the job's own progress. With ``resume=auto`` (the default) the
srun line is the same for both. With ``resume=never`` or ``resume=PATH`` the script picks the value per
start (:func:`_resume_lines`): the submitted one on the first start, ``resume=auto`` on a requeue once the
run directory holds a checkpoint, the submitted one again when the job was requeued before it saved any
(a node failure, a preemption). Kept as-is, ``resume=never`` would refuse every requeue (the run directory
holds the job's checkpoints) and ``resume=PATH`` would go back to PATH, losing the job's steps. For that
choice to be right, :func:`submit` refuses what would make ``resume=auto`` pick another run's file on a
requeue: ``resume=never`` on a run directory that holds checkpoints, and ``resume=PATH`` where the run
directory's newest checkpoint is not PATH itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rest_lightning.config import ConfigError, compose
from rest_lightning.run_dir import RunDir
from rest_lightning.train_config import validate_train_config

log = logging.getLogger(__name__)

JOB_ID_ENV = "SLURM_JOB_ID"
# launch/requeue.py's handler of this signal writes hpc_ckpt_N.ckpt and requeues; SLURM sends it
# cluster.signal_lead_s (DESIGN §7: 90 s) before the time limit, as --signal=SIGUSR1@LEAD.
REQUEUE_SIGNAL = "SIGUSR1"
# slurmctld tests time limits every 30 s and sends the signal when the lead will have been reached by the next
# test, so it arrives between LEAD and LEAD + 60 s before the limit (sbatch(1), --signal).
SIGNAL_EARLY_S = 60
MAX_SIGNAL_LEAD_S = 0xFFFF  # sbatch stores the lead in 16 bits
SCRIPT_NAME = "train.sbatch"
JOB_ID_FILE = "job_id.txt"
SUBMISSIONS_FILE = "submissions.txt"
SBATCH_TIMEOUT_S = 60  # sbatch answers in well under a second; a wedged controller must not hang the CLI
# Lightning ignores SLURM for jobs with these names (SLURMEnvironment.detect): every task would train
# alone as rank 0 of a world of 1.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def in_slurm_job(env: Mapping[str, str] | None = None) -> bool:
    """True inside a SLURM allocation (batch script, ``srun`` step or ``salloc`` shell)."""
    return JOB_ID_ENV in (os.environ if env is None else env)


def devices_per_node(cfg: DictConfig) -> int:
    """Processes per node: one per GPU (``cluster.gpus_per_node``), or one on a CPU node."""
    return cfg.cluster.gpus_per_node if cfg.cluster.gpus_per_node > 0 else 1


# --- submission (outside a job) ---------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmSubmission:
    """What :func:`submit` did: the run directory, the script, and the job id (None when not submitted)."""

    run_dir: Path
    script: Path
    job_id: str | None
    overrides: tuple[str, ...]

    @property
    def output(self) -> Path:
        """The job's stdout (stderr is beside it as ``<job_id>.err``); ``%j`` until submitted."""
        return self.script.parent / f"{self.job_id or '%j'}.out"


def submit(cfg: DictConfig, user_overrides: Sequence[str] | None = None) -> SlurmSubmission:
    """Fix the run directory, render ``train.sbatch`` into it, and submit it unless ``cluster.submit=false``.

    Args:
        cfg: the composed ``conf/train.yaml`` with ``cluster.kind == "slurm"``.
        user_overrides: the overrides ``cfg`` was composed with; ``None`` takes the ones compose()
            recorded in ``cfg.overrides``. Either way the list is checked by composing it again.

    Raises:
        ConfigError: a cluster/trainer combination that cannot run, or ``sbatch`` refusing the job.
    """
    _check_cluster_config(cfg)
    run_dir = RunDir.resolve(cfg)
    user = job_overrides(cfg, user_overrides)
    additions = _job_additions(cfg, run_dir)
    added_keys = {_override_key(a) for a in additions}
    srun_overrides = [o for o in user if _override_key(o) not in added_keys]
    srun_overrides += additions
    first_resume = None
    if cfg.resume != "auto":
        _check_requeue_resume(cfg, run_dir)
        # The script passes resume= per start (_resume_lines); the user's own spelling is kept for the first.
        first_resume = next((o for o in reversed(user) if _override_key(o) == "resume"),
                            f"resume={_hydra_quote(cfg.resume)}")
        srun_overrides = [o for o in srun_overrides if _override_key(o) != "resume"]
    # The job composes exactly this list: compose it here too, so a line that cannot run fails now.
    validate_train_config(compose("train", [*srun_overrides, *([first_resume] if first_resume else [])]))

    run_dir.prepare(OmegaConf.merge(cfg, {"run_dir": str(run_dir.path)}))
    slurm_dir = run_dir.path / "slurm"
    slurm_dir.mkdir(exist_ok=True)
    script = slurm_dir / SCRIPT_NAME
    script.write_text(render_sbatch(cfg, run_dir, srun_overrides, cwd=Path.cwd(), first_resume=first_resume))
    script.chmod(0o755)

    if not cfg.cluster.submit:
        log.info("cluster.submit=false: wrote %s (not submitted; submit it with `sbatch %s`):\n%s",
                 script, script, script.read_text())
        return SlurmSubmission(run_dir.path, script, None, tuple(srun_overrides))

    job_id = _sbatch(script)
    (slurm_dir / JOB_ID_FILE).write_text(job_id + "\n")
    with open(slurm_dir / SUBMISSIONS_FILE, "a") as f:
        f.write(f"{job_id} {script}\n")
    submission = SlurmSubmission(run_dir.path, script, job_id, tuple(srun_overrides))
    log.info(
        "submitted SLURM job %s (run directory %s)\n  follow:  tail -f %s %s\n  status:  squeue -j %s\n"
        "  requeue with a checkpoint:  scancel --signal=USR1 %s     cancel:  scancel %s",
        job_id, run_dir.path, submission.output, submission.output.with_suffix(".err"), job_id, job_id, job_id,
    )
    return submission


def _check_cluster_config(cfg: DictConfig) -> None:
    """Refuse a cluster/trainer pair whose numbers disagree (one truth per number: ``cluster.*``)."""
    cluster, trainer = cfg.cluster, cfg.trainer
    if cluster.nodes < 1:
        raise ConfigError(f"cluster.nodes={cluster.nodes} must be >= 1")
    if cluster.gpus_per_node < 0:
        raise ConfigError(f"cluster.gpus_per_node={cluster.gpus_per_node} must be >= 0 (0 = CPU nodes)")
    if cluster.cpus_per_task < 1:
        raise ConfigError(f"cluster.cpus_per_task={cluster.cpus_per_task} must be >= 1")
    if cluster.array != 1:
        raise ConfigError(
            f"cluster.array={cluster.array} splits rest-prep's inputs over array tasks; a training job spreads "
            "over cluster.nodes instead"
        )
    limit_s = time_limit_s(cluster.time)
    if not 1 <= cluster.signal_lead_s <= MAX_SIGNAL_LEAD_S:
        raise ConfigError(f"cluster.signal_lead_s={cluster.signal_lead_s} must be between 1 and {MAX_SIGNAL_LEAD_S}")
    if limit_s is not None and cluster.signal_lead_s >= limit_s:
        raise ConfigError(
            f"cluster.signal_lead_s={cluster.signal_lead_s} is not shorter than cluster.time={cluster.time} "
            f"({limit_s} s): the requeue signal would come before training starts; lower cluster.signal_lead_s "
            "or raise cluster.time"
        )
    if trainer.num_nodes not in (1, cluster.nodes):
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes} but cluster.nodes={cluster.nodes}: under cluster=slurm "
            "the node count comes from cluster.nodes; drop the trainer.num_nodes override"
        )
    devices = trainer.devices
    dpn = devices_per_node(cfg)
    if isinstance(devices, (list, ListConfig)):
        raise ConfigError(
            f"trainer.devices={list(devices)}: under SLURM each task gets its devices from the allocation; "
            "set cluster.gpus_per_node instead of a device list"
        )
    if isinstance(devices, int) and devices not in (1, dpn):
        raise ConfigError(
            f"trainer.devices={devices} but cluster.gpus_per_node={cluster.gpus_per_node} gives {dpn} "
            "task(s) per node: set cluster.gpus_per_node to the devices per node"
        )
    accelerator = trainer.accelerator
    if cluster.gpus_per_node == 0 and accelerator in ("gpu", "cuda"):
        raise ConfigError(
            f"trainer.accelerator={accelerator} but cluster.gpus_per_node=0 asks SLURM for no GPU: "
            "set cluster.gpus_per_node=G"
        )
    if cluster.gpus_per_node > 0 and accelerator == "cpu":
        raise ConfigError(
            f"cluster.gpus_per_node={cluster.gpus_per_node} but trainer.accelerator=cpu: use "
            "cluster.gpus_per_node=0 for CPU nodes, or a GPU trainer (trainer=default)"
        )
    if cfg.strategy.name == "ddp_spawn":
        raise ConfigError(
            "strategy=ddp_spawn cannot run under SLURM: srun already starts one process per device and "
            "Lightning must not spawn more. Use strategy=ddp (or fsdp, deepspeed_*)"
        )


def time_limit_s(text: str) -> int | None:
    """``--time`` in seconds, from any of sbatch's forms (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``); None for no limit (``0``, ``UNLIMITED``, ``INFINITE``). SLURM keeps whole minutes, rounding
    seconds up."""
    text = str(text).strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"cluster.time={text!r} is not a SLURM time limit: use HH:MM:SS, MM, or D-HH:MM:SS")
    days, *parts = match.groups()
    values = [int(p) for p in parts if p is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (values + [0, 0])[:3]
    elif len(values) == 3:  # H:M:S
        hours, minutes, seconds = values
    else:  # M or M:S
        hours, (minutes, seconds) = 0, (values + [0])[:2]
    total = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total // 60) * 60 if total else None  # 0: no limit (sbatch --time)


def _check_requeue_resume(cfg: DictConfig, run_dir: RunDir) -> None:
    """Refuse, at submission, a ``resume=never``/``resume=PATH`` that a requeue's ``resume=auto`` would
    betray by picking a checkpoint this job did not write (a run directory is one run)."""
    from rest_lightning.checkpoint import find_resume_checkpoint, select_resume_checkpoint

    select_resume_checkpoint(cfg, run_dir)  # resume=never on a used run directory; PATH vetted as weights only
    if cfg.resume == "never":
        return
    path = Path(cfg.resume).expanduser().resolve()
    newest = find_resume_checkpoint(run_dir.path)
    if newest is not None and newest.resolve() != path:
        raise ConfigError(
            f"resume={cfg.resume} under cluster=slurm: a requeue continues with resume=auto, which would pick "
            f"{newest} (the newest checkpoint already in run_dir={run_dir.path}) instead of this job's own. "
            "Submit with a new run_dir=PATH (the checkpoint can stay where it is), or move the run directory's "
            "newer checkpoints out of it."
        )


def _hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value: as-is when plain, else single-quoted (paths with ``=``, spaces)."""
    if re.fullmatch(r"[\w./~-]+", value):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def _job_additions(cfg: DictConfig, run_dir: RunDir) -> list[str]:
    """What the srun line adds to the user's overrides: the fixed run directory and the layout."""
    additions = [
        f"run_dir={run_dir.path}",
        f"trainer.num_nodes={cfg.cluster.nodes}",
        f"trainer.devices={devices_per_node(cfg)}",
    ]
    if cfg.cluster.gpus_per_node == 0 and cfg.trainer.accelerator != "cpu":
        # "auto" on a node that has GPUs SLURM did not give this job would put every task on GPU 0.
        additions.append("trainer.accelerator=cpu")
    if cfg.strategy.name == "auto" and cfg.cluster.nodes * devices_per_node(cfg) > 1:
        additions.append("strategy=ddp")
    return additions


def render_sbatch(cfg: DictConfig, run_dir: RunDir, srun_overrides: Sequence[str], cwd: Path,
                  first_resume: str | None = None) -> str:
    """The batch script: ``#SBATCH`` lines from ``cfg.cluster``, its ``setup`` lines, then ``srun rest-train``.

    ``--open-mode=append`` keeps one output file across requeues (same job id); ``--chdir`` makes
    relative paths in the overrides mean what they meant at submission. ``first_resume`` (an override such
    as ``resume=never``; None for ``resume=auto``) is passed on the first start only: see :func:`_resume_lines`.
    """
    cluster = cfg.cluster
    slurm_dir = run_dir.path / "slurm"
    sbatch = [
        f"--job-name={_job_name(cfg.name)}",
        *([f"--partition={cluster.partition}"] if cluster.partition else []),
        *([f"--account={cluster.account}"] if cluster.account else []),
        f"--time={cluster.time}",
        f"--nodes={cluster.nodes}",
        f"--ntasks-per-node={devices_per_node(cfg)}",
        *([f"--gpus-per-node={cluster.gpus_per_node}"] if cluster.gpus_per_node > 0 else []),
        f"--cpus-per-task={cluster.cpus_per_task}",
        f"--mem={cluster.mem}",
        f"--signal={REQUEUE_SIGNAL}@{cluster.signal_lead_s}",
        "--requeue",
        "--open-mode=append",
        f"--chdir={cwd}",
        f"--output={slurm_dir / '%j.out'}",
        f"--error={slurm_dir / '%j.err'}",
        *cluster.extra_sbatch,
    ]
    srun = " ".join(["srun", "--kill-on-bad-exit=1", "rest-train", *(shlex.quote(o) for o in srun_overrides)])
    resume_lines = _resume_lines(first_resume, run_dir) if first_resume else []
    if resume_lines:
        srun += ' "$RESUME"'
    lines = [
        "#!/bin/bash",
        f"# Rendered by rest-train (cluster=slurm) for the run directory {run_dir.path}.",
        "# Every launch and requeue runs the same srun line; a requeue resumes with resume=auto (the newest checkpoint).",
        *(f"#SBATCH {opt}" for opt in sbatch),
        "set -eo pipefail",
        'echo "=== batch start: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} '
        'nodes ${SLURM_JOB_NODELIST} $(date -u +%FT%TZ)"',
        *cluster.setup,
        *resume_lines,
        srun,
        'echo "=== batch end: job ${SLURM_JOB_ID} $(date -u +%FT%TZ)"',
    ]
    return "\n".join(lines) + "\n"


def _resume_lines(first_resume: str, run_dir: RunDir) -> list[str]:
    """Shell lines setting ``$RESUME`` for this start: ``first_resume`` on the first start, ``resume=auto``
    on a requeue once ``checkpoints/`` holds a checkpoint (a file, or a ZeRO directory with its ``latest``:
    the names resume=auto considers), ``first_resume`` again on a requeue before any save."""
    checkpoints = shlex.quote(str(run_dir.checkpoints))
    return [
        "# The submitted resume= applies to the first start; a requeue continues this job's own checkpoints.",
        f"RESUME={shlex.quote(first_resume)}",
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then',
        f"    for ckpt in {checkpoints}/last.ckpt {checkpoints}/step=*.ckpt {checkpoints}/hpc_ckpt_*.ckpt; do",
        '        if [ -f "$ckpt" ] || [ -f "$ckpt/latest" ]; then RESUME=resume=auto; fi',
        "    done",
        "fi",
        'echo "=== ${RESUME}"',
    ]


def _job_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "rest"


def _sbatch(script: Path, *options: str) -> str:
    """Submit with ``sbatch --parsable [options]``; returns the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", *options, str(script)], capture_output=True, text=True,
                              timeout=SBATCH_TIMEOUT_S)
    except FileNotFoundError:
        raise ConfigError(
            "cluster=slurm: `sbatch` is not on PATH (run on a SLURM login node), or set cluster.submit=false "
            f"to only write {script}"
        ) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"sbatch did not answer within {SBATCH_TIMEOUT_S} s; the script is {script}") from None
    if proc.returncode != 0:
        raise ConfigError(f"sbatch refused {script}: {proc.stderr.strip() or proc.stdout.strip()}")
    # --parsable prints "jobid" or "jobid;cluster"
    return proc.stdout.strip().split(";")[0]


# --- the overrides the job re-composes ----------------------------------------------------------------


def job_overrides(cfg: DictConfig, user_overrides: Sequence[str] | None = None) -> list[str]:
    """Overrides that compose ``conf/train.yaml`` to ``cfg`` again: ``user_overrides`` if given, else
    the ones :func:`rest_lightning.config.compose` recorded in ``cfg.overrides``. Checked by composing
    them: a config edited after composition (not expressible as overrides) is refused, not guessed."""
    overrides = list(cfg.overrides if user_overrides is None else user_overrides)
    if _plain(compose("train", overrides)) != _plain(cfg):
        raise ConfigError(
            "cluster=slurm needs the config exactly as composed from overrides (it was changed after "
            "compose); launch it as `rest-train key=value ...` or pass the overrides explicitly"
        )
    return overrides


def _override_key(override: str) -> str:
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def _plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


@dataclass(frozen=True)
class SlurmAllocation:
    """What SLURM says about this process's job (and job step, under ``srun``)."""

    job_id: str
    job_name: str
    in_step: bool  # started by srun (SLURM_STEP_ID set), not the batch script itself
    nodes: int
    world_size: int  # tasks in the step (or the job, outside a step)
    tasks_per_node: tuple[int, ...]
    global_rank: int
    local_rank: int
    node_rank: int
    node_name: str
    restart_count: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlurmAllocation:
        env = os.environ if env is None else env
        world = int(_first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default="1"))
        per_node = _first(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", default=str(world))
        return cls(
            job_id=env.get("SLURM_JOB_ID", "?"),
            job_name=env.get("SLURM_JOB_NAME", ""),
            in_step="SLURM_STEP_ID" in env,
            nodes=int(_first(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES", default="1")),
            world_size=world,
            tasks_per_node=parse_tasks_per_node(per_node),
            global_rank=int(env.get("SLURM_PROCID", "0")),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            node_rank=int(env.get("SLURM_NODEID", "0")),
            node_name=env.get("SLURMD_NODENAME", "?"),
            restart_count=int(env.get("SLURM_RESTART_COUNT", "0")),
        )


def _first(env: Mapping[str, str], *names: str, default: str) -> str:
    return next((env[n] for n in names if env.get(n)), default)


def parse_tasks_per_node(text: str) -> tuple[int, ...]:
    """SLURM's compressed per-node counts: ``"2(x3),1"`` -> ``(2, 2, 2, 1)``."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ValueError(f"cannot parse SLURM tasks-per-node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return tuple(counts)


def check_allocation(cfg: DictConfig, env: Mapping[str, str] | None = None) -> SlurmAllocation:
    """Inside the job: refuse a config whose ``trainer.num_nodes``/``trainer.devices`` differ from the
    allocation (Lightning would wait for ranks that never come, or train with a wrong world size)."""
    alloc = SlurmAllocation.from_env(env)
    num_nodes, devices = cfg.trainer.num_nodes, cfg.trainer.devices
    expected_world = num_nodes * devices if isinstance(devices, int) else None
    where = f"SLURM job {alloc.job_id}"
    if not alloc.in_step and (alloc.world_size > 1 or (expected_world or 1) > 1):
        raise ConfigError(
            f"rest-train runs in the batch script of {where}, not under srun, but the run needs "
            f"{expected_world or alloc.world_size} processes: start it with `srun rest-train ...` "
            "(the script cluster=slurm renders does)"
        )
    if alloc.job_name in _INTERACTIVE_JOB_NAMES and alloc.world_size > 1:
        raise ConfigError(
            f"{where} is named {alloc.job_name!r}, which makes Lightning ignore SLURM: each of the "
            f"{alloc.world_size} tasks would train alone. Give the job another name (sbatch --job-name)"
        )
    if num_nodes != alloc.nodes:
        raise ConfigError(
            f"trainer.num_nodes={num_nodes} but {where} runs on {alloc.nodes} node(s) (SLURM_NNODES): "
            f"submit with cluster.nodes={num_nodes}, or set trainer.num_nodes={alloc.nodes}"
        )
    if len(set(alloc.tasks_per_node)) > 1:
        raise ConfigError(
            f"{where} has uneven tasks per node {list(alloc.tasks_per_node)}: Lightning needs the same "
            "number of tasks (one per device) on every node; use --ntasks-per-node"
        )
    per_node = alloc.tasks_per_node[0] if alloc.tasks_per_node else 1
    if isinstance(devices, int) and devices != per_node:
        raise ConfigError(
            f"trainer.devices={devices} but {where} runs {per_node} task(s) per node "
            f"(SLURM_NTASKS_PER_NODE): Lightning needs one task per device; set trainer.devices={per_node} "
            f"or submit with --ntasks-per-node={devices} (cluster.gpus_per_node={devices})"
        )
    if expected_world is not None and expected_world != alloc.world_size:
        raise ConfigError(
            f"trainer.num_nodes x trainer.devices = {expected_world} processes but {where} has "
            f"{alloc.world_size} tasks (SLURM_NTASKS)"
        )
    log.info("%s (restart %d): rank %d of %d, node %s (node rank %d), local rank %d",
             where, alloc.restart_count, alloc.global_rank, alloc.world_size, alloc.node_name,
             alloc.node_rank, alloc.local_rank)
    return alloc


def launch(cfg: DictConfig) -> SlurmSubmission | None:
    """What ``train(cfg)`` does for ``cluster=slurm``: submit from outside a job (returns the
    submission), check the allocation inside one (returns None: train here)."""
    if in_slurm_job():
        check_allocation(cfg)
        return None
    return submit(cfg)


# --- rest-prep as an array job plus a merge job ---------------------------------------------------------

PREP_TASK_SCRIPT = "prep_tasks.sbatch"
PREP_MERGE_SCRIPT = "prep_merge.sbatch"
PREP_JOBS_FILE = "jobs.json"
_PREP_LOCAL_KEYS = ("input", "output", "step", "task", "overrides")


@dataclass(frozen=True)
class PrepSubmission:
    slurm_dir: Path
    task_script: Path
    merge_script: Path
    array_job: str | None  # None: cluster.submit=false
    merge_job: str | None


def submit_prep_array(cfg: DictConfig) -> PrepSubmission:
    """``rest-prep ... cluster=slurm cluster.array=N``: write ``<output>/slurm/prep_tasks.sbatch`` (an array of
    N tasks, each ``rest-prep ... step=task`` on slice ``$SLURM_ARRAY_TASK_ID``) and ``prep_merge.sbatch``
    (``step=merge``), submit the array, then the merge with ``--dependency=afterok`` on it and
    ``--kill-on-invalid-dep=yes`` (a failed or cancelled task cancels the merge instead of leaving it
    pending forever). Submitting the same command again reruns every task: finished ones find their
    journal complete and exit at once, an interrupted one resumes.

    Raises:
        ConfigError: a cluster setting that cannot run, or ``sbatch`` refusing a job.
    """
    cluster = cfg.cluster
    if cluster.array < 1:
        raise ConfigError(f"cluster.array={cluster.array} must be >= 1")
    if cluster.cpus_per_task < 1:
        raise ConfigError(f"cluster.cpus_per_task={cluster.cpus_per_task} must be >= 1")
    output = Path(cfg.output).resolve()
    overrides = [o for o in cfg.overrides if _override_key(o) not in _PREP_LOCAL_KEYS]
    overrides += [f"input={_hydra_quote(str(Path(cfg.input).resolve()))}", f"output={_hydra_quote(str(output))}"]
    task_overrides, merge_overrides = [*overrides, "step=task"], [*overrides, "step=merge"]
    compose("prep", task_overrides)  # the jobs compose exactly these: fail now, not in the queue
    slurm_dir = output / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    task_script, merge_script = slurm_dir / PREP_TASK_SCRIPT, slurm_dir / PREP_MERGE_SCRIPT
    task_script.write_text(_render_prep(cfg, task_overrides, slurm_dir, array=True))
    merge_script.write_text(_render_prep(cfg, merge_overrides, slurm_dir, array=False))
    if not cluster.submit:
        log.info("cluster.submit=false: wrote %s and %s (not submitted; submit the tasks, then the merge with "
                 "`sbatch --dependency=afterok:ARRAY_JOB_ID %s`)", task_script, merge_script, merge_script)
        return PrepSubmission(slurm_dir, task_script, merge_script, None, None)
    array_job = _sbatch(task_script)
    merge_job = _sbatch(merge_script, f"--dependency=afterok:{array_job}", "--kill-on-invalid-dep=yes")
    jobs = {"array": array_job, "merge": merge_job, "tasks": cluster.array}
    (slurm_dir / PREP_JOBS_FILE).write_text(json.dumps(jobs) + "\n")
    with open(slurm_dir / SUBMISSIONS_FILE, "a") as f:
        f.write(f"{array_job} {task_script}\n{merge_job} {merge_script}\n")
    log.info("submitted rest-prep: array job %s (%d tasks), merge job %s after it\n  follow:  tail -f %s/*.out\n"
             "  status:  squeue -j %s,%s", array_job, cluster.array, merge_job, slurm_dir, array_job, merge_job)
    return PrepSubmission(slurm_dir, task_script, merge_script, array_job, merge_job)


def _render_prep(cfg: DictConfig, overrides: Sequence[str], slurm_dir: Path, array: bool) -> str:
    cluster = cfg.cluster
    sbatch = [
        f"--job-name=rest-prep-{'tasks' if array else 'merge'}",
        *([f"--partition={cluster.partition}"] if cluster.partition else []),
        *([f"--account={cluster.account}"] if cluster.account else []),
        f"--time={cluster.time}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={cluster.cpus_per_task if array else 1}",
        f"--mem={cluster.mem}",
        *([f"--array=0-{cluster.array - 1}"] if array else []),
        "--requeue",  # a requeued task resumes from its journal
        "--open-mode=append",
        f"--chdir={Path.cwd()}",
        f"--output={slurm_dir / ('%A_%a.out' if array else '%j.out')}",
        f"--error={slurm_dir / ('%A_%a.err' if array else '%j.err')}",
        *cluster.extra_sbatch,
    ]
    what = "one slice of the inputs per array task" if array else "the merge, after every task succeeded"
    srun = " ".join(["srun", "--kill-on-bad-exit=1", "rest-prep", *(shlex.quote(o) for o in overrides)])
    lines = [
        "#!/bin/bash",
        f"# Rendered by rest-prep (cluster=slurm cluster.array={cluster.array}): {what}.",
        *(f"#SBATCH {opt}" for opt in sbatch),
        "set -eo pipefail",
        'echo "=== batch start: job ${SLURM_JOB_ID} task ${SLURM_ARRAY_TASK_ID:-merge} '
        'restart ${SLURM_RESTART_COUNT:-0} $(date -u +%FT%TZ)"',
        *cluster.setup,
        srun,
        'echo "=== batch end: job ${SLURM_JOB_ID} $(date -u +%FT%TZ)"',
    ]
    return "\n".join(lines) + "\n"
