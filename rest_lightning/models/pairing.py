"""The DiT, VAE and audio encoder a diffusion stage (or a stream) pairs must agree. One check, with one
message per disagreement naming both keys, used by the teacher, the student and ``StreamingGenerator``.

The DiT's rotary positions are in seconds and pixels: ``rope_time_scale`` = the VAE's temporal compression /
fps (seconds per latent frame), ``rope_space_scale`` = its spatial compression (pixels per latent cell),
as the LTX-Video pipeline computes them. They are typed in ``model.dit`` but derive from the VAE and the
frame rate, so a mismatch is refused when a stage is built. A stored checkpoint keeps the scales it was
trained with (its own config wins): streaming one whose scales disagree with its VAE only warns.
"""

from __future__ import annotations

import logging
import math

from rest_lightning.models.audio import AudioConfig
from rest_lightning.models.dit import DiTConfig
from rest_lightning.models.vae_config import VAEConfig

logger = logging.getLogger(__name__)


def rope_scales(vae: VAEConfig, audio: AudioConfig) -> tuple[float, float]:
    """``(rope_time_scale, rope_space_scale)`` a DiT on ``vae``'s latents at ``audio.fps`` should have."""
    return vae.temporal_compression / audio.fps, float(vae.spatial_compression)


def check_pairing(dit: DiTConfig, vae: VAEConfig, audio: AudioConfig, rope: str = "refuse") -> None:
    """Raise ``ValueError`` where the three configs disagree. ``rope``: ``refuse`` a DiT whose rotary scales
    do not derive from the VAE and the frame rate (building a model to train), or ``warn`` (a stored one)."""
    if dit.latent_channels != vae.latent_channels:
        raise ValueError(
            f"model.dit.latent_channels={dit.latent_channels} must equal model.vae.latent_channels="
            f"{vae.latent_channels}: the DiT denoises this VAE's latents"
        )
    if dit.audio_dim != audio.token_dim:
        raise ValueError(
            f"model.dit.audio_dim={dit.audio_dim} must equal model.audio.token_dim={audio.token_dim}: the DiT "
            "reads the audio encoder's tokens"
        )
    if audio.frames_per_latent != vae.temporal_compression:
        raise ValueError(
            f"model.audio.frames_per_latent={audio.frames_per_latent} must equal the VAE's temporal compression "
            f"{vae.temporal_compression}: audio tokens are aligned to latent frames"
        )
    time_scale, space_scale = rope_scales(vae, audio)
    if math.isclose(dit.rope_time_scale, time_scale) and math.isclose(dit.rope_space_scale, space_scale):
        return
    message = (
        f"model.dit.rope_time_scale={dit.rope_time_scale} and rope_space_scale={dit.rope_space_scale} should be "
        f"{time_scale:g} (temporal compression {vae.temporal_compression} / {audio.fps} fps) and {space_scale:g} "
        f"(the VAE's spatial compression): the DiT's positions are in seconds and pixels"
    )
    if rope == "refuse":
        raise ValueError(message)
    logger.warning("%s; kept as stored", message)
