"""The SLURM requeue signal, handled at a step boundary that every rank shares.

SLURM sends ``SIGUSR1`` ``cluster.signal_lead_s`` before the time limit (``--signal=SIGUSR1@LEAD``, see
``launch/slurm.py``). Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint
inside the signal handler, wherever each rank happens to be (Lightning issue #21406, still open). Under DDP a
rank that the signal finds inside a collective of the backward pass joins the save's barrier late or never,
and the job hangs until SLURM kills it. Seen on the local 2-node cluster: the handler started, no
``hpc_ckpt`` appeared in the 20 s before the kill, and the job ended ``TIMEOUT`` with nothing to resume.

:class:`RequeueOnSignal` does what Lightning's pending fix does: the handler only records the signal. After
each training batch every rank joins one all-reduce of that flag (one rank that got the signal is enough);
when it is set, all ranks write ``hpc_ckpt_N.ckpt`` together (DeepSpeed's ZeRO save as well) and rank 0 runs
``scontrol requeue``. The checkpoint comes at most one training step after the signal, so
``cluster.signal_lead_s`` must cover a step plus a save. Training goes on until SLURM stops the job, as
Lightning's handler did. The price is one all-reduce of one number per optimizer step (a device sync on GPUs).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

__all__ = ["RequeueOnSignal", "requeue_job_id"]


def requeue_job_id(env: Mapping[str, str] = os.environ) -> str:
    """The id ``scontrol requeue`` takes for this job: ``ARRAYID_TASK`` inside an array, else the job id."""
    array_job = env.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{env['SLURM_ARRAY_TASK_ID']}" if array_job else env["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"not a SLURM job id: {job!r}")
    return job


class RequeueOnSignal(Callback):
    """Records ``signum``; at the next optimizer-step boundary all ranks save ``hpc_ckpt_N`` and rank 0 requeues."""

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signum
        self.received = False
        self._previous: Any = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = True  # nothing else: the save happens at the next step boundary, on every rank

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._record)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Every rank reaches this point once per batch: the one place where all of them can agree. Only after
        # an optimizer step, so that no accumulated gradient is left out of the checkpoint.
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        self.received = False
        for logger in trainer.loggers:
            logger.finalize("finished")  # flush the metrics written so far, as Lightning's handler did
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        if not trainer.is_global_zero:
            return
        job = requeue_job_id()
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            failure = None if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as err:
            failure = str(err)
        step = trainer.global_step
        if failure is None:
            log.info("requeue signal: wrote %s at step %d, requeued SLURM job %s", path, step, job)
        else:
            log.warning("requeue signal: wrote %s at step %d, but `scontrol requeue %s` failed (%s); "
                        "training goes on until the time limit", path, step, job, failure)
