"""Models and stream settings rebuilt from what a checkpoint stores (issue 13: "the checkpoint decides").

A teacher or student checkpoint stores its architectures (``rest.config``: ``dit``, ``audio``, ``vae``,
``chunk_frames``; a student also its ``cache``), a VAE checkpoint its ``vae``. Building the modules from
those, rather than from whatever ``model/*`` group a command line names, means a stream or an
evaluation runs the network that was trained, with the cache it was trained with:

- ``load_denoiser(path)`` -> the DiT and audio encoder (EMA weights first), their ``StoredDenoiser`` meta;
- ``load_vae(path)`` -> the VAE (EMA weights first);
- ``stream_config(stored, **overrides)`` -> the ``StreamConfig`` the checkpoint implies; an override that
  contradicts a stored cache setting is refused, naming both values.

A teacher stores no cache: it streams with ``TEACHER_STREAM_DEFAULTS`` unless told otherwise.
Files are read weights-only (``checkpoint.load_user_state``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from rest_lightning.checkpoint import CheckpointMismatchError, load_user_state, load_weights_into
from rest_lightning.models.audio import AudioConfig, AudioEncoder
from rest_lightning.models.dit import DiT, DiTConfig
from rest_lightning.models.vae import CausalVideoVAE, VAEConfig
from rest_lightning.streaming.generator import StreamConfig

log = logging.getLogger(__name__)

# Key prefixes of a module inside a stage checkpoint, best first: the EMA copy, then the trained weights.
DENOISER_PREFIXES = ("ema.module.", "model.")  # teacher / student: {dit,audio_encoder}.*
VAE_PREFIXES = ("ema.module.", "vae.")  # VAE stage
# Where rest-generate / rest-bench / rest-serve look for each streaming module in a checkpoint without a stored
# config (the ``weights.*`` keys, null = these): the stage prefixes above, then a bare denoiser state dict.
MODULE_PREFIXES = {
    "dit": tuple(p + "dit." for p in DENOISER_PREFIXES) + ("dit.",),
    "audio": tuple(p + "audio_encoder." for p in DENOISER_PREFIXES) + ("audio_encoder.",),
    "vae": VAE_PREFIXES,
}
DIFFUSION_STAGES = ("teacher", "student")
# A teacher checkpoint stores no cache: window 1 is the shortest window that keeps a context chunk
# (design choice); the switches default on as in CacheConfig.
TEACHER_STREAM_DEFAULTS = {"window": 1, "use_id_sink": True, "use_context_cache": True}


class StoredModelError(ValueError):
    """A checkpoint that cannot give the modules asked for (one line naming the file and the fix)."""


@dataclass(frozen=True)
class StoredDenoiser:
    """A teacher / student as stored: ``stage``, ``chunk_frames`` and ``cache`` (student only, else None)."""

    dit: DiT
    audio: AudioEncoder
    stage: str
    chunk_frames: int
    cache: dict[str, Any] | None
    source: str
    vae_config: dict[str, Any] | None = None  # the architecture of the VAE it was trained on
    resolution: int | None = None  # the side of the clips it trained on (checkpoints from 2026-12 on)
    timesteps: tuple[float, ...] | None = None  # a student's few-step levels (checkpoints from 2026-12-07 on)


def select_module_weights(state: dict[str, Tensor], prefixes: tuple[str, ...]) -> tuple[dict[str, Tensor], str]:
    """One module's keys from a stage state dict: those under the first of ``prefixes`` present (best
    first, e.g. the EMA copy), prefix stripped; else the file as a bare state dict. ``(weights, prefix)``."""
    for prefix in prefixes:
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            return weights, prefix
    return dict(state), ""


def _config(cls: type, stored: dict[str, Any], source: str) -> Any:
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in stored.items() if k in known})
    except (TypeError, ValueError) as err:
        raise StoredModelError(f"{source}: its stored {cls.__name__} does not build ({err})") from None


def load_denoiser(path: str | Path, key: str = "ckpt") -> StoredDenoiser:
    """The DiT + audio encoder of a teacher / student checkpoint, built from its stored config."""
    state, meta = load_user_state(path, key=key)
    return denoiser_from_state(state, meta, f"{key}={path}")


def denoiser_from_state(state: dict[str, Tensor], meta: dict[str, Any], source: str) -> StoredDenoiser:
    """``load_denoiser`` on a checkpoint already read (``checkpoint.load_user_state``)."""
    stage, config = meta.get("stage"), meta.get("config") or {}
    if not has_stored_config(meta):
        raise StoredModelError(
            f"{source} is {'a ' + repr(stage) if stage else 'not a'} stage checkpoint with a stored config; "
            f"give a {' or '.join(DIFFUSION_STAGES)} checkpoint written by rest-train (or rest-ckpt export)"
        )
    dit = DiT(_config(DiTConfig, config["dit"], source))
    audio = AudioEncoder(_config(AudioConfig, config["audio"], source))
    weights, prefix = select_module_weights(state, DENOISER_PREFIXES)
    for name, module in (("dit.", dit), ("audio_encoder.", audio)):
        part = {k[len(name):]: v for k, v in weights.items() if k.startswith(name)}
        load_weights_into(module, part, strict=True, source=f"{source} ({prefix}{name}*)")
    timesteps = meta.get("sampler_timesteps")
    return StoredDenoiser(dit.eval(), audio.eval(), stage, int(config.get("chunk_frames", 1)),
                          config.get("cache"), source, config.get("vae"), meta.get("resolution"),
                          tuple(float(t) for t in timesteps) if timesteps else None)


def load_frozen_weights(
    module: nn.Module, checkpoint: str | Path, *, key: str, stage: str, prefixes: tuple[str, ...], experiments: str
) -> None:
    """Load a frozen module strictly, weights only, from a checkpoint of ``stage`` (another stage's is
    refused, naming config ``key`` and the ``experiments`` that write the right one)."""
    state, meta = load_user_state(checkpoint)
    found = meta.get("stage")
    if found is not None and found != stage:
        raise CheckpointMismatchError(
            f"{key}={str(checkpoint)!r} is a '{found}' checkpoint; it must come from the '{stage}' stage "
            f"(experiment={experiments})"
        )
    weights, prefix = select_module_weights(state, prefixes)
    load_weights_into(module, weights, strict=True, source=f"{key}={checkpoint}")
    log.info("frozen %s loaded from %s (%s weights)", stage, checkpoint, prefix.rstrip(".") or "bare")


def has_stored_config(meta: dict[str, Any]) -> bool:
    """True when a checkpoint's metadata describes a teacher / student that ``load_denoiser`` can rebuild."""
    config = meta.get("config") or {}
    return meta.get("stage") in DIFFUSION_STAGES and "dit" in config and "audio" in config


def build_vae(config: dict[str, Any], source: str) -> CausalVideoVAE:
    """A VAE of a stored architecture (random weights): what a teacher / student's ``vae_config`` describes."""
    return CausalVideoVAE(_config(VAEConfig, config, source))


def load_vae(path: str | Path, key: str = "vae_ckpt") -> CausalVideoVAE:
    """The VAE of a VAE-stage checkpoint, built from its stored config (EMA weights first)."""
    state, meta = load_user_state(path, key=key)
    return vae_from_state(state, meta, f"{key}={path}")


def vae_from_state(state: dict[str, Tensor], meta: dict[str, Any], source: str) -> CausalVideoVAE:
    """``load_vae`` on a checkpoint already read (``checkpoint.load_user_state``)."""
    config = (meta.get("config") or {}).get("vae")
    if meta.get("stage") != "vae" or config is None:
        raise StoredModelError(f"{source} is not a VAE-stage checkpoint with a stored config (rest-train "
                               "experiment=*_vae writes one)")
    vae = build_vae(config, source)
    weights, _ = select_module_weights(state, VAE_PREFIXES)
    load_weights_into(vae, weights, strict=True, source=source)
    return vae.eval()


def stream_config(stored: StoredDenoiser, **overrides: Any) -> StreamConfig:
    """The ``StreamConfig`` ``stored`` was trained for; ``overrides`` may set free fields (seed, audio_guidance,
    compile; timesteps where none are stored) and may only repeat a stored cache setting or a student's stored
    sampler levels, never contradict them."""
    cache = dict(stored.cache) if stored.cache is not None else dict(TEACHER_STREAM_DEFAULTS)
    for name, value in overrides.items():
        if stored.cache is not None and name in cache and value != cache[name]:
            raise StoredModelError(
                f"stream.{name}={value!r} contradicts the {stored.source} student's trained {name}={cache[name]!r}; "
                "drop the override (the checkpoint decides the cache)"
            )
    if overrides.get("chunk_frames", stored.chunk_frames) != stored.chunk_frames:
        raise StoredModelError(f"stream.chunk_frames={overrides['chunk_frames']} contradicts the trained "
                               f"chunk_frames={stored.chunk_frames} of {stored.source}")
    if stored.timesteps is not None:
        asked = overrides.get("timesteps")
        if asked is not None and tuple(float(t) for t in asked) != stored.timesteps:
            raise StoredModelError(
                f"stream.timesteps={list(asked)} contradicts the levels {list(stored.timesteps)} {stored.source} "
                "was trained to denoise at; drop the override (the checkpoint decides the sampler)"
            )
        cache["timesteps"] = stored.timesteps
    settings = {**cache, "chunk_frames": stored.chunk_frames, **overrides}
    return StreamConfig(**{k: v for k, v in settings.items() if k in {f.name for f in fields(StreamConfig)}})


__all__ = [
    "DENOISER_PREFIXES",
    "MODULE_PREFIXES",
    "StoredDenoiser",
    "StoredModelError",
    "TEACHER_STREAM_DEFAULTS",
    "build_vae",
    "denoiser_from_state",
    "has_stored_config",
    "load_frozen_weights",
    "load_denoiser",
    "load_vae",
    "select_module_weights",
    "stream_config",
    "vae_from_state",
]
