"""Loss maths of DMD-style distribution matching with a trainable critic (DMD / DMD2, CausVid, Self-Forcing),
the optional term of the ASD student (DESIGN §4.3). Pure torch: ``stages/student_dmd.py`` calls these.

Notation (rectified flow, ``x_t = (1 - t) x0 + t noise``, velocity ``v = noise - x0``): the generator's
clean sample ``x`` (the student's one-step x0 on the current chunk) is noised again at a random time ``s``
(``dmd_times``) to ``x_s``, inside the teacher's window (``renoised_window``). Two score models judge it:

- the *real* score: the frozen teacher, guided (``stage.teacher.guidance``);
- the *fake* score: the critic, a trainable copy of the teacher fitted to the student's own samples.

Every model here predicts a velocity; the scores are compared in **x0 space**: ``x0 = x_s - s v``
(``x0_from_velocity``). For a Gaussian path the score is ``-(x_s - (1 - s) x0) / s**2``, so

    score_fake(x_s) - score_real(x_s) = (1 - s) / s**2 * (x0_fake - x0_real) = (1 - s) / s * (v_real - v_fake)

and the KL gradient w.r.t. ``x`` points along ``x0_fake - x0_real`` (``dmd_gradient``). As in DMD
(Yin et al. 2024, eq. 8) and CausVid ``dmd.py`` the per-time factor is replaced by a per-sample
normaliser ``mean |x - x0_real|``, which keeps the step size comparable across ``s``.

``dmd_loss`` turns that gradient into a surrogate loss ``0.5 * mean((x - sg(x - grad))**2)`` whose gradient
w.r.t. ``x`` is ``grad / numel``: the generator's parameters get the DMD gradient by ordinary backward.

The critic is fitted by flow matching (denoising) on the generator's *detached* samples
(``critic_flow_matching_loss``: target velocity ``noise - x``), so that it tracks the score of the
student's current output distribution. With critic == teacher (same weights, no guidance) the two x0
estimates are equal and the DMD gradient is exactly 0.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from rest_lightning.diffusion.asd import TeacherWindow
from rest_lightning.diffusion.flow import add_noise, flow_matching_loss, velocity_target

NORMALISER_EPS = 1e-6  # guards the per-sample normaliser against an exact fit (x == x0_real)


def dmd_times(batch: int, min_t: float, max_t: float, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
    """One flow time per sample, uniform in ``[min_t, max_t]`` -> ``(B,)`` float32 (DMD2 draws in
    [0.02, 0.98] of its schedule: the ends carry no signal / divide by ~0)."""
    if not 0.0 <= min_t <= max_t <= 1.0:
        raise ValueError(f"dmd_times: need 0 <= min_t <= max_t <= 1, got {min_t}, {max_t}")
    u = torch.rand(batch, generator=generator, device=device)
    return min_t + (max_t - min_t) * u


def renoised_window(window: TeacherWindow, x: Tensor, noise: Tensor, t: Tensor) -> TeacherWindow:
    """``window`` with its current chunk replaced by ``x`` noised at ``t (B,)`` with ``noise``; the past and
    future chunks (and their times) unchanged. ``x, noise (B, C, chunk_frames, h, w)``."""
    cf = window.chunk_frames
    if x.shape != window.current_latents.shape or noise.shape != x.shape:
        raise ValueError(f"renoised_window: x {tuple(x.shape)} / noise {tuple(noise.shape)} must be the current "
                         f"chunk's shape {tuple(window.current_latents.shape)}")
    frame_t = t.to(window.times.dtype)[:, None].expand(-1, cf)
    latents = window.latents.clone()
    times = window.times.clone()
    latents[:, :, window.current] = add_noise(x.to(latents.dtype), noise.to(latents.dtype), frame_t)
    times[:, window.current] = frame_t
    return replace(window, latents=latents, times=times)


def dmd_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor, normalise: bool = True) -> Tensor:
    """The DMD gradient w.r.t. the generator's clean sample ``x`` (module doc): ``x0_fake - x0_real``,
    divided per sample by ``mean |x - x0_real|`` when ``normalise``. All ``(B, C, F, h, w)``; float32, no graph."""
    with torch.no_grad():
        grad = x0_fake.float() - x0_real.float()
        if normalise:
            scale = (x.float() - x0_real.float()).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
            grad = grad / scale.clamp_min(NORMALISER_EPS)
        return torch.nan_to_num(grad)


def dmd_loss(x: Tensor, grad: Tensor) -> Tensor:
    """Scalar surrogate ``0.5 * mean((x - sg(x - grad))**2)``: its gradient w.r.t. ``x`` is ``grad / x.numel()``
    (and its value ``0.5 * mean(grad**2)``, a logging quantity, not a distance)."""
    target = (x.float() - grad.float()).detach()
    return 0.5 * (x.float() - target).square().mean()


def critic_flow_matching_loss(critic_velocity: Tensor, x: Tensor, noise: Tensor) -> Tensor:
    """The critic's denoising loss on the generator's detached sample ``x`` noised with ``noise``: velocity
    MSE against ``noise - x`` (the same flow-matching loss the teacher was trained with)."""
    return flow_matching_loss(critic_velocity, velocity_target(x.detach(), noise))


__all__ = ["critic_flow_matching_loss", "dmd_gradient", "dmd_loss", "dmd_times", "renoised_window"]
