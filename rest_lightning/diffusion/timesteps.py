"""Training flow times: samplers of ``t`` in [0, 1] and the timestep shift (SD3 / LTX-Video)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

TIMESTEP_KINDS: tuple[str, ...] = ("uniform", "logit_normal")


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """SD3 / LTX-Video time shift ``s t / (1 + (s - 1) t)``: ``shift > 1`` spends more time at high noise
    (larger latents need it); 0 and 1 are fixed points and the map is increasing."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class TimestepSampler:
    """Draws flow times for training.

    Fields:
        kind: ``uniform`` or ``logit_normal`` (``sigmoid(N(mean, std))``, SD3; LTX-Video-Trainer's default
            family).
        logit_mean, logit_std: of the logit-normal.
        shift: applied after drawing (``shift_timesteps``).
        t_min, t_max: the result is ``t_min + (t_max - t_min) * t``.
    """

    kind: Literal["uniform", "logit_normal"] = "logit_normal"  # SD3 (Esser et al. 2024) / LTX-Video-Trainer
    logit_mean: float = 0.0  # SD3
    logit_std: float = 1.0  # SD3
    shift: float = 1.0  # design choice: no shift at the paper's ~256 tokens per latent frame
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TIMESTEP_KINDS:
            raise ValueError(f"TimestepSampler.kind={self.kind!r} is not one of {', '.join(TIMESTEP_KINDS)}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"TimestepSampler needs 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.logit_std <= 0 or self.shift <= 0:
            raise ValueError("TimestepSampler.logit_std and .shift must be > 0")

    def sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Flow times of ``shape``, float32 in ``[t_min, t_max]``."""
        if self.kind == "uniform":
            t = torch.rand(shape, generator=generator, device=device)
        else:
            normal = torch.randn(shape, generator=generator, device=device)
            t = torch.sigmoid(normal * self.logit_std + self.logit_mean)
        t = shift_timesteps(t, self.shift)
        return self.t_min + (self.t_max - self.t_min) * t
