"""Test instrumentation run inside SLURM jobs: the tiny VAE stage plus one line per rank of what it did.

Selected with ``stage._target_=slurm_probe.ProbeVAEStage`` (``tests/slurm`` on PYTHONPATH). It is the
real ``VAEStage`` (same stage name, weights and checkpoints), so ``experiment=tiny_vae`` composes as
usual; it only adds a ``PROBE`` line on every rank, because Lightning writes checkpoints and logs from
rank 0 alone and the tests must see what rank 1 trained on and ended with.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch

from rest_lightning.data.batch import ClipBatch
from rest_lightning.stages.vae import VAEStage


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' bytes in key order: equal digests = bitwise equal weights."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ProbeVAEStage(VAEStage):
    def __init__(self, *args: Any, step_sleep_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_sleep_s = step_sleep_s  # slows training so a test can signal the job mid-run
        self._data = hashlib.sha256()
        self._first_step: int | None = None

    def on_train_batch_start(self, batch: ClipBatch, batch_idx: int) -> None:
        if self._first_step is None:
            self._first_step = self.global_step
        self._data.update(batch.video.detach().cpu().contiguous().numpy().tobytes())

    def training_step(self, batch: ClipBatch, batch_idx: int) -> None:
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        return super().training_step(batch, batch_idx)

    def on_train_end(self) -> Any:
        print(f"PROBE rank={self.global_rank} world={self.trainer.world_size} first_step={self._first_step} "
              f"last_step={self.global_step} data={self._data.hexdigest()[:16]} "
              f"weights={weights_digest(self.vae.state_dict())}", flush=True)
