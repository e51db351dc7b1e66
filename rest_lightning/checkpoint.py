"""Checkpoints: atomic writes, ``resume=auto``, weights-only ``init_from`` with key maps.

Two kinds of files, two trust levels (DESIGN §7):

- the run's own checkpoints (``<run_dir>/checkpoints/*.ckpt``) are resumed with everything Lightning
  saved (optimizer, schedulers, loops, EMA, RNG states);
- files a user hands in (``init_from=...``) are read as weights only: ``torch.load(weights_only=True)``
  for ``.ckpt``/``.pt`` files, ``safetensors`` for ``.safetensors``. Nothing in them is unpickled as code.

Both are *vetted* first (:func:`vet_checkpoint`): a weights-only load, memory-mapped, before any
library opens the file. A run directory can hold a file someone else put there, so a resumed checkpoint
is not trusted either: Lightning's own load (``Trainer.fit(ckpt_path=...)``) only ever sees a file that
passed. The project's checkpoints need no allowlisted classes (everything in them is tensors, plain
containers and numbers: the stages store configs as plain dicts, ``base.plain_config``); a ZeRO
directory's pickles may also name :data:`ZERO_SAFE_GLOBALS`. A file that fails is refused in one line
naming the config key it came from: :class:`UnsafeCheckpointError` when it names code,
:class:`DamagedCheckpointError` when it is not a complete torch file (``resume=auto`` skips those).

Every checkpoint a :class:`~rest_lightning.stages.base.RestStage` writes carries a ``"rest"`` entry
(stage name, model config, package version) so a checkpoint of another stage or config is refused with
a message naming both, instead of failing deep inside ``load_state_dict``.

Under ``strategy=deepspeed_*`` a checkpoint is a DeepSpeed ZeRO *directory* (``last.ckpt/`` holding
``latest`` and ``checkpoint/*_model_states.pt`` + ``*_optim_states.pt``), not a file. Resume, ``info``,
``export`` and ``init_from`` accept either; weights of a ZeRO directory are consolidated to fp32 with
DeepSpeed's converter, after checking that its pickles reference nothing but DeepSpeed's own
checkpoint types (:data:`ZERO_SAFE_GLOBALS`).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rest_lightning.run_dir import TEMP_MARK
from rest_lightning.state_dict_compat import legacy_missing_keys

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from rest_lightning.run_dir import RunDir

log = logging.getLogger(__name__)

META_KEY = "rest"
RUN_KEY = "rest_run"  # provenance (git SHA, run directory, strategy), written by callbacks.RunProvenance
LAST_NAME = "last.ckpt"
# Written by telemetry.NonFiniteGuard when a run stops on non-finite losses: kept for inspection, never
# resumed by resume=auto (it would diverge again); resume=PATH takes it.
NONFINITE_PREFIX = "nonfinite-"
ZERO_TAG_FILE = "latest"  # DeepSpeed writes the tag of the newest save here
# Lightning's DeepSpeed wrapper prefix in checkpoints written before Lightning 2.1.
_FORWARD_MODULE_PREFIX = "_forward_module."
# The only classes a ZeRO directory's pickles may name (DeepSpeed 0.15-0.19 write these); anything else
# is refused before DeepSpeed's converter, which unpickles with weights_only=False, reads the files.
ZERO_SAFE_GLOBALS = frozenset({
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "torch.optim.adamw.AdamW",
    "collections.OrderedDict",
})
_HPC_RE = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this stage or config."""


class UnsafeCheckpointError(CheckpointMismatchError):
    """A checkpoint whose pickle names code outside the weights-only allowlist: it is never unpickled."""


class DamagedCheckpointError(CheckpointMismatchError):
    """Not a complete torch checkpoint (a truncated save, another format): ``resume=auto`` skips it."""


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_REASON_CHARS = 200  # design choice: enough for torch's reason, short enough for one terminal line
_SAFE_HINT = ("Only tensors and plain containers are read from a .ckpt/.pt file: re-save it as a state dict, "
              "or as safetensors where it was made (`rest-ckpt export ckpt=... out=F.safetensors`).")


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
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def is_zero_checkpoint(path: str | os.PathLike) -> bool:
    """True for a DeepSpeed ZeRO checkpoint directory (what Lightning's DeepSpeed strategy saves)."""
    path = Path(path)
    return path.is_dir() and (path / ZERO_TAG_FILE).is_file()


def zero_tag_dir(path: str | os.PathLike) -> Path:
    """The folder of the newest save inside a ZeRO directory (named by its ``latest`` file)."""
    path = Path(path)
    return path / (path / ZERO_TAG_FILE).read_text().strip()


def zero_model_state_file(path: str | os.PathLike) -> Path:
    """Rank 0's model-states file of a ZeRO directory: Lightning's client state (step, loops, ``rest``
    metadata, RNG states) lives there next to DeepSpeed's own entries."""
    tag = zero_tag_dir(path)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag / name).is_file():
            return tag / name
    raise FileNotFoundError(f"{path} is a ZeRO directory without a rank-0 model-states file in {tag}")


def one_line(err: BaseException) -> str:
    """``err``'s first non-empty line without terminal escapes (torch bolds parts of its messages),
    cut to a line's length: what a refusal quotes as the reason."""
    lines = [line.strip() for line in _ANSI_RE.sub("", str(err)).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


def _zero_safe_classes() -> list[Any]:
    """The classes :data:`ZERO_SAFE_GLOBALS` names, imported (what ``torch.serialization.safe_globals``
    takes). Imported only when a ZeRO directory is read: DeepSpeed's import is slow."""
    import importlib

    classes = []
    for name in sorted(ZERO_SAFE_GLOBALS):
        module, attr = name.rsplit(".", 1)
        try:
            classes.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: a file naming it is refused, as it should be
    return classes


def _weights_only_load(file: Path, source: str, allowed: frozenset[str] = frozenset()) -> Any:
    """``torch.load(file, weights_only=True)``, memory-mapped when the file is a zip (every torch.save
    since 1.6), after a static scan of its pickle so a refusal names the classes it would have run."""
    import zipfile

    is_zip = zipfile.is_zipfile(file)
    if is_zip:
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(file))) - allowed
        except Exception as err:  # a zip without data.pkl, TorchScript, a truncated archive
            raise DamagedCheckpointError(
                f"{source} is not a complete torch checkpoint ({one_line(err)}). Pick another checkpoint."
            ) from None
        if unsafe:
            raise UnsafeCheckpointError(
                f"{source} names code outside the weights-only allowlist ({', '.join(sorted(unsafe))}), so it "
                f"was not unpickled. {_SAFE_HINT}"
            )
    try:
        if allowed:
            with torch.serialization.safe_globals(_zero_safe_classes()):
                return torch.load(file, map_location="cpu", mmap=is_zip, weights_only=True)
        return torch.load(file, map_location="cpu", mmap=is_zip, weights_only=True)
    except pickle.UnpicklingError as err:  # the weights-only unpickler refused a global or an opcode
        raise UnsafeCheckpointError(
            f"{source} cannot be read as weights only ({one_line(err)}). {_SAFE_HINT}"
        ) from None
    except Exception as err:  # RuntimeError from the zip reader, EOFError, a legacy file cut short...
        raise DamagedCheckpointError(
            f"{source} is not a complete torch checkpoint ({one_line(err)}). Pick another checkpoint."
        ) from None


def vet_checkpoint(path: str | os.PathLike, *, source: str) -> dict[str, Any]:
    """Open a checkpoint file or ZeRO directory as weights only and return what it holds (tensors
    memory-mapped; for a ZeRO directory, rank 0's model-states file: Lightning's client state).

    ``source`` names where the path came from, e.g. ``"resume=/runs/x/last.ckpt"`` or
    ``"stage.vae_checkpoint=vae.ckpt"``: every refusal starts with it.

    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafeCheckpointError: the file names code outside the allowlist; nothing was unpickled.
        DamagedCheckpointError: not a complete torch checkpoint, a folder that is not a ZeRO directory,
            a ZeRO directory without its rank-0 model-states file, or a file holding no dict.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if is_zero_checkpoint(path):
        try:
            file = zero_model_state_file(path)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise DamagedCheckpointError(f"{source}: {one_line(err)}. Pick another checkpoint.") from None
        check_zero_pickles(path, source=source)
        obj = _weights_only_load(file, source, ZERO_SAFE_GLOBALS)
    elif path.is_dir():
        raise DamagedCheckpointError(
            f"{source} is a folder but not a DeepSpeed ZeRO checkpoint (no '{ZERO_TAG_FILE}' file in it)"
        )
    else:
        obj = _weights_only_load(path, source)
    if not isinstance(obj, Mapping):
        raise DamagedCheckpointError(f"{source} holds a {type(obj).__name__}, not a checkpoint dict")
    return dict(obj)


def read_checkpoint_header(path: str | os.PathLike, *, source: str | None = None) -> dict[str, Any]:
    """Everything in a checkpoint file or ZeRO directory (``global_step``, ``epoch``, ``rest`` metadata,
    ``loops``...; tensors memory-mapped), read as weights only (:func:`vet_checkpoint`)."""
    return vet_checkpoint(path, source=source or f"resume={path}")


def checkpoint_step(path: Path) -> int:
    """Global step stored in one of the run's own checkpoints (a file or a ZeRO directory)."""
    return int(read_checkpoint_header(path).get("global_step", -1))


def check_zero_pickles(path: str | os.PathLike, *, source: str | None = None) -> None:
    """Refuse a ZeRO directory whose pickled files name any class outside :data:`ZERO_SAFE_GLOBALS`
    (DeepSpeed's converter and its resume unpickle them fully, so this static scan is what keeps a ZeRO
    directory weights-only)."""
    tag = zero_tag_dir(path)
    for file in sorted(tag.glob("*.pt")):
        try:
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
        except Exception as err:
            raise DamagedCheckpointError(
                f"{source or path}: {file.name} is not a complete torch file ({one_line(err)})"
            ) from None
        unsafe = found - ZERO_SAFE_GLOBALS
        if unsafe:
            raise UnsafeCheckpointError(
                f"{source + ': ' if source else ''}{file} references {', '.join(sorted(unsafe))}: not a plain "
                "DeepSpeed ZeRO checkpoint, so it is not unpickled. Convert it where it was written "
                "(`rest-ckpt export ckpt=DIR out=FILE.safetensors`)."
            )


def load_zero_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(fp32 state_dict, client_state)`` of a ZeRO-1/2/3 directory, any world size: DeepSpeed's
    ``get_fp32_state_dict_from_zero_checkpoint`` merges the optimizer's fp32 partitions (the master
    weights, not the possibly half-precision module copy). Keys as in the LightningModule's own
    ``state_dict()``; ``client_state`` holds Lightning's entries (``global_step``, ``rest``...)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    path = Path(path).expanduser()
    check_zero_pickles(path)
    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=None)
    state = {k[len(_FORWARD_MODULE_PREFIX):] if k.startswith(_FORWARD_MODULE_PREFIX) else k: v for k, v in state.items()}
    client = torch.load(zero_model_state_file(path), map_location="cpu", weights_only=True)
    deepspeed_keys = ("module", "optimizer", "lr_scheduler", "param_shapes", "frozen_param_shapes",
                      "frozen_param_fragments", "shared_params", "buffer_names", "ds_config")
    return state, {k: v for k, v in client.items() if k not in deepspeed_keys}


def resume_candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint ``resume=auto`` may pick in a run directory: ``last.ckpt``, ``step=*.ckpt``
    and SLURM's ``hpc_ckpt_*.ckpt`` in ``checkpoints/`` and the run directory itself, files or ZeRO
    directories. Temporary files of an interrupted save (``.NAME.tmp-PID``), ``nonfinite-*`` and ZeRO
    directories without their ``latest`` file (a save interrupted before it finished) are not."""
    return sorted(
        p for folder in (run_dir / "checkpoints", run_dir) if folder.is_dir()
        for p in folder.glob("*.ckpt") if not p.name.startswith((".", NONFINITE_PREFIX))
        and (p.is_file() or is_zero_checkpoint(p))
    )


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """Newest readable checkpoint of a run (:func:`resume_candidates`): the highest global step; ties
    go to ``hpc_ckpt`` then ``last.ckpt``, which are written later in the same step than periodic ones.

    Every candidate is vetted (:func:`vet_checkpoint`). A damaged one (a truncated ``last.ckpt``) is
    skipped with a warning saying why, so the run falls back to the newest one that reads; a candidate
    naming foreign code stops the run (someone put it there: resuming anything else would hide that).

    Raises:
        UnsafeCheckpointError: a candidate names code outside the allowlist.
        DamagedCheckpointError: there are candidates and none of them reads.
    """
    def tie(p: Path) -> int:
        return 2 if _HPC_RE.search(p.name) else 1 if p.name == LAST_NAME else 0

    ranked: list[tuple[tuple[int, int], Path]] = []
    skipped: list[str] = []
    for p in resume_candidates(run_dir):
        try:
            header = vet_checkpoint(p, source=f"resume=auto: {p}")
        except DamagedCheckpointError as err:
            log.warning("resume=auto: skipping %s", err)
            skipped.append(p.name)
            continue
        ranked.append(((int(header.get("global_step", -1)), tie(p)), p))
    if not ranked:
        if skipped:
            raise DamagedCheckpointError(
                f"resume=auto: no checkpoint in {run_dir} reads ({', '.join(skipped)} skipped, reasons logged above). "
                "Resume one explicitly with resume=PATH, or start a new run_dir."
            )
        return None
    (step, _), best = max(ranked, key=lambda item: item[0])
    log.info("resume=auto: newest readable checkpoint is %s (step %d)%s", best, step,
             f"; skipped {', '.join(skipped)}" if skipped else "")
    return best


def load_user_state(path: str | os.PathLike, *, key: str = "init_from") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file a user hands in as weights only: ``(state_dict, rest_metadata)``.

    Accepts a Lightning ``.ckpt`` (its ``state_dict`` and ``"rest"`` entry), a plain ``.pt`` state dict,
    a ``.safetensors`` file (metadata from its header, as ``rest-ckpt export`` writes it), or a DeepSpeed
    ZeRO directory (consolidated to fp32, see :func:`load_zero_weights`). ``key`` is the config key the
    path came from (``init_from``, ``stage.vae_checkpoint``, ``ckpt``...): refusals name it.
    """
    path = Path(path).expanduser()
    source = f"{key}={path}"
    if not path.exists():
        raise FileNotFoundError(f"{key}={str(path)!r} does not exist")
    if is_zero_checkpoint(path):
        vet_checkpoint(path, source=source)
        state, client = load_zero_weights(path)
        return state, dict(client.get(META_KEY, {}))
    if path.is_dir():
        raise CheckpointMismatchError(
            f"{source} is a folder but not a DeepSpeed ZeRO checkpoint (no '{ZERO_TAG_FILE}' file in it)"
        )
    if path.suffix == ".safetensors":
        import json

        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            meta = json.loads(header[META_KEY]) if META_KEY in header else {}
            return load_file(str(path)), meta
        except (SafetensorError, json.JSONDecodeError) as err:
            raise DamagedCheckpointError(f"{source} is not a complete safetensors file ({one_line(err)})") from None
    obj = _weights_only_load(path, source)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return dict(obj["state_dict"]), dict(obj.get(META_KEY, {}))
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    raise CheckpointMismatchError(f"{source} holds neither a state_dict nor a Lightning checkpoint")


def remap_keys(state: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Rename keys by prefix: ``{"model.": "student."}`` turns ``model.x`` into ``student.x``.
    The longest matching prefix wins; keys that match no prefix are kept as they are."""
    prefixes = sorted(key_map, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        src = next((p for p in prefixes if key.startswith(p)), None)
        out[key_map[src] + key[len(src):] if src is not None else key] = value
    return out


INIT_FROM_HINT = "Use init_from_key_map to rename prefixes, or init_from_strict=false to allow missing/unused keys."


def load_weights_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    hint: str = INIT_FROM_HINT,
) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``module``; shape mismatches always fail, missing/unexpected keys fail when
    ``strict``. Returns ``(missing, unexpected)``. The error lists the keys (first 20 of each), then ``hint``.
    The one strict loader of the project: stage checkpoints, ``init_from``, frozen VAE / teacher, the streaming
    models (``streaming.weights.load_module``) and the metric networks (``metrics.weights``) all load here.
    BatchNorm ``num_batches_tracked`` keys absent from a legacy file are not missing, exactly where
    torch's own strict load fills them in (``rest_lightning.state_dict_compat``)."""
    own = module.state_dict()
    tolerated = legacy_missing_keys(module, state)
    missing = sorted(k for k in own if k not in state and k not in tolerated)
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
        raise CheckpointMismatchError(f"cannot load {source}:\n" + "\n".join(problems) + "\n" + hint)
    plain = OrderedDict(state)
    if hasattr(state, "_metadata"):
        plain._metadata = state._metadata  # type: ignore[attr-defined]  # torch reads layer versions from it
    module.load_state_dict(plain, strict=False)
    return missing, unexpected


def _listing(title: str, keys: list[str], limit: int = 20) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"  {title} ({len(keys)}): " + ", ".join(keys[:limit]) + more


def select_resume_checkpoint(cfg: DictConfig, run_dir: RunDir) -> Path | None:
    """The checkpoint to resume, vetted as weights only (``checkpoint.vet_checkpoint``), or None.

    ``resume=never`` on a run directory that already holds checkpoints is refused: a second run there
    would write its checkpoints beside the first one's and a later ``resume=auto`` could pick either.
    """
    from rest_lightning.config import ConfigError

    if cfg.resume == "never":
        existing = resume_candidates(run_dir.path)
        if existing:
            raise ConfigError(
                f"resume=never but run_dir={run_dir.path} already holds checkpoints ({existing[-1].name}...) of "
                "another run. Continue it with resume=auto, or start a new run in a new run_dir=PATH."
            )
        return None
    if cfg.resume == "auto":
        return find_resume_checkpoint(run_dir.path)
    path = Path(cfg.resume).expanduser()
    vet_checkpoint(path, source=f"resume={path}")
    return path
