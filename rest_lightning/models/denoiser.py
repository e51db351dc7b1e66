"""``AudioVideoDenoiser``: the trainable networks of a diffusion stage, the DiT and the audio encoder (whose
projector, the SpeechAE role, trains with the DiT). One module so the EMA and ``init_from`` key maps treat it
whole: its keys are ``dit.*`` and ``audio_encoder.*``."""

from __future__ import annotations

from torch import Tensor, nn

from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.audio import AudioEncoder
from rest_lightning.models.dit import DiT


class AudioVideoDenoiser(nn.Module):
    """The trainable networks of a diffusion stage: ``dit`` and ``audio_encoder`` (module doc)."""

    def __init__(self, dit: DiT, audio_encoder: AudioEncoder) -> None:
        super().__init__()
        if dit.config.audio_dim != audio_encoder.config.token_dim:
            raise ValueError(
                f"model.dit.audio_dim={dit.config.audio_dim} must equal model.audio.token_dim="
                f"{audio_encoder.config.token_dim}: the DiT reads the audio encoder's tokens"
            )
        self.dit = dit
        self.audio_encoder = audio_encoder

    def forward(
        self,
        latents: Tensor,
        timesteps: Tensor,
        audio: Tensor | None,
        ref: Tensor | None,
        pattern: AttentionPattern,
        drop_audio: Tensor | None = None,
        drop_ref: Tensor | None = None,
    ) -> Tensor:
        """The DiT's velocity ``(B, C, F, h, w)``; arguments as ``DiT.forward`` (audio: tokens, not the
        waveform)."""
        return self.dit(latents, timesteps, audio, ref, pattern, drop_audio, drop_ref)
