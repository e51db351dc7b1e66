"""What the two diffusion stages (teacher, DESIGN §4.2; student, §4.3) and data prep share to condition the DiT.

- ``FrozenVAE``: a trained stage-1 VAE used as a fixed function (encode clips when the shards carry no
  latents, encode the reference image as one latent frame, decode samples). Loaded weights-only from a
  VAE-stage checkpoint or an exported file, its EMA weights preferred. It is *not* a submodule of a
  stage: it is never trained, never saved in the stage's checkpoints, never wrapped, sharded or
  partitioned by DDP / FSDP / DeepSpeed; it follows the batch's device on first use.
- ``ClipConditions`` / ``clip_conditions``: a ``ClipBatch`` -> clean latents, reference latent, audio tokens.
- ``guided_denoiser``: the DiT with classifier-free guidance as a sampler ``Denoiser``.
- ``latent_tokens_per_clip``: the tokens the DiT sees per clip (telemetry).

The trainable pair is ``models.denoiser.AudioVideoDenoiser``; the frozen teacher is ``frozen_teacher``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rest_lightning.data.batch import ClipBatch
from rest_lightning.diffusion.guidance import GuidanceScales, guided_velocity
from rest_lightning.diffusion.samplers import Denoiser
from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.audio import AudioEncoder
from rest_lightning.models.denoiser import AudioVideoDenoiser
from rest_lightning.models.vae import CausalVideoVAE, VAEConfig
from rest_lightning.stored_models import VAE_PREFIXES, load_frozen_weights

VAE_STAGE = "vae"


class FrozenVAE:
    """A trained VAE as a fixed function (module doc). Every method runs without gradients.

    Latents are the VAE's *normalised* latents (``CausalVideoVAE.encode``): latent shards must hold the
    same (what ``encode`` returns), so the DiT sees one latent space whichever way the data arrives.
    """

    def __init__(self, vae: CausalVideoVAE) -> None:
        self.vae = vae.requires_grad_(False).eval()

    @classmethod
    def load(cls, config: VAEConfig, checkpoint: str | Path | None) -> FrozenVAE:
        """Build ``config``'s VAE and load ``checkpoint`` strictly (weights only); ``None`` leaves it
        randomly initialised, with a warning: only tests and the demo may do that."""
        vae = CausalVideoVAE(config)
        if checkpoint is None:
            rank_zero_warn(
                "stage.vae_checkpoint is null: the frozen VAE is RANDOMLY INITIALISED, so latents, references "
                "and decoded samples mean nothing. Fine for tests and the demo only; set "
                "stage.vae_checkpoint=PATH (a VAE-stage checkpoint or `rest-ckpt export` file)."
            )
            return cls(vae)
        load_frozen_weights(vae, checkpoint, key="stage.vae_checkpoint", stage=VAE_STAGE, prefixes=VAE_PREFIXES,
                            experiments="vae or tiny_vae")
        return cls(vae)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    def _follow(self, x: Tensor) -> Tensor:
        """Move the VAE to ``x``'s device (first use, or after the trainer moved the batch) and cast ``x``
        to the VAE's dtype: the VAE stays float32 whatever precision the stage trains in."""
        param = next(self.vae.parameters())
        if param.device != x.device:
            self.vae.to(x.device)
            param = next(self.vae.parameters())
        return x.to(param.dtype)

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """Clip ``(B, 3, T, H, W)`` in [-1, 1], T = 1 + 8k -> normalised latents ``(B, C, 1 + k, h, w)``
        float32."""
        return self.vae.encode(self._follow(video)).float()

    @torch.no_grad()
    def encode_ref(self, ref: Tensor) -> Tensor:
        """Reference image ``(B, 3, H, W)`` in [-1, 1] -> ``(B, C, 1, h, w)``: encoded as a one-frame clip,
        which the causal VAE encodes alone (DESIGN §4.1), exactly as a clip's first frame."""
        return self.vae.encode(self._follow(ref.unsqueeze(2))).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents ``(B, C, F, h, w)`` -> video ``(B, 3, 1 + 8 (F - 1), H, W)`` in [-1, 1]
        (clamped)."""
        return self.vae.decode(self._follow(latents)).clamp(-1, 1).float()


def latent_tokens_per_clip(batch: ClipBatch, vae: VAEConfig) -> int:
    """Tokens the DiT sees per clip of ``batch``: its latent frames x latent height x latent width plus
    the reference's one latent frame (telemetry's train/tokens_per_s)."""
    if batch.latent is not None:
        frames, height, width = batch.latent.shape[2:]
    else:
        t, h, w = batch.video.shape[2:]
        frames, height, width = vae.latent_frames(t), h // vae.spatial_compression, w // vae.spatial_compression
    return (frames + 1) * height * width


@dataclass(frozen=True)
class ClipConditions:
    """A batch ready for the DiT.

    latents: clean normalised latents ``(B, C, F, h, w)`` (the flow's x0); ref: reference latent
    ``(B, C, 1, h, w)``; audio: tokens ``(B, F, A, audio_dim)``; waveform: the clip's audio ``(B, S)``.
    """

    latents: Tensor
    ref: Tensor
    audio: Tensor
    waveform: Tensor

    def select(self, rows: Tensor) -> ClipConditions:
        """Rows ``rows`` (bool mask or indices) of every field."""
        return ClipConditions(self.latents[rows], self.ref[rows], self.audio[rows], self.waveform[rows])


def clip_conditions(
    batch: ClipBatch, vae: FrozenVAE, audio_encoder: AudioEncoder, dtype: torch.dtype
) -> ClipConditions:
    """Encode a batch: the shards' latents when present (``data.cfg.mode=latent``), else the frozen VAE's
    encoding of the video; the reference image through the frozen VAE; audio tokens per latent frame.
    Latents and reference are cast to ``dtype`` (the DiT's)."""
    if batch.latent is not None:
        if batch.latent.shape[1] != vae.latent_channels:
            raise ValueError(
                f"the shards' latents have {batch.latent.shape[1]} channels but model.vae has "
                f"{vae.latent_channels}: they were encoded by another VAE; re-encode them or use data.cfg.mode=video"
            )
        latents = batch.latent
    elif batch.video is not None:
        latents = vae.encode_video(batch.video)
    else:
        raise ValueError("a ClipBatch with neither video nor latent: check data.cfg.mode")
    audio = audio_encoder(batch.audio, latents.shape[2])
    return ClipConditions(latents.to(dtype), vae.encode_ref(batch.ref).to(dtype), audio, batch.audio)


def guided_denoiser(
    model: AudioVideoDenoiser, audio: Tensor, ref: Tensor, pattern: AttentionPattern, scales: GuidanceScales
) -> Denoiser:
    """``(x_t, t) -> v``: the DiT's velocity under classifier-free guidance (``guided_velocity``: audio and
    reference dropped separately through the DiT's null tokens), for the samplers and for distillation."""

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        batch = x_t.shape[0]

        def conditional(drop_audio: bool, drop_ref: bool) -> Tensor:
            flags = [
                torch.full((batch,), flag, dtype=torch.bool, device=x_t.device)
                for flag in (drop_audio, drop_ref)
            ]
            return model(x_t, t, audio, ref, pattern, *flags)

        return guided_velocity(conditional, scales)

    return denoise
