"""Lightning callbacks shared by every stage: checkpoints, provenance, per-step RNG seeding, progress.

Telemetry (throughput, data wait, gradient norm, MFU, memory) and the non-finite-loss guard are in
``rest_lightning.telemetry``.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` + ``step=XXXXXXXX.ckpt`` every N steps, keeping the newest K (top-k by step).

    Also saves ``last.ckpt`` when training ends normally, whatever N is: the final steps of a run are
    never lost because max_steps is not a multiple of the save interval. (Uses ModelCheckpoint's own
    last-checkpoint writer so the file keeps its name.) A run directory holds one run, so a name is never
    versioned (``last-v1.ckpt``): a save replaces the file of that name.

    The checkpoint a run resumed from is pruned like any other once ``keep_last`` newer ones exist
    (Lightning keeps it forever, so ``keep_last=1`` left two step checkpoints after every resume).
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
            enable_version_counter=False,
        )

    def _should_remove_checkpoint(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        """Any older checkpoint in this callback's folder may go, the resumed one included (Lightning's
        version spares the resumed file; it is read completely before the first step)."""
        if previous == current:
            return False
        return Path(self.dirpath).absolute() in Path(previous).absolute().parents

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def batches_done(trainer: L.Trainer) -> int:
    """Training batches processed so far in the run (across epochs and resumes): the index of the batch
    about to start. The data stream and :class:`StepSeed` count in batches, not optimizer steps, so
    two-optimizer stages and gradient accumulation do not shift them."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)


class StepSeed(L.Callback):
    """Re-seed torch, numpy and Python's RNGs before every training batch from (seed, rank, batch).

    Why: randomness drawn from the global generators (posterior samples, dropout, anything a stage
    builds lazily inside ``training_step``) then depends only on the batch index, not on everything the
    process drew before. That is what makes a resumed run draw exactly what the uninterrupted run drew,
    on every rank (a checkpoint holds only rank 0's RNG state), and what gives each rank its own noise
    (``seed_everything`` seeds every rank alike). Stages that keep their own ``torch.Generator`` seeded
    by step (the teacher) are unaffected.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_for_batch(self.seed, trainer.global_rank, batches_done(trainer))


def seed_for_batch(seed: int, rank: int, batch: int) -> None:
    """Seed the global torch (CPU and CUDA), numpy and ``random`` generators from (seed, rank, batch)."""
    state = np.random.SeedSequence([seed, rank, batch]).generate_state(2)
    value = int(state[0]) << 32 | int(state[1])
    torch.manual_seed(value)
    np.random.seed(int(state[0]))
    random.seed(value)


class RunProvenance(L.Callback):
    """Writes ``checkpoint["rest_run"]``: the git SHA of the code, the run directory, the strategy and
    world size, so ``rest-ckpt info``/``export`` can say where a checkpoint came from."""

    def __init__(self, run_dir: Path, git_sha: str, strategy: str) -> None:
        self.run_dir, self.git_sha, self.strategy = str(run_dir), git_sha, strategy

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        from rest_lightning.checkpoint import RUN_KEY

        checkpoint[RUN_KEY] = {
            "git_sha": self.git_sha,
            "run_dir": self.run_dir,
            "strategy": self.strategy,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
        }


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


class StepProgressBar(RichProgressBar):
    """Lightning's Rich bar counted in optimizer steps: ``step 120/2000`` against ``trainer.max_steps``
    (the stages train by step count in one endless epoch, where the stock bar reads ``Epoch 0/-2`` and
    counts batches of that epoch), continuing from the checkpoint's step on resume."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "train"

    @property
    def total_train_batches(self) -> int | float:
        steps = self.trainer.max_steps
        return steps if steps and steps > 0 else super().total_train_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict (names, dtypes, shapes and bytes, in name order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


class RankAgreement(L.Callback):
    """At the end of training every rank hashes its weights (``weights_digest``) and rank 0 writes all of them
    to ``<run_dir>/logs/rank_digests.json``; differing digests mean the replicas diverged (a rank skipped a
    step, a gradient was not all-reduced) and are logged as an error. Only for strategies that replicate the
    weights (DDP, DeepSpeed ZeRO-1/2); under FSDP or ZeRO-3 each rank holds a different shard."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = Path(logs_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import json

        import torch.distributed as dist

        if trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
            return
        digests: list[str | None] = [None] * trainer.world_size
        dist.all_gather_object(digests, weights_digest(pl_module.state_dict()))
        if not trainer.is_global_zero:
            return
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (self.logs_dir / "rank_digests.json").write_text(json.dumps(
            {"step": trainer.global_step, "sha256_by_rank": digests, "agree": len(set(digests)) == 1}, indent=1) + "\n")
        if len(set(digests)) != 1:
            log.error("the ranks' weights differ at the end of training (step %d): %s", trainer.global_step,
                      ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests)))
