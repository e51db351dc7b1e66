"""Models and the ``StreamingGenerator`` from a ``conf/generate.yaml``-shaped config: what ``rest-generate``,
``rest-bench`` and the evaluation's generation share (``build_models``, ``build_generator``, ``resolution_of``).

A checkpoint decides what it stores (``stored_models``): model sizes, training resolution and the cache it was
trained with; the config's model groups only fill in what a checkpoint does not store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rest_lightning.config import ConfigError
from rest_lightning.sizes import check_size
from rest_lightning.stored_models import (
    StoredDenoiser,
    StoredModelError,
    build_vae,
    denoiser_from_state,
    has_stored_config,
    stream_config,
    vae_from_state,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --- devices and models ----------------------------------------------------------------------------------


def pick_device_dtype(cfg: DictConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except RuntimeError as err:
            raise ConfigError(f"device={cfg.device!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={cfg.device!r} but CUDA is not available here; use device=cpu")
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif cfg.dtype in DTYPES:
        dtype = DTYPES[cfg.dtype]
    else:
        raise ConfigError(f"dtype={cfg.dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return device, dtype


def _read_checkpoint(path: str, key: str, stages: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict]:
    from rest_lightning.checkpoint import CheckpointMismatchError, load_user_state

    try:
        state, meta = load_user_state(path, key=key)
    except CheckpointMismatchError as err:
        raise ConfigError(str(err)) from None
    except FileNotFoundError:
        raise ConfigError(f"{key}={path!r} does not exist") from None
    stage = meta.get("stage")
    if stage is not None and stage not in stages:
        hint = " (a VAE checkpoint goes in vae_ckpt=)" if stage == "vae" and key == "ckpt" else ""
        raise ConfigError(
            f"{key}={path} is a '{stage}' checkpoint; rest-generate needs {' or '.join(repr(s) for s in stages)} "
            f"there{hint}"
        )
    return state, meta


@dataclass
class StreamingModels:
    """The modules to stream with; ``stored`` is what ``ckpt=`` stored about them (it decides the cache and
    the default resolution), None for a plain state dict or a fresh initialisation."""

    dit: torch.nn.Module
    vae: torch.nn.Module
    audio: torch.nn.Module
    stored: StoredDenoiser | None = None


def build_models(cfg: DictConfig) -> StreamingModels:
    """The DiT, VAE and audio encoder to stream with.

    A teacher / student checkpoint written by ``rest-train`` (or ``rest-ckpt export``) stores its
    architectures: ``ckpt=`` then decides the DiT and audio encoder, and the VAE's architecture unless
    ``vae_ckpt=`` is a VAE checkpoint with its own (``size=`` and ``model/*`` do not apply to them). A plain
    state dict, or no ``ckpt=``, takes the ``model/*`` groups."""
    state, meta = _read_checkpoint(cfg.ckpt, "ckpt", tuple(cfg.ckpt_stages)) if cfg.ckpt else (None, {})
    if has_stored_config(meta):
        return _stored_models(cfg, state, meta)
    return _models_from_groups(cfg, state)


def module_prefixes(cfg: DictConfig):
    """``cfg.weights``' prefixes per module; a null key takes the stages' own (``stored_models.MODULE_PREFIXES``)."""
    from rest_lightning.stored_models import MODULE_PREFIXES
    from rest_lightning.streaming.weights import ModulePrefixes

    given = cfg.get("weights") or {}
    return ModulePrefixes(**{name: tuple(given[name]) if given.get(name) is not None else default
                             for name, default in MODULE_PREFIXES.items()})


def _load_vae_weights(cfg: DictConfig, vae: torch.nn.Module, ckpt_state: dict | None, vae_state: dict | None) -> bool:
    """VAE weights from ``vae_ckpt=`` (it must hold them), else from a complete set inside ``ckpt=``; False
    when neither gives any (the VAE stays freshly initialised)."""
    from rest_lightning.streaming.weights import find_prefix, load_module

    prefixes = module_prefixes(cfg).vae
    if vae_state is not None:
        prefix = find_prefix(vae_state, prefixes, vae)
        if prefix is None:
            raise ConfigError(f"vae_ckpt={cfg.vae_ckpt} holds no VAE weights under {list(prefixes)}")
        load_module(vae, vae_state, prefix, f"vae_ckpt={cfg.vae_ckpt}")
        return True
    if ckpt_state is not None:
        # A teacher / student checkpoint may carry the VAE too (complete sets only: its DiT keys also start
        # with "ema.module.").
        prefix = find_prefix(ckpt_state, prefixes, vae, complete_only=True)
        if prefix is not None:
            load_module(vae, ckpt_state, prefix, f"ckpt={cfg.ckpt}")
            return True
    return False


def _stored_models(cfg: DictConfig, state: dict[str, torch.Tensor], meta: dict) -> StreamingModels:
    """``ckpt=`` rebuilt from its stored config; the VAE from ``vae_ckpt=``, else from ``ckpt=`` itself."""
    from rest_lightning.models.vae import CausalVideoVAE
    from rest_lightning.streaming.weights import WeightsError

    try:
        stored = denoiser_from_state(state, meta, f"ckpt={cfg.ckpt}")
        vae_state, vae_meta = _read_checkpoint(cfg.vae_ckpt, "vae_ckpt", ("vae",)) if cfg.vae_ckpt else (None, {})
        if (vae_meta.get("config") or {}).get("vae") is not None:
            vae = vae_from_state(vae_state, vae_meta, f"vae_ckpt={cfg.vae_ckpt}")
        else:  # a plain VAE state dict, or none: the architecture ckpt= trained on
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.stream.seed)
                vae = (build_vae(stored.vae_config, f"ckpt={cfg.ckpt}") if stored.vae_config
                       else CausalVideoVAE(instantiate(cfg.model.vae, _convert_="object")))
            if not _load_vae_weights(cfg, vae, state, vae_state):
                _warn_random("VAE (no vae_ckpt=, and ckpt= holds none)")
    except (StoredModelError, WeightsError, ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    log.info("models from %s's stored config (%s, trained at %s px); size= and model/* do not apply to them",
             cfg.ckpt, stored.stage, stored.resolution or "an unrecorded resolution")
    return StreamingModels(stored.dit, vae.eval(), stored.audio, stored)


def _warn_random(parts: str) -> None:
    log.warning(
        "\n" + "!" * 78 + "\n!! FRESHLY INITIALISED %s: the output is noise, not a face.\n"
        "!! This exercises and benchmarks the engine only; pass ckpt=... vae_ckpt=... to generate.\n"
        + "!" * 78,
        parts,
    )


def _models_from_groups(cfg: DictConfig, state: dict[str, torch.Tensor] | None) -> StreamingModels:
    """The DiT, VAE and audio encoder of ``cfg.model``, with weights from ``ckpt=`` (already read: ``state``,
    None without one) and ``vae_ckpt=``."""
    from rest_lightning.models.audio import AudioEncoder
    from rest_lightning.models.dit import DiT
    from rest_lightning.models.vae import CausalVideoVAE
    from rest_lightning.streaming.weights import WeightsError, find_prefix, load_module

    try:
        # A fresh initialisation is seeded (stream.seed): the same command gives the same video.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.stream.seed)
            dit = DiT(instantiate(cfg.model.dit, _convert_="object"))
            vae = CausalVideoVAE(instantiate(cfg.model.vae, _convert_="object"))
            audio = AudioEncoder(instantiate(cfg.model.audio, _convert_="object"))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model config: {err}") from None
    prefixes = module_prefixes(cfg)
    random_parts = []
    try:
        if state is not None:
            for name, module, options in (("dit", dit, prefixes.dit), ("audio", audio, prefixes.audio)):
                prefix = find_prefix(state, options, module)
                if prefix is None:
                    raise ConfigError(
                        f"ckpt={cfg.ckpt} holds no {name} weights under {list(options)} (weights.{name} sets "
                        "the prefixes)"
                    )
                load_module(module, state, prefix, f"ckpt={cfg.ckpt}")
        else:
            random_parts.append("DiT and audio encoder (no ckpt=)")
        vae_state = _read_checkpoint(cfg.vae_ckpt, "vae_ckpt", ("vae",))[0] if cfg.vae_ckpt else None
        if not _load_vae_weights(cfg, vae, state, vae_state):
            random_parts.append("VAE (no vae_ckpt=)")
    except WeightsError as err:
        raise ConfigError(str(err)) from None
    if random_parts:
        _warn_random(" and ".join(random_parts))
    return StreamingModels(dit, vae, audio)


def build_generator(cfg: DictConfig, models: StreamingModels):
    """The engine with ``cfg.stream``: its null keys come from the checkpoint (``stored_models.stream_config``:
    an explicit value that contradicts a student's trained cache is refused), or StreamConfig's defaults."""
    from rest_lightning.streaming import StreamConfig, StreamingGenerator

    device, dtype = pick_device_dtype(cfg)
    explicit = {k: v for k, v in OmegaConf.to_container(cfg.stream).items() if v is not None}
    try:
        config = stream_config(models.stored, **explicit) if models.stored else StreamConfig(**explicit)
        return StreamingGenerator(models.dit, models.vae, models.audio, config, device, dtype)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"stream: {err}") from None


def resolution_of(cfg: DictConfig, generator, models: StreamingModels | None = None) -> int:
    """``resolution=``, else the resolution ``ckpt=`` trained at, else the size's default."""
    trained = models.stored.resolution if models is not None and models.stored is not None else None
    if cfg.resolution is not None:
        side = cfg.resolution
    elif trained is not None:
        side = trained
    else:
        side = check_size(cfg).resolution
    ratio = generator.spatial_compression
    if not isinstance(side, int) or side < ratio or side % ratio or side % 2:
        raise ConfigError(
            f"resolution={side!r} must be a positive multiple of the VAE's spatial compression {ratio} "
            f"(model.vae), e.g. {ratio * max(1, 64 // ratio)}"
        )
    return side
