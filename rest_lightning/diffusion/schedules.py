"""Asynchronous noise schedules: a flow time per chunk of a training clip (DESIGN §4.2, §4.3).

Each schedule answers ``sample(batch, num_chunks) -> (B, num_chunks)`` times in [0, 1]; ``frame_times``
repeats them over the latent frames of each chunk. All randomness goes through a ``torch.Generator``.

- ``SynchronousSchedule``: one time per clip, every chunk at it (plain diffusion training).
- ``IndependentSchedule``: every chunk its own independent time (Diffusion Forcing, Chen et al. 2024).
- ``StaggeredSchedule``: times rise by ``step`` per chunk from a random anchor chunk, clamped to the
  sampler's range (rolling diffusion / MAGI-1's staggered chunks): ``t_c = clamp(u + (c - a) step)``.
- ``MixtureSchedule``: each clip takes one of the above, drawn with the given weights.

``asd_teacher_times`` gives the deterministic window an ASD teacher judges (past chunks at the context
level, the current chunk at the student's time, future chunks ``step`` noisier each).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rest_lightning.diffusion.timesteps import TimestepSampler


class AsyncNoiseSchedule(ABC):
    """Per-chunk flow times for a batch of training clips."""

    @abstractmethod
    def sample(
        self,
        batch: int,
        num_chunks: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """``(B, num_chunks)`` float32 flow times in [0, 1]."""

    def frame_times(
        self,
        batch: int,
        num_frames: int,
        chunk_frames: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """``(B, num_frames)``: each chunk's time repeated over its ``chunk_frames`` latent frames."""
        if num_frames % chunk_frames:
            raise ValueError(f"{num_frames} latent frames do not split into chunks of {chunk_frames}")
        chunk_times = self.sample(batch, num_frames // chunk_frames, generator, device)
        return chunk_times.repeat_interleave(chunk_frames, dim=1)


@dataclass(frozen=True)
class SynchronousSchedule(AsyncNoiseSchedule):
    """All chunks of a clip at one time drawn from ``sampler``."""

    sampler: TimestepSampler = field(default_factory=TimestepSampler)

    def sample(self, batch, num_chunks, generator=None, device="cpu"):
        return self.sampler.sample((batch, 1), generator, device).expand(batch, num_chunks).contiguous()


@dataclass(frozen=True)
class IndependentSchedule(AsyncNoiseSchedule):
    """Every chunk an independent draw from ``sampler`` (Diffusion Forcing)."""

    sampler: TimestepSampler = field(default_factory=TimestepSampler)

    def sample(self, batch, num_chunks, generator=None, device="cpu"):
        return self.sampler.sample((batch, num_chunks), generator, device)


@dataclass(frozen=True)
class StaggeredSchedule(AsyncNoiseSchedule):
    """Noise rising with chunk index: an anchor chunk ``a`` (uniform over the clip) gets ``u`` from
    ``sampler``, chunk ``c`` gets ``clamp(u + (c - a) * step, sampler.t_min, sampler.t_max)``. So times are
    non-decreasing in ``c`` and consecutive chunks differ by exactly ``step`` unless clamped."""

    sampler: TimestepSampler = field(default_factory=TimestepSampler)
    step: float = 0.25  # design choice: a 4-step student's step (CausVid/Self-Forcing use 4 levels)

    def __post_init__(self) -> None:
        if not 0.0 < self.step <= 1.0:
            raise ValueError(f"StaggeredSchedule.step={self.step}: expected 0 < step <= 1")

    def sample(self, batch, num_chunks, generator=None, device="cpu"):
        base = self.sampler.sample((batch, 1), generator, device)
        anchor = torch.randint(num_chunks, (batch, 1), generator=generator, device=device)
        offsets = torch.arange(num_chunks, device=device)[None, :] - anchor
        return (base + offsets * self.step).clamp(self.sampler.t_min, self.sampler.t_max)


@dataclass(frozen=True)
class MixtureSchedule(AsyncNoiseSchedule):
    """Each clip follows one component, drawn with probability proportional to ``weights``."""

    components: Sequence[AsyncNoiseSchedule]
    weights: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.components) == 0 or len(self.components) != len(self.weights):
            raise ValueError(
                f"MixtureSchedule needs one weight per component, got {len(self.components)} components and "
                f"{len(self.weights)} weights"
            )
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(
                f"MixtureSchedule.weights={list(self.weights)}: expected >= 0 with a positive sum"
            )

    def sample(self, batch, num_chunks, generator=None, device="cpu"):
        weights = torch.tensor(list(self.weights), dtype=torch.float32, device=device)
        choice = torch.multinomial(weights, batch, replacement=True, generator=generator)  # (B,)
        drawn = torch.stack([c.sample(batch, num_chunks, generator, device) for c in self.components])
        return drawn[choice, torch.arange(batch, device=device)]


def asd_teacher_times(
    current: Tensor, num_past: int, num_future: int, past_time: float, future_step: float
) -> Tensor:
    """The window an ASD teacher judges (DESIGN §4.3): ``num_past`` context chunks at ``past_time`` (the
    student writes its cache from chunks at that time, 0 = clean), the current chunk at the student's
    ``current (B,)`` time, then ``num_future`` chunks each ``future_step`` noisier, capped at 1.

    Returns ``(B, num_past + 1 + num_future)`` float32.
    """
    if num_past < 0 or num_future < 0 or not 0.0 <= past_time <= 1.0 or future_step < 0:
        raise ValueError(
            f"asd_teacher_times: need num_past, num_future >= 0, past_time in [0, 1], future_step >= 0; got "
            f"{num_past}, {num_future}, {past_time}, {future_step}"
        )
    current = current.float()[:, None]
    past = torch.full((current.shape[0], num_past), past_time, device=current.device)
    future = (current + future_step * torch.arange(1, num_future + 1, device=current.device)).clamp(max=1.0)
    return torch.cat([past, current, future], dim=1)
