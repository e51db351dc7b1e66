"""Classifier-free guidance with the audio and the reference dropped separately (DESIGN §4.2).

Guided velocity (nested guidance, InstructPix2Pix / Hallo style), ``v(ref, audio)`` the model's velocity
with the named conditions kept and the others replaced by their null tokens:

    v = v(-, -) + s_ref (v(ref, -) - v(-, -)) + s_audio (v(ref, audio) - v(ref, -))

``s_ref = s_audio = 1`` gives the fully conditioned velocity (one model call); ``s_ref = 1`` skips
``v(-, -)``. Training drops conditions with ``condition_dropout`` (per-sample masks for the DiT's
``drop_audio`` / ``drop_ref``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# denoise(drop_audio, drop_ref) -> velocity (B, C, F, H, W)
ConditionalDenoiser = Callable[[bool, bool], Tensor]


@dataclass(frozen=True)
class GuidanceScales:
    """Guidance strengths; 1 = no guidance for that condition."""

    audio: float = 3.5  # design choice: Hallo's audio CFG scale (REST does not publish one)
    ref: float = 1.0  # design choice: identity is strong through the ID-Sink without guidance


def guided_velocity(denoise: ConditionalDenoiser, scales: GuidanceScales) -> Tensor:
    """Combine conditional velocities as in the module doc, calling ``denoise`` only as often as needed."""
    full = denoise(False, False)
    if scales.audio == 1.0 and scales.ref == 1.0:
        return full
    ref_only = denoise(True, False)
    guided = ref_only + scales.audio * (full - ref_only)
    if scales.ref != 1.0:
        neither = denoise(True, True)
        guided = guided + (scales.ref - 1.0) * (ref_only - neither)
    return guided


@dataclass(frozen=True)
class ConditionDropout:
    """Per-sample probabilities of training without audio only, without reference only, without both
    (exclusive cases, so ``audio + ref + both <= 1``)."""

    audio: float = 0.05  # Hallo stage 2 uncond_audio_ratio
    ref: float = 0.05  # Hallo stage 2 uncond_img_ratio
    both: float = 0.05  # Hallo stage 2 uncond_ia_ratio

    def __post_init__(self) -> None:
        if min(self.audio, self.ref, self.both) < 0 or self.audio + self.ref + self.both > 1:
            raise ValueError(
                f"ConditionDropout audio={self.audio}, ref={self.ref}, both={self.both}: each must be >= 0 and "
                "their sum <= 1"
            )

    def sample(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """``(drop_audio, drop_ref)``, each ``(B,)`` bool."""
        u = torch.rand(batch, generator=generator, device=device)
        audio_only = u < self.audio
        ref_only = (u >= self.audio) & (u < self.audio + self.ref)
        both = (u >= self.audio + self.ref) & (u < self.audio + self.ref + self.both)
        return audio_only | both, ref_only | both
