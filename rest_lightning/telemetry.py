"""Training telemetry and the non-finite-loss guard (callbacks; every stage gets them from ``train``).

:class:`Telemetry` logs, under ``train/``, on the Trainer's logger (W&B or CSV) every
``trainer.log_every_n_steps`` steps:

- ``train/samples_per_s``: samples of all ranks per second of wall time between batches;
- ``train/tokens_per_s``: when the stage defines ``tokens_per_sample(batch) -> int`` (e.g. latent tokens
  a DiT sees per clip); otherwise not logged;
- ``train/data_wait_fraction``: the share of each step spent waiting for the next batch (time between
  the end of one batch and the start of the next, over the whole step);
- ``train/grad_norm``: the global 2-norm of the gradients just before the optimizer step (before the
  Trainer clips; a manual-optimization stage that clips first reports the clipped norm; under
  DeepSpeed, the engine's own global norm; under FSDP, the norm of this rank's shard);
- ``train/peak_memory_bytes``: CUDA ``max_memory_allocated`` on a GPU, else the process's peak RSS;
- ``train/mfu``: model FLOPs utilisation, when ``telemetry.peak_flops`` (the device's peak FLOP/s for
  the training dtype) is set: FLOPs of one training step, counted once with
  ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv/attention, forward and backward), divided by
  the step time and the peak. The learning rate comes from Lightning's ``LearningRateMonitor``.

:class:`NonFiniteGuard`: a non-finite loss (seen in ``on_before_backward``, so every ``backward`` and
``manual_backward`` counts) or non-finite gradients make the optimizer step a no-op (gradients set to
``None``; the decision is shared by all ranks so weights stay in sync). Skipped steps are counted in
``train/nonfinite_skipped``; ``telemetry.max_nonfinite_steps`` of them in a row stop the run with a
checkpoint ``checkpoints/nonfinite-step=XXXXXXXX.ckpt`` (never picked by ``resume=auto``) and
:class:`NonFiniteLossError`. Manual-optimization stages must step every optimizer through Lightning's
``LightningOptimizer.step`` for the skip to apply (a raw ``optimizer.optimizer.step()``, as the VAE
stage's discriminator uses, is counted but not skipped). Under DeepSpeed the engine owns the gradients:
the guard counts and stops, but cannot skip (use DeepSpeed's fp16 loss scaling, which skips overflowing
steps itself).
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from rest_lightning.checkpoint import NONFINITE_PREFIX
from rest_lightning.stages.base import RestStage

log = logging.getLogger(__name__)

class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run stopped (a checkpoint was written)."""


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (dataclass fields, mappings and
    sequences are searched in order). Raises TypeError when the batch holds no tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if is_dataclass(batch) and not isinstance(batch, type):
        items = [getattr(batch, f.name) for f in fields(batch)]
    elif isinstance(batch, dict):
        items = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        items = list(batch)
    else:
        items = []
    for item in items:
        try:
            return batch_size_of(item)
        except TypeError:
            continue
    raise TypeError(f"cannot find a tensor in a batch of type {type(batch).__name__}")


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA peak allocated memory on a CUDA device, else the peak resident set size of this process."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def grad_norm(module: torch.nn.Module) -> torch.Tensor | None:
    """Global 2-norm of the gradients present in ``module`` (float32 scalar), None when there are none."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads, 2.0)  # one kernel per dtype/device group, not one per tensor
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)


class Telemetry(L.Callback):
    """Throughput, data wait, gradient norm, peak memory and MFU (module docstring)."""

    def __init__(self, peak_flops: float | None = None, log_every_n_steps: int = 50) -> None:
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"telemetry.peak_flops={peak_flops} must be > 0 (FLOP/s per device) or null")
        self.peak_flops = peak_flops
        self.log_every_n_steps = max(1, log_every_n_steps)
        self._last_end: float | None = None
        self._start = 0.0
        self._grad_norm: torch.Tensor | None = None
        self._flops_per_step: float | None = None
        self._flop_counter: Any = None

    # -- timing --

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()
        self._grad_norm = None
        if self.peak_flops is not None and self._flops_per_step is None and self._last_end is not None:
            # Count one step's FLOPs (the second of the run: the first may build things lazily).
            from torch.utils.flop_counter import FlopCounterMode

            self._flop_counter = FlopCounterMode(display=False)
            self._flop_counter.__enter__()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if (trainer.global_step + 1) % self.log_every_n_steps:
            return  # only steps that get logged pay for the norm (global_step counts after this step)
        norm = grad_norm(pl_module)
        if norm is not None:
            self._grad_norm = norm if self._grad_norm is None else torch.linalg.vector_norm(
                torch.stack([self._grad_norm, norm])
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        end = time.perf_counter()
        if self._flop_counter is not None:
            self._flop_counter.__exit__(None, None, None)
            self._flops_per_step = float(self._flop_counter.get_total_flops())
            self._flop_counter = None
        previous, self._last_end = self._last_end, end
        if previous is None or trainer.global_step % self.log_every_n_steps:
            return
        step_s = end - previous
        wait_s = max(0.0, self._start - previous)
        samples = batch_size_of(batch) * trainer.world_size
        metrics = {
            "train/samples_per_s": samples / step_s,
            "train/data_wait_fraction": wait_s / step_s,
            "train/peak_memory_bytes": float(peak_memory_bytes(pl_module.device)),
        }
        tokens = pl_module.tokens_per_sample(batch) if isinstance(pl_module, RestStage) else None
        if tokens:
            metrics["train/tokens_per_s"] = samples * tokens / step_s
        norm = self._grad_norm if self._grad_norm is not None else _deepspeed_grad_norm(trainer)
        if norm is not None:
            metrics["train/grad_norm"] = float(norm)
        if self.peak_flops is not None and self._flops_per_step:
            metrics["train/mfu"] = self._flops_per_step / step_s / self.peak_flops
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True, batch_size=1)


def _deepspeed_grad_norm(trainer: L.Trainer) -> float | None:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if not isinstance(trainer.strategy, DeepSpeedStrategy) or trainer.strategy.model is None:
        return None
    norm = trainer.strategy.deepspeed_engine.get_global_grad_norm()
    return None if norm is None else float(norm)


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps whose loss or gradients are not finite; stop after N in a row (module doc)."""

    def __init__(self, max_in_a_row: int, checkpoint_dir: Path) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"telemetry.max_nonfinite_steps={max_in_a_row} must be >= 1")
        self.max_in_a_row = max_in_a_row
        self.checkpoint_dir = Path(checkpoint_dir)
        self.skipped = 0  # in this process's run
        self.in_a_row = 0
        self._loss_bad = False
        self._step_bad = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._loss_bad = False
        self._step_bad = False

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._loss_bad = True

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        norm = grad_norm(pl_module)
        bad = self._loss_bad or (norm is not None and not math.isfinite(float(norm)))
        # One rank's NaN must stop every rank's update, or the replicas drift apart.
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            self._step_bad = True
            optimizer.zero_grad(set_to_none=True)  # no gradient, no update (AdamW skips grad-less parameters)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bad = self._step_bad or self._loss_bad
        if trainer.world_size > 1 and not self._step_bad:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            self.skipped += 1
            self.in_a_row += 1
        else:
            self.in_a_row = 0
        pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False,
                      rank_zero_only=True, batch_size=1)
        if not bad:
            return
        log.warning("step %d: non-finite loss or gradients, optimizer step skipped (%d in a row, %d in all)",
                    trainer.global_step, self.in_a_row, self.skipped)
        if self.in_a_row >= self.max_in_a_row:
            path = self.checkpoint_dir / f"{NONFINITE_PREFIX}step={trainer.global_step:08d}.ckpt"
            trainer.save_checkpoint(path)
            raise NonFiniteLossError(
                f"{self.in_a_row} non-finite losses in a row (telemetry.max_nonfinite_steps={self.max_in_a_row}) "
                f"at step {trainer.global_step}: training stopped. The weights were not updated by those steps; "
                f"they are saved in {path} (resume=auto ignores it and continues from the last periodic checkpoint). "
                "Lower stage.optim.lr, check the data, or use bf16 instead of fp16; resume=PATH resumes that file."
            )
