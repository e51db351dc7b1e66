"""Checkpoints: atomic writes, ``resume=auto``, weights-only ``init_from`` with key maps.

Two kinds of files, two trust levels (DESIGN §7):

- the run's own checkpoints (``<run_dir>/checkpoints/*.ckpt``) are resumed with everything Lightning
  saved (optimizer, schedulers, loops, EMA, RNG states);
- files a user hands in (``init_from=...``) are read as weights only: ``torch.load(weights_only=True)``
  for ``.ckpt``/``.pt`` files, ``safetensors`` for ``.safetensors``. Nothing in them is unpickled as code.

Every checkpoint a :class:`~rest_lightning.stages.base.RestStage` writes carries a ``"rest"`` entry
(stage name, model config, package version) so a checkpoint of another stage or config is refused with
a message naming both, instead of failing deep inside ``load_state_dict``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

META_KEY = "rest"
LAST_NAME = "last.ckpt"
_STEP_RE = re.compile(r"step=(\d+)")
_HPC_RE = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this stage or config."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then ``os.replace``.

    ``os.replace`` is atomic on POSIX: a process killed mid-save (kill -9, node failure) leaves either the
    previous complete file or none, never a truncated ``last.ckpt`` that a resume would half-load.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def checkpoint_step(path: Path) -> int:
    """Global step stored in one of the run's own checkpoints (reads the file, memory-mapped)."""
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return int(ckpt.get("global_step", -1))


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """Newest checkpoint of a run: the highest global step among ``last.ckpt``, ``step=*.ckpt`` and
    SLURM's ``hpc_ckpt_*.ckpt`` (written by Lightning on SIGUSR1 before a requeue). Ties go to
    ``hpc_ckpt`` then ``last.ckpt``, which are written later in the same step than periodic ones.
    Temporary files of an interrupted save are ignored."""
    candidates = [
        p for folder in (run_dir / "checkpoints", run_dir) if folder.is_dir()
        for p in folder.glob("*.ckpt") if not p.name.startswith(".")
    ]
    if not candidates:
        return None

    def rank(p: Path) -> tuple[int, int]:
        tie = 2 if _HPC_RE.search(p.name) else 1 if p.name == LAST_NAME else 0
        return checkpoint_step(p), tie

    best = max(candidates, key=rank)
    log.info("resume=auto: newest checkpoint is %s", best)
    return best


def load_user_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file a user hands in as weights only: ``(state_dict, rest_metadata)``.

    Accepts a Lightning ``.ckpt`` (its ``state_dict`` and ``"rest"`` entry), a plain ``.pt`` state dict,
    or a ``.safetensors`` file (metadata from its header, as ``rest-ckpt export`` writes it).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"init_from={str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header[META_KEY]) if META_KEY in header else {}
        return load_file(str(path)), meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for anything that is not plain tensors/containers
        raise CheckpointMismatchError(
            f"{path} cannot be read as weights only ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Files handed in with init_from must be plain state dicts, Lightning checkpoints without "
            "pickled objects, or safetensors (`rest-ckpt export` writes one)."
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return dict(obj["state_dict"]), dict(obj.get(META_KEY, {}))
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    raise CheckpointMismatchError(f"{path} holds neither a state_dict nor a Lightning checkpoint")


def remap_keys(state: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Rename keys by prefix: ``{"model.": "student."}`` turns ``model.x`` into ``student.x``.
    The longest matching prefix wins; keys that match no prefix are kept as they are."""
    prefixes = sorted(key_map, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        src = next((p for p in prefixes if key.startswith(p)), None)
        out[key_map[src] + key[len(src):] if src is not None else key] = value
    return out


def load_weights_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``module``; shape mismatches always fail, missing/unexpected keys fail when
    ``strict``. Returns ``(missing, unexpected)``. The error lists the keys (first 20 of each)."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    )
    problems = []
    if mismatched:
        problems.append(_listing("shape mismatches", mismatched))
    if strict and missing:
        problems.append(_listing("missing in the file", missing))
    if strict and unexpected:
        problems.append(_listing("unused from the file", unexpected))
    if problems:
        raise CheckpointMismatchError(
            f"cannot load {source}:\n" + "\n".join(problems)
            + "\nUse init_from_key_map to rename prefixes, or init_from_strict=false to allow missing/unused keys."
        )
    module.load_state_dict(dict(state), strict=False)
    return missing, unexpected


def _listing(title: str, keys: list[str], limit: int = 20) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"  {title} ({len(keys)}): " + ", ".join(keys[:limit]) + more
