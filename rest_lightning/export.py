"""``rest-ckpt``: export a checkpoint to one safetensors file, and say what a checkpoint holds.

Export (DESIGN §7): a Lightning ``.ckpt`` file or a DeepSpeed ZeRO directory -> ``FILE.safetensors``
(every floating tensor in float32) plus ``FILE.json``, the card (stage, identity config, step, git
SHA, source). The safetensors header carries the same metadata under ``"rest"`` as JSON, the form
``checkpoint.load_user_state`` reads, so ``init_from=FILE.safetensors`` checks the stage as it does
for a ``.ckpt``.

EMA (``ema=True``): a stage's EMA copy lives under ``ema.module.*`` and shadows one of its submodules
(the VAE stage's ``vae.*``, the teacher's ``model.*``). The export writes the EMA values onto that
submodule's keys and keeps ``ema.module.*`` as they are, so the file is still a complete state dict of
the stage: a strict ``init_from`` loads it, and its EMA restarts from the EMA weights. Consumers that
look for ``ema.module.*`` first (the streaming generator) read the same values either way.

Inputs are read as weights only: every ``.ckpt`` file or ZeRO directory is vetted first
(``checkpoint.vet_checkpoint``: a weights-only load, the ZeRO pickles checked against the allowlist), and
only then does DeepSpeed's converter read a ZeRO directory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rest_lightning.checkpoint import (
    META_KEY,
    RUN_KEY,
    CheckpointMismatchError,
    DamagedCheckpointError,
    is_zero_checkpoint,
    load_zero_weights,
    one_line,
    vet_checkpoint,
    zero_tag_dir,
)

log = logging.getLogger(__name__)

EMA_PREFIX = "ema.module."
CARD_SUFFIX = ".json"


@dataclass(frozen=True)
class ExportCard:
    """What ``FILE.json`` beside an exported ``FILE.safetensors`` records."""

    stage: str | None
    config: dict[str, Any] | None  # the stage's identity config (architecture)
    step: int | None
    epoch: int | None
    weights: str  # "model" or "ema"
    ema_target: str | None  # the prefix the EMA copy shadows (e.g. "vae."), when there is an EMA copy
    git_sha: str | None  # of the code that trained the checkpoint (from the checkpoint or its run directory)
    export_git_sha: str  # of the code that exported it
    source: str  # absolute path of the checkpoint
    source_kind: str  # "lightning" (a .ckpt file) or "zero" (a DeepSpeed ZeRO directory)
    tensors: int
    bytes: int
    sha256: str  # of the safetensors file
    version: str | None  # rest_lightning version that trained it
    created: str  # UTC time of the export
    resolution: int | None = None  # side of the clips it trained on (rest-generate's default resolution)
    sampler_timesteps: list[float] | None = None  # a student's few-step levels (stored_models.stream_config)

    def metadata(self) -> dict[str, Any]:
        """The ``"rest"`` entry written into the safetensors header (what init_from checks)."""
        return {k: v for k, v in asdict(self).items() if k not in ("sha256", "bytes", "tensors")}


# --- reading a checkpoint (weights only) ---------------------------------------------------------


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """``(state_dict, everything else, kind)`` of a ``.ckpt`` file or a ZeRO directory, weights only."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ckpt={str(path)!r} does not exist")
    if is_zero_checkpoint(path):
        vet_checkpoint(path, source=f"ckpt={path}")
        state, client = load_zero_weights(path)
        return state, client, "zero"
    ckpt = vet_checkpoint(path, source=f"ckpt={path}")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"ckpt={path} is not a Lightning checkpoint (no 'state_dict' entry)")
    rest = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return dict(ckpt["state_dict"]), rest, "lightning"


def ema_target_prefix(state: Mapping[str, torch.Tensor]) -> str | None:
    """The top-level prefix whose keys and shapes match the EMA copy's exactly (``"vae."``,
    ``"model."``), None when there is no ``ema.module.*``. Raises when no single prefix matches."""
    ema = {k[len(EMA_PREFIX):]: v.shape for k, v in state.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        return None
    roots = sorted({k.split(".", 1)[0] + "." for k in state if not k.startswith("ema.") and "." in k})
    matches = [
        root for root in roots
        if {k[len(root):]: v.shape for k, v in state.items() if k.startswith(root)} == ema
    ]
    if len(matches) != 1:
        raise CheckpointMismatchError(
            f"cannot tell which module the EMA copy ({len(ema)} tensors under '{EMA_PREFIX}') shadows: "
            f"{'no' if not matches else 'several'} top-level modules ({', '.join(matches or roots)}) match its keys "
            "and shapes. Export without ema=true."
        )
    return matches[0]


def _run_git_sha(path: Path, rest: Mapping[str, Any]) -> str | None:
    """Git SHA of the code that trained the checkpoint: its provenance entry, else the run directory's
    ``git_sha.txt`` (``<run_dir>/checkpoints/<ckpt>``)."""
    sha = rest.get(RUN_KEY, {}).get("git_sha")
    if sha:
        return sha
    run_file = path.resolve().parent.parent / "git_sha.txt"
    return run_file.read_text().strip() if run_file.is_file() else None


# --- export ---------------------------------------------------------------------------------------


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, *, ema: bool = False) -> ExportCard:
    """Write ``out`` (``.safetensors``, float32) and ``out`` with ``.json`` (the :class:`ExportCard`).

    Args:
        ckpt: a Lightning ``.ckpt`` file or a DeepSpeed ZeRO directory.
        out: the safetensors file to write (its folder is created).
        ema: put the EMA weights on the module the EMA copy shadows (module docstring); refused when
            the checkpoint has no EMA copy.
    """
    from safetensors.torch import save_file

    from rest_lightning.run_dir import git_sha

    src, out = Path(ckpt).expanduser(), Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise ValueError(f"out={str(out)!r} must end in .safetensors")
    state, rest, kind = read_weights(src)
    target = ema_target_prefix(state)
    if ema:
        if target is None:
            raise CheckpointMismatchError(f"ckpt={src} holds no EMA copy ('{EMA_PREFIX}*' keys): export with ema=false")
        for key in [k for k in state if k.startswith(EMA_PREFIX)]:
            state[target + key[len(EMA_PREFIX):]] = state[key]
    # float32 for every floating tensor (bf16/fp16 training keeps fp32 masters; a half module copy is
    # widened); contiguous private copies, since safetensors refuses tensors that share storage.
    tensors = {
        k: (v.float() if v.is_floating_point() else v).detach().contiguous().clone() for k, v in sorted(state.items())
    }
    meta = dict(rest.get(META_KEY, {}))
    card_fields = {
        "stage": meta.get("stage"),
        "config": meta.get("config"),
        "resolution": meta.get("resolution"),
        "sampler_timesteps": meta.get("sampler_timesteps"),
        "step": rest.get("global_step"),
        "epoch": rest.get("epoch"),
        "weights": "ema" if ema else "model",
        "ema_target": target,
        "git_sha": _run_git_sha(src, rest),
        "export_git_sha": git_sha(),
        "source": str(src.resolve()),
        "source_kind": kind,
        "version": meta.get("version"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    header = {META_KEY: json.dumps({**card_fields, "tensors": len(tensors)})}
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    card = ExportCard(
        **card_fields,
        tensors=len(tensors),
        bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        sha256=_sha256(out),
    )
    card_path = out.with_suffix(CARD_SUFFIX)
    card_path.write_text(json.dumps(asdict(card), indent=2, sort_keys=True) + "\n")
    log.info("exported %s (%s, %s weights, step %s): %d tensors, %.1f MB -> %s (+ %s)",
             src, card.stage, card.weights, card.step, card.tensors, card.bytes / 1e6, out, card_path.name)
    return card


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- info -----------------------------------------------------------------------------------------


def checkpoint_info(ckpt: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint holds, as a JSON-able dict: kind, stage, step, identity config, tensors and
    bytes (total and per top-level module), dtypes, optimizer / scheduler / EMA / RNG presence,
    provenance. Reads a ``.ckpt`` or ``.safetensors`` file memory-mapped, a ZeRO directory from its
    rank-0 model-states file (shapes only: nothing is consolidated)."""
    path = Path(ckpt).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ckpt={str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return _safetensors_info(path)
    ckpt_obj = vet_checkpoint(path, source=f"ckpt={path}")
    if is_zero_checkpoint(path):
        return _zero_info(path, ckpt_obj)
    if not isinstance(ckpt_obj, Mapping) or "state_dict" not in ckpt_obj:
        raise CheckpointMismatchError(f"ckpt={path} is not a Lightning checkpoint (no 'state_dict' entry)")
    state = ckpt_obj["state_dict"]
    optimizers = ckpt_obj.get("optimizer_states", [])
    info = _common_info(path, "lightning", ckpt_obj)
    info |= _tensor_info({k: (tuple(v.shape), v.dtype) for k, v in state.items()})
    info |= {
        "optimizers": len(optimizers),
        "optimizer_state_tensors": sum(
            1 for opt in optimizers for per_param in opt.get("state", {}).values()
            for v in per_param.values() if isinstance(v, torch.Tensor)
        ),
        "file_bytes": path.stat().st_size,
    }
    return info


def _common_info(path: Path, kind: str, client: Mapping[str, Any]) -> dict[str, Any]:
    meta = client.get(META_KEY, {})
    return {
        "path": str(path.resolve()),
        "kind": kind,
        "stage": meta.get("stage"),
        "version": meta.get("version"),
        "step": client.get("global_step"),
        "epoch": client.get("epoch"),
        "config": meta.get("config"),
        "lr_schedulers": len(client.get("lr_schedulers", [])),
        "rng_states": "rng_states" in client,
        "loops": "loops" in client,
        "callbacks": sorted(str(k) for k in client.get("callbacks", {})),
        "provenance": dict(client.get(RUN_KEY, {})),
    }


def _tensor_info(shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, Any]:
    by_module: Counter[str] = Counter()
    bytes_by_module: Counter[str] = Counter()
    total_bytes = 0
    dtypes: Counter[str] = Counter()
    for key, (shape, dtype) in shapes.items():
        root = "ema" if key.startswith(EMA_PREFIX) else key.split(".", 1)[0]
        numel = int(torch.Size(shape).numel())
        size = numel * dtype.itemsize
        by_module[root] += 1
        bytes_by_module[root] += size
        total_bytes += size
        dtypes[str(dtype).removeprefix("torch.")] += 1
    return {
        "tensors": len(shapes),
        "bytes": total_bytes,
        "modules": {root: {"tensors": by_module[root], "bytes": bytes_by_module[root]} for root in sorted(by_module)},
        "dtypes": dict(sorted(dtypes.items())),
        "ema": any(k.startswith(EMA_PREFIX) for k in shapes),
    }


def _zero_info(path: Path, client: Mapping[str, Any]) -> dict[str, Any]:
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for group in client.get("param_shapes", []):  # trainable parameters, consolidated shapes
        for key, shape in group.items():
            shapes[key] = (tuple(shape), torch.float32)
    for key, shape in client.get("frozen_param_shapes", {}).items():
        shapes[key] = (tuple(shape), torch.float32)
    module = client.get("module") or {}
    for key in client.get("buffer_names", []):
        if key in module:
            shapes[key] = (tuple(module[key].shape), module[key].dtype)
    shapes = {k.removeprefix("_forward_module."): v for k, v in shapes.items()}
    tag = zero_tag_dir(path)
    info = _common_info(path, "zero", client)
    info |= _tensor_info(shapes)
    info |= {
        "zero_stage": int(client.get("ds_config", {}).get("zero_optimization", {}).get("stage", -1)),
        "world_size": client.get("dp_world_size"),
        "optimizers": 1,
        "optimizer_files": len(list(tag.glob("*optim_states.pt"))),
        "file_bytes": sum(f.stat().st_size for f in tag.rglob("*") if f.is_file()),
    }
    return info


def _safetensors_info(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            shapes = {k: (tuple(f.get_slice(k).get_shape()), _st_dtype(f.get_slice(k).get_dtype())) for k in f.keys()}
        meta = json.loads(header[META_KEY]) if META_KEY in header else {}
    except (SafetensorError, json.JSONDecodeError) as err:
        raise DamagedCheckpointError(f"ckpt={path} is not a complete safetensors file ({one_line(err)})") from None
    info = {
        "path": str(path.resolve()),
        "kind": "safetensors",
        "stage": meta.get("stage"),
        "version": meta.get("version"),
        "step": meta.get("step"),
        "epoch": meta.get("epoch"),
        "config": meta.get("config"),
        "weights": meta.get("weights"),
        "source": meta.get("source"),
        "git_sha": meta.get("git_sha"),
        "optimizers": 0,
        "file_bytes": path.stat().st_size,
    }
    return info | _tensor_info(shapes)


def _st_dtype(name: str) -> torch.dtype:
    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}[name]
