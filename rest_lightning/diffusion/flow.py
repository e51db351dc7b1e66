"""Rectified flow with a flow time per latent frame (DESIGN §4.2).

``x_t = (1 - t) x0 + t noise`` with ``t`` in [0, 1] (0 clean, 1 pure noise), velocity ``v = noise - x0``
(so ``dx_t / dt = v``). Each latent frame carries its own ``t``: latents are ``(B, C, F, H, W)`` and
times ``(B, F)``, broadcast over channels and space. Pure functions; losses reduce in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def frame_times_like(t: Tensor, latents: Tensor) -> Tensor:
    """Per-frame times ``(B, F)`` -> ``(B, 1, F, 1, 1)`` broadcastable against ``latents (B, C, F, H, W)``."""
    if t.shape != (latents.shape[0], latents.shape[2]):
        raise ValueError(
            f"flow times must be (B, F) = {(latents.shape[0], latents.shape[2])} for latents "
            f"{tuple(latents.shape)}, got {tuple(t.shape)}"
        )
    return t[:, None, :, None, None].to(latents.dtype)


def add_noise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x0 + t noise``; ``x0, noise (B, C, F, H, W)``, ``t (B, F)`` in [0, 1]."""
    tt = frame_times_like(t, x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The regression target ``v = noise - x0`` ``(B, C, F, H, W)``."""
    return noise - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Clean estimate ``x0 = x_t - t v`` (exact on the straight path)."""
    return x_t - frame_times_like(t, x_t) * v


def noise_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Noise estimate ``noise = x_t + (1 - t) v``."""
    return x_t + (1 - frame_times_like(t, x_t)) * v


def per_frame_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of every latent frame ``(B, C, F, H, W)`` -> ``(B, F)`` float32 (for the loss
    and for logging the loss per noise level)."""
    return (prediction.float() - target.float()).square().mean(dim=(1, 3, 4))


def flow_matching_loss(v_pred: Tensor, v_target: Tensor, frame_weights: Tensor | None = None) -> Tensor:
    """Scalar flow-matching loss: per-frame MSE, weighted by ``frame_weights (B, F)`` if given (e.g. 0 for
    frames given as clean context), averaged over the weights."""
    errors = per_frame_mse(v_pred, v_target)
    if frame_weights is None:
        return errors.mean()
    weights = frame_weights.float()
    return (errors * weights).sum() / weights.sum().clamp(min=torch.finfo(torch.float32).tiny)
