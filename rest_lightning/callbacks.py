"""Lightning callbacks shared by every stage."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` + ``step=XXXXXXXX.ckpt`` every N steps, keeping the newest K (top-k by step).

    Also saves ``last.ckpt`` when training ends normally, whatever N is: the final steps of a run are
    never lost because max_steps is not a multiple of the save interval. (Uses ModelCheckpoint's own
    last-checkpoint writer so the file keeps its name instead of becoming ``last-v1.ckpt``.)
    """

    def __init__(self, dirpath: Path, every_n_steps: int, keep_last: int) -> None:
        super().__init__(
            dirpath=str(dirpath),
            filename="step={step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps,
            # "step" is always among Lightning's monitor candidates: top-k by step keeps the newest k.
            monitor="step",
            mode="max",
            save_top_k=keep_last,
            save_last=True,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class PlainProgressLog(L.Callback):
    """Progress as log lines (step, loss, steps/s) for SLURM and CI logs, where a live bar would
    fill the file with carriage returns."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self._t0 = 0.0
        self._step0 = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps and step != trainer.max_steps:
            return
        rate = (step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)
        metrics = " ".join(
            f"{k}={v:.4g}" for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith("train/") and v.numel() == 1
        )
        if trainer.is_global_zero:
            total = trainer.max_steps if trainer.max_steps > 0 else "?"
            log.info("step %d/%s %s (%.2f steps/s)", step, total, metrics, rate)
