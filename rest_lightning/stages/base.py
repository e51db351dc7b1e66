"""What every REST stage shares: checkpoint identity, RNG state, weights-only initialisation.

A stage subclasses :class:`RestStage`, sets ``stage_name`` (and ``num_optimizers`` when it steps more
than one, so the config validator can refuse DeepSpeed), and implements :meth:`identity_config`, the
plain-dict config that must match for a checkpoint to be resumed (model sizes, not learning rates).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch

from rest_lightning import __version__
from rest_lightning.checkpoint import (
    META_KEY,
    CheckpointMismatchError,
    load_user_state,
    load_weights_into,
    remap_keys,
)

log = logging.getLogger(__name__)


class RestStage(L.LightningModule):
    stage_name: ClassVar[str] = "base"
    num_optimizers: ClassVar[int] = 1
    # True when the stage steps its optimizers itself (then it also clips its own gradients).
    manual_optimization: ClassVar[bool] = False
    # True when some parameters get no gradient in some steps (a GAN discriminator before it switches
    # on): DDP must then look for unused parameters, whatever strategy.find_unused_parameters says.
    has_unused_parameters: ClassVar[bool] = False
    # Stages whose weights this one may start from with init_from (teacher -> student, say).
    init_from_stages: ClassVar[tuple[str, ...]] = ()

    def identity_config(self) -> dict[str, Any]:
        """Plain (JSON-able) config that defines the architecture; stored in every checkpoint."""
        raise NotImplementedError(f"{type(self).__name__} must define identity_config()")

    def total_steps(self) -> int:
        """The optimizer steps the run will take: ``trainer.max_steps``, else Lightning's estimate from the
        epochs (what a learning-rate schedule spans)."""
        return self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)

    def logged_step(self) -> int:
        """The step Lightning stamps on the metrics this stage logs now: the validation after the 8th
        optimizer step logs at step 7 (its loop counts the steps taken before this batch's). Media written
        by hand (validation videos, drift curves, their file names) use it too, so each validation's videos
        and metrics share one point on W&B's and metrics.csv's step axis."""
        return int(self.trainer.fit_loop.epoch_loop._batches_that_stepped)

    def tokens_per_sample(self, batch: Any) -> int | None:
        """Tokens the main model processes per sample of ``batch`` (telemetry's train/tokens_per_s);
        None when the notion does not apply."""
        return None

    # --- checkpoint identity and RNG ------------------------------------------------------------

    # The side in pixels of the square clips this stage trained on (the references' side, in video and
    # latent mode alike); stored in every checkpoint so rest-generate streams at it by default.
    trained_resolution: int | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        ref = getattr(batch, "ref", None)
        if self.trained_resolution is None and isinstance(ref, torch.Tensor) and ref.ndim == 4:
            self.trained_resolution = int(ref.shape[-1])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = {
            "stage": self.stage_name,
            "config": self.identity_config(),
            "version": __version__,
        }
        if self.trained_resolution is not None:
            checkpoint[META_KEY]["resolution"] = self.trained_resolution
        # Lightning does not save RNG states; exact resume needs them (noise, dropout, timesteps).
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_compatible(checkpoint.get(META_KEY, {}), source="the resumed checkpoint", resume=True)
        self.trained_resolution = checkpoint.get(META_KEY, {}).get("resolution", self.trained_resolution)
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])

    def check_compatible(self, meta: Mapping[str, Any], *, source: str, resume: bool) -> None:
        """Refuse a checkpoint of another stage, or (for resume) of another architecture config."""
        stage = meta.get("stage")
        allowed = (self.stage_name,) if resume else (self.stage_name, *self.init_from_stages)
        if stage is None:
            if resume:
                raise CheckpointMismatchError(f"{source} was not written by rest_lightning (no '{META_KEY}' entry)")
            return  # a plain state dict: the key/shape check decides
        if stage not in allowed:
            raise CheckpointMismatchError(
                f"{source} is a '{stage}' checkpoint but this run trains stage '{self.stage_name}', "
                f"which accepts {' or '.join(repr(s) for s in allowed)} checkpoints"
                + ("" if resume else " for init_from")
            )
        if resume and meta.get("config") != self.identity_config():
            diff = _dict_diff(meta.get("config", {}), self.identity_config())
            raise CheckpointMismatchError(
                f"{source} was trained with another model config ({diff}); resume needs the same "
                "config. Start a new run_dir, or use init_from=PATH to take its weights."
            )

    def load_init_from(self, path: str | Path, *, strict: bool = True, key_map: Mapping[str, str] | None = None) -> None:
        """Initialise weights from a user-provided file (weights only; see ``checkpoint.py``)."""
        state, meta = load_user_state(path)
        self.check_compatible(meta, source=f"init_from={path}", resume=False)
        if key_map:
            state = remap_keys(state, key_map)
        missing, unexpected = load_weights_into(self, state, strict=strict, source=f"init_from={path}")
        log.info("init_from %s: %d tensors loaded, %d missing, %d unused",
                 path, len(state) - len(unexpected), len(missing), len(unexpected))


def plain_config(value: Any) -> Any:
    """A dataclass ``asdict`` made JSON-like (enums to values, tuples to lists), so identity configs
    compare equal after a checkpoint round trip and load with ``weights_only=True``."""
    from enum import Enum

    if isinstance(value, Mapping):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    # Converted to plain types/tensors so the file stays loadable with weights_only=True.
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def _dict_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            sub = _dict_diff(a, b, f"{prefix}{key}.")
            if sub:
                diffs.append(sub)
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r} vs config {b!r}")
    return "; ".join(diffs)
