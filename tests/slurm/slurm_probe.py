"""Test instrumentation run inside SLURM jobs: a real stage plus lines per rank of what it did.

Selected with ``stage._target_=slurm_probe.ProbeVAEStage`` (``experiment=tiny_vae``) or
``stage._target_=slurm_probe.ProbeTeacherStage`` (``experiment=tiny_teacher``), with ``tests/slurm`` on
PYTHONPATH. Each is the real stage (same stage name, weights and checkpoints), so the experiment composes
as usual; it only prints, on every rank (Lightning writes checkpoints and logs from rank 0 alone, and the
tests must see what rank 1 trained on and ended with):

- ``PROBE_BEGIN rank batch weights ema optim sched``: at the start of training, after a resume restored its
  state: the index of the next batch and digests of the state it starts from;
- ``PROBE_STEP rank batch data rng weights ema optim sched``: after every batch: the batch's bytes and the
  global RNG state it started with (after ``StepSeed``), then the state it left;
- ``PROBE rank world first_step last_step data weights``: at the end of training.

A requeued job that restored everything prints, for every batch, the lines an uninterrupted job of the same
seed prints; the first field that differs names the state that was not restored (``slurm_state_diff.py``).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from rest_lightning.callbacks import batches_done
from rest_lightning.data.batch import ClipBatch
from rest_lightning.stages.teacher import TeacherStage
from rest_lightning.stages.vae import VAEStage

NONE = "-"  # the field's state does not exist in this run (no EMA copy, no readable optimizer state)


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors' bytes in key order: equal digests = bitwise equal weights."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def state_digest(value: Any) -> str:
    """sha256 of a nested state (dicts, lists, tensors, numbers), e.g. an optimizer's ``state_dict()``."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()[:16]


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(repr(value).encode())


def rng_digest() -> str:
    """The global torch, numpy and ``random`` generators' states (what ``StepSeed`` seeds per batch)."""
    return state_digest([torch.get_rng_state(), np.random.get_state()[1], random.getstate()])


def first_start() -> bool:
    """True outside SLURM and on a job's first start; False once SLURM has requeued the job."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0


class _Probe:
    """The probe's hooks, mixed into a real stage (first in the bases, so its hooks run and call the stage's)."""

    def __init__(self, *args: Any, step_sleep_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Slows training so that a test can signal the job mid-run (by hand or by the time limit). Only on the
        # job's first start: a requeued start and an uninterrupted reference run at full speed. Sleeping
        # changes no weights.
        self.step_sleep_s = step_sleep_s if first_start() else 0.0
        self._data = hashlib.sha256()
        self._first_step: int | None = None
        self._batch: tuple[int, str, str] | None = None

    def _state_fields(self) -> str:
        state = self.state_dict()
        weights = {k: v for k, v in state.items() if not k.startswith("ema.")}
        ema = {k: v for k, v in state.items() if k.startswith("ema.")}
        # DeepSpeed's ZeRO optimizer holds this rank's partition in its own layout: compared through the export.
        optim = NONE if isinstance(self.trainer.strategy, DeepSpeedStrategy) else \
            state_digest([opt.state_dict() for opt in self.trainer.optimizers])
        sched = state_digest([c.scheduler.state_dict() for c in self.trainer.lr_scheduler_configs])
        return (f"weights={weights_digest(weights)} ema={weights_digest(ema) if ema else NONE} "
                f"optim={optim} sched={sched}")

    def on_train_start(self) -> None:
        super().on_train_start()
        print(f"PROBE_BEGIN rank={self.global_rank} batch={batches_done(self.trainer)} {self._state_fields()}",
              flush=True)

    def on_train_batch_start(self, batch: ClipBatch, batch_idx: int) -> Any:
        if self._first_step is None:
            self._first_step = self.global_step
        data = batch.video.detach().cpu().contiguous().numpy().tobytes()
        self._data.update(data)
        self._batch = (batches_done(self.trainer), hashlib.sha256(data).hexdigest()[:16], rng_digest())
        return super().on_train_batch_start(batch, batch_idx)

    def training_step(self, batch: ClipBatch, batch_idx: int) -> Any:
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: ClipBatch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        index, data, rng = self._batch
        print(f"PROBE_STEP rank={self.global_rank} batch={index} data={data} rng={rng} {self._state_fields()}",
              flush=True)

    def on_train_end(self) -> Any:
        print(f"PROBE rank={self.global_rank} world={self.trainer.world_size} first_step={self._first_step} "
              f"last_step={self.global_step} data={self._data.hexdigest()[:16]} "
              f"weights={weights_digest(self._probe_weights())}", flush=True)
        return super().on_train_end()


class ProbeVAEStage(_Probe, VAEStage):
    def _probe_weights(self) -> dict[str, torch.Tensor]:
        return self.vae.state_dict()


class ProbeTeacherStage(_Probe, TeacherStage):
    def _probe_weights(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()


# --- reading the lines back (the tests' side) -----------------------------------------------------------


def batch_marks(out: str, job_id: str) -> list[tuple[str, float]]:
    """``("start", t)``/``("end", t)`` (UNIX seconds) of each ``=== batch start|end`` line the rendered script
    echoes into ``.out``, in order: one start per start of the job (requeues included), an end per finish."""
    marks = re.findall(rf"^=== batch (start|end): job {job_id} .*?(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$", out,
                       re.MULTILINE)
    return [(kind, datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
            for kind, stamp in marks]


def job_wall_s(out: str, job_id: str) -> float:
    """Seconds from the job's first start to its last finish (requeue waits included), to the second."""
    marks = batch_marks(out, job_id)
    return marks[-1][1] - marks[0][1]

STATE_NAMES = {"data": "loader", "rng": "RNG", "weights": "weights", "ema": "EMA", "optim": "optimizer",
               "sched": "LR scheduler"}
_RECORD_RE = re.compile(r"^(PROBE_BEGIN|PROBE_STEP) ((?:\w+=\S+ ?)+)$", re.MULTILINE)


def probe_records(text: str) -> list[dict[str, str]]:
    """The ``PROBE_BEGIN``/``PROBE_STEP`` lines of a job's output, in order, as dicts (``kind`` = BEGIN/STEP)."""
    return [{"kind": kind.removeprefix("PROBE_"), **dict(f.split("=", 1) for f in fields.split())}
            for kind, fields in _RECORD_RE.findall(text)]


def first_divergence(resumed: list[dict[str, str]], reference: list[dict[str, str]]) -> str | None:
    """Where the records of an interrupted-and-resumed job first differ from an uninterrupted job's, naming the
    state: None when every batch of the reference was trained, by every rank, from the same state on the same
    data and RNG to the same result. A start's ``BEGIN`` is compared with the state the reference left after the
    previous batch, so a resume that did not restore, e.g., the optimizer is named as such, not as the weights
    that differ one batch later."""
    ref_after = {(r["rank"], int(r["batch"])): r for r in reference if r["kind"] == "STEP"}
    ref_after.update({(r["rank"], int(r["batch"]) - 1): r for r in reference if r["kind"] == "BEGIN"
                      and int(r["batch"]) == 0})
    for rec in resumed:
        batch = int(rec["batch"])
        if rec["kind"] == "BEGIN":
            expected, fields = ref_after.get((rec["rank"], batch - 1)), ("weights", "ema", "optim", "sched")
            where = f"rank {rec['rank']} resumed at batch {batch}"
        else:
            expected, fields = ref_after.get((rec["rank"], batch)), tuple(STATE_NAMES)
            where = f"rank {rec['rank']} batch {batch}"
        if expected is None:
            return f"{where}: the uninterrupted job has no such batch (loader)"
        for field in fields:
            if rec[field] != expected[field]:
                return f"{where}: {STATE_NAMES[field]} differs ({field} {rec[field]} vs {expected[field]})"
    done = {(r["rank"], int(r["batch"])) for r in resumed if r["kind"] == "STEP"}
    skipped = sorted(k for k in ref_after if k[1] >= 0 and k not in done)
    if skipped:
        return f"batches never trained after the resume (rank, batch): {skipped[:8]} (loader)"
    return None
