"""What a teacher / student checkpoint must match to be resumed: ``diffusion_identity_config``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rest_lightning.models.audio import AudioConfig
from rest_lightning.models.dit import DiTConfig
from rest_lightning.models.vae import VAEConfig
from rest_lightning.stages.base import plain_config

# Config fields that say how to initialise or run a model, not what it is: left out of identity_config,
# so moving a weights folder or switching activation checkpointing does not block a resume.
INIT_ONLY_KEYS = (
    "pretrained",
    "pretrained_cross_attention",
    "pretrained_audio_projection",
    "activation_checkpointing",
)


def diffusion_identity_config(
    dit: DiTConfig, audio: AudioConfig, vae: VAEConfig, chunk_frames: int, has_ema: bool
) -> dict[str, Any]:
    """What a teacher / student checkpoint must match to be resumed (RestStage.identity_config): the
    architectures without INIT_ONLY_KEYS, the chunk size and whether an EMA copy exists."""

    def architecture(config: Any) -> dict[str, Any]:
        return plain_config({k: v for k, v in asdict(config).items() if k not in INIT_ONLY_KEYS})

    return {"dit": architecture(dit), "audio": architecture(audio), "vae": architecture(vae),
            "chunk_frames": chunk_frames, "ema": has_ema}
