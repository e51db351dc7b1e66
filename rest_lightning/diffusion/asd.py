"""Loss maths of Asynchronous Streaming Distillation (DESIGN §4.3) and of the ODE-init warm start
(CausVid / Self-Forcing). Pure torch: the stage (``stages/student.py``) rolls the student out and calls these.

The teacher's window. After the student has rolled out chunks ``0 .. k-1`` (its own outputs) and holds
chunk ``k`` at flow time ``t`` (the input of its exit step), the frozen bidirectional teacher judges

    [past chunks: the student's outputs at ``past_time`` | chunk k: the student's x_t at t | future chunks]

with the per-chunk times of ``asd_teacher_times`` (past at the context level, current at ``t``, future
chunks ``future_step`` noisier each, capped at 1; future chunks come from the ground-truth clip and may be
absent). Only the current chunk is regressed.

Targets (``ASD_TARGETS``), all computed at the student's own noisy input:

- ``trajectory`` (default): the end point of the teacher's guided Euler sampler run from ``x_t`` at ``t``
  down to 0 on the current chunk, the rest of the window held fixed. The student's one-step x0 is
  regressed onto it: this is what teaches a few-step student to take big steps (trajectory / ODE
  distillation, CausVid's ODE regression applied on the student's own rollouts).
- ``velocity``: the teacher's guided velocity; the student's velocity is regressed onto it (cheap: one
  teacher call per guidance branch).
- ``x0``: the teacher's one-step clean estimate ``x_t - t v``; the student's x0 is regressed onto it.

``velocity`` compares velocities, the two others compare clean latents (x0 space): equal up to the
per-frame weight ``t**2``, which keeps the trajectory target from being divided by a small ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rest_lightning.diffusion.flow import add_noise, frame_times_like, per_frame_mse, x0_from_velocity
from rest_lightning.diffusion.samplers import Denoiser
from rest_lightning.diffusion.schedules import asd_teacher_times

AsdTarget = Literal["trajectory", "velocity", "x0"]
ASD_TARGETS: tuple[str, ...] = ("trajectory", "velocity", "x0")
ContextSource = Literal["rollout", "ground_truth", "curriculum"]
CONTEXT_SOURCES: tuple[str, ...] = ("rollout", "ground_truth", "curriculum")


@dataclass(frozen=True)
class TeacherWindow:
    """What the teacher judges (module doc).

    Fields:
        latents: ``(B, C, Fw, h, w)``, ``Fw = (num_past + 1 + num_future) * chunk_frames``.
        times: per-frame flow times ``(B, Fw)``.
        num_past, num_future: chunks before / after the current one.
        chunk_frames: latent frames per chunk.
    """

    latents: Tensor
    times: Tensor
    num_past: int
    num_future: int
    chunk_frames: int

    @property
    def current(self) -> slice:
        """The current chunk's latent frames inside the window."""
        start = self.num_past * self.chunk_frames
        return slice(start, start + self.chunk_frames)

    @property
    def current_latents(self) -> Tensor:
        return self.latents[:, :, self.current]

    @property
    def current_times(self) -> Tensor:
        return self.times[:, self.current]


def teacher_window(
    past: Tensor | None,
    current: Tensor,
    current_time: Tensor,
    future: Tensor | None,
    past_time: float,
    future_step: float,
    chunk_frames: int,
    generator: torch.Generator | None = None,
) -> TeacherWindow:
    """Assemble the teacher's window.

    Args:
        past: the student's own clean outputs ``(B, C, P * chunk_frames, h, w)`` or ``None``.
        current: the student's noisy input of the current chunk ``(B, C, chunk_frames, h, w)``.
        current_time: its flow time ``(B,)``.
        future: ground-truth clean latents of the following chunks ``(B, C, N * chunk_frames, h, w)`` or
            ``None`` (absent).
        past_time: the context level (0 = the past exactly as the student produced it).
        future_step: how much noisier each future chunk is than the one before.
        chunk_frames: latent frames per chunk.
        generator: draws the past's noise, then the future's (that order).

    Returns:
        ``TeacherWindow`` whose times are ``asd_teacher_times`` repeated over each chunk's frames.
    """
    num_past = 0 if past is None else past.shape[2] // chunk_frames
    num_future = 0 if future is None else future.shape[2] // chunk_frames
    for name, part in (("past", past), ("future", future), ("current", current)):
        if part is not None and part.shape[2] % chunk_frames:
            raise ValueError(f"{name} has {part.shape[2]} latent frames, not a multiple of chunk_frames={chunk_frames}")
    chunk_times = asd_teacher_times(current_time, num_past, num_future, past_time, future_step)
    times = chunk_times.repeat_interleave(chunk_frames, dim=1).to(current.device)  # (B, Fw)
    parts = []
    if past is not None:
        noise = torch.randn(past.shape, generator=generator, device=past.device, dtype=past.dtype)
        parts.append(add_noise(past, noise, times[:, : past.shape[2]]))
    parts.append(current)
    if future is not None:
        noise = torch.randn(future.shape, generator=generator, device=future.device, dtype=future.dtype)
        parts.append(add_noise(future, noise, times[:, -future.shape[2] :]))
    return TeacherWindow(torch.cat(parts, dim=2), times, num_past, num_future, chunk_frames)


def teacher_trajectory(denoise: Denoiser, window: TeacherWindow, num_steps: int) -> Tensor:
    """End point of Euler from the current chunk's time to 0 in ``num_steps`` equal steps, updating only
    the current chunk (the past and future stay as given) -> ``(B, C, chunk_frames, h, w)``."""
    if num_steps < 1:
        raise ValueError(f"teacher_trajectory: num_steps={num_steps} must be >= 1")
    current = window.current
    start = window.current_times  # (B, chunk_frames)
    x = window.latents.clone()
    times = window.times.clone()
    for i in range(num_steps):
        t = start * (1 - i / num_steps)
        t_next = start * (1 - (i + 1) / num_steps)
        times[:, current] = t
        v = denoise(x, times)[:, :, current]
        x[:, :, current] = x[:, :, current] + frame_times_like(t_next - t, v) * v
    return x[:, :, current]


def asd_target(kind: AsdTarget, denoise: Denoiser, window: TeacherWindow, trajectory_steps: int) -> Tensor:
    """The teacher's target for the current chunk ``(B, C, chunk_frames, h, w)`` (module doc); ``denoise``
    is the teacher's guided velocity over the whole window."""
    if kind == "trajectory":
        return teacher_trajectory(denoise, window, trajectory_steps)
    if kind not in ("velocity", "x0"):
        raise ValueError(f"ASD target {kind!r} is not one of {', '.join(ASD_TARGETS)} (stage.asd.target)")
    v = denoise(window.latents, window.times)[:, :, window.current]
    if kind == "velocity":
        return v
    return x0_from_velocity(window.current_latents, v, window.current_times)


def asd_regression_loss(
    kind: AsdTarget, student_velocity: Tensor, x_t: Tensor, t: Tensor, target: Tensor
) -> Tensor:
    """Scalar float32 loss of the student's prediction on the current chunk against ``target``:
    velocity MSE for ``velocity``, x0 MSE (``x0 = x_t - t v``) for ``x0`` and ``trajectory``.
    ``student_velocity, x_t, target (B, C, cf, h, w)``; ``t (B, cf)``."""
    if kind == "velocity":
        return per_frame_mse(student_velocity, target).mean()
    return per_frame_mse(x0_from_velocity(x_t, student_velocity, t), target).mean()


def ground_truth_context_probability(source: ContextSource, step: int, curriculum_steps: int) -> float:
    """Probability that a context chunk is the ground truth rather than the student's own rollout:
    ``rollout`` 0, ``ground_truth`` 1, ``curriculum`` falling linearly from 1 to 0 over
    ``curriculum_steps`` optimizer steps (teacher forcing first, self-rollout after)."""
    if source == "rollout":
        return 0.0
    if source == "ground_truth":
        return 1.0
    if source != "curriculum":
        raise ValueError(f"context source {source!r} is not one of {', '.join(CONTEXT_SOURCES)} (stage.asd.context)")
    return max(0.0, 1.0 - step / max(1, curriculum_steps))


# --- ODE-init (CausVid / Self-Forcing warm start) -------------------------------------------------------


def ode_trajectory(denoise: Denoiser, noise: Tensor, levels: Sequence[float], steps_per_level: int) -> Tensor:
    """The teacher's probability-flow ODE (Euler) from ``noise`` at t = 1 to t = 0, recorded at the
    student's sampler ``levels`` (descending, starting at 1) and at 0.

    Returns ``(S + 1, B, C, F, h, w)``: the states at ``levels[0] .. levels[S-1]`` and the clean end point.
    Between consecutive recorded levels it takes ``steps_per_level`` equal Euler steps.
    """
    grid = [float(t) for t in levels] + [0.0]
    if grid[0] != 1.0 or any(a <= b for a, b in zip(grid[:-1], grid[1:], strict=True)):
        raise ValueError(f"ode_trajectory: levels {list(levels)} must start at 1 and decrease strictly")
    if steps_per_level < 1:
        raise ValueError(f"ode_trajectory: steps_per_level={steps_per_level} must be >= 1")
    x = noise
    states = [x]
    for high, low in zip(grid[:-1], grid[1:], strict=True):
        for i in range(steps_per_level):
            t = high + (low - high) * i / steps_per_level
            t_next = high + (low - high) * (i + 1) / steps_per_level
            times = torch.full((x.shape[0], x.shape[2]), t, device=x.device, dtype=torch.float32)
            x = x + (t_next - t) * denoise(x, times)
        states.append(x)
    return torch.stack(states)


def ode_regression_inputs(trajectory: Tensor, level_index: Tensor, chunk_frames: int) -> Tensor:
    """Per-chunk inputs of ODE regression: chunk ``c`` of sample ``b`` takes the trajectory state at
    ``level_index[b, c]`` (CausVid ``_process_timestep``: one level per block).

    ``trajectory (S + 1, B, C, F, h, w)``, ``level_index (B, F // chunk_frames)`` long in [0, S) ->
    ``(B, C, F, h, w)``.
    """
    frame_index = level_index.repeat_interleave(chunk_frames, dim=1)  # (B, F)
    states = trajectory.permute(1, 3, 0, 2, 4, 5)  # (B, F, S + 1, C, h, w)
    picked = torch.gather(
        states, 2, frame_index[:, :, None, None, None, None].expand(-1, -1, 1, *states.shape[3:])
    ).squeeze(2)  # (B, F, C, h, w)
    return picked.permute(0, 2, 1, 3, 4)
