"""Samplers of the rectified flow: Euler on a (shifted) time grid, and the few-step sampler of the
streaming student (predict x0, re-noise to the next level; CausVid / Self-Forcing / DMD style).

A ``Denoiser`` maps ``(x_t (B, C, F, H, W), t (B, F))`` to the velocity ``v = noise - x0`` of the same
shape as ``x_t``; guidance and conditioning live inside it (``diffusion/guidance.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rest_lightning.diffusion.flow import x0_from_velocity
from rest_lightning.diffusion.timesteps import shift_timesteps

Denoiser = Callable[[Tensor, Tensor], Tensor]


def timestep_grid(num_steps: int, shift: float = 1.0) -> Tensor:
    """``num_steps + 1`` flow times from 1 down to 0, uniform then shifted (``shift_timesteps``)."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: expected >= 1")
    return shift_timesteps(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift).float()


def _frame_times(value: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0], x.shape[2]), value, dtype=torch.float32, device=x.device)


@dataclass(frozen=True)
class EulerSampler:
    """Euler integration of ``dx/dt = v`` from ``t = 1`` (noise) to ``t = 0``; exact for straight paths.

    Fields:
        num_steps: model evaluations.
        shift: time shift of the grid (LTX-Video shifts its sampling grid the same way).
    """

    num_steps: int = 40  # design choice: teacher validation samples; LTX-Video uses 40 by default
    shift: float = 1.0  # design choice

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.shift <= 0:
            raise ValueError(
                f"EulerSampler needs num_steps >= 1 and shift > 0, got {self.num_steps}, {self.shift}"
            )

    def timesteps(self) -> Tensor:
        return timestep_grid(self.num_steps, self.shift)

    @torch.no_grad()
    def sample(self, denoise: Denoiser, noise: Tensor) -> Tensor:
        """``noise (B, C, F, H, W)`` at t = 1 -> sample at t = 0, same shape and dtype."""
        grid = self.timesteps().tolist()
        x = noise
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            v = denoise(x, _frame_times(t, x))
            x = x + (t_next - t) * v
        return x


@dataclass(frozen=True)
class FewStepSampler:
    """Few-step sampling: at each level predict ``x0 = x_t - t v``; re-noise it to the next level with
    fresh noise; return the last ``x0``.

    Fields:
        timesteps: decreasing levels in (0, 1], starting at 1. Default (1, .75, .5, .25): the 4-step
            list of CausVid / Self-Forcing (``denoising_step_list [1000, 750, 500, 250]``).
    """

    timesteps: Sequence[float] = (1.0, 0.75, 0.5, 0.25)  # CausVid / Self-Forcing 4-step list

    def __post_init__(self) -> None:
        levels = list(self.timesteps)
        if (
            not levels
            or any(not 0.0 < t <= 1.0 for t in levels)
            or any(a <= b for a, b in zip(levels[:-1], levels[1:], strict=True))
        ):
            raise ValueError(
                f"FewStepSampler.timesteps={levels}: expected strictly decreasing values in (0, 1]"
            )

    @torch.no_grad()
    def sample(
        self, denoise: Denoiser, noise: Tensor, generator: torch.Generator | None = None, stop_at: int | None = None
    ) -> Tensor:
        """``noise (B, C, F, H, W)`` at ``timesteps[0]`` -> x0 estimate, same shape and dtype. With ``stop_at``
        = i, the noisy input of level i instead, before the model sees it (ASD's exit step; 0 gives ``noise``)."""
        levels = list(self.timesteps)
        if stop_at is not None and not 0 <= stop_at < len(levels):
            raise ValueError(f"stop_at={stop_at}: expected a level index in [0, {len(levels)})")
        x = noise
        x0 = noise
        for i, t in enumerate(levels):
            if i == stop_at:
                return x
            t_frames = _frame_times(t, x)
            x0 = x0_from_velocity(x, denoise(x, t_frames), t_frames)
            if i + 1 < len(levels):
                fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                t_next = levels[i + 1]
                x = (1 - t_next) * x0 + t_next * fresh
        return x0
