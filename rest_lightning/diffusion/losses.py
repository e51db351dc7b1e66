"""Loss maths of the diffusion stages (DESIGN §4.2, §4.3): one flow-matching draw under an asynchronous
noise schedule, and the per-noise-level bookkeeping validation reports. Pure torch, no Lightning.

A *draw* fixes, for clean latents ``x0 (B, C, F, H, W)``: per-frame flow times ``t (B, F)`` from an
``AsyncNoiseSchedule`` (one time per chunk of ``chunk_frames`` latent frames), Gaussian ``noise``, the
noisy input ``x_t = (1 - t) x0 + t noise`` and the velocity target ``v = noise - x0``. The order of the
random draws is part of the contract (times first, then noise), so a test holding a copy of the
generator can reproduce them.

Noise-level buckets: ``[0, 1]`` cut into ``K`` equal bins, bin ``k`` = ``[k / K, (k + 1) / K)`` (the last
one closed); validation logs the flow-matching error per bin as ``val/loss_t{k / K}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rest_lightning.diffusion.flow import add_noise, velocity_target
from rest_lightning.diffusion.schedules import AsyncNoiseSchedule

MAX_LEVEL_DECIMALS = 4  # bucket labels: enough decimals for any K that divides 10**4


@dataclass(frozen=True)
class FlowMatchingDraw:
    """One training draw (module doc). ``t (B, F)`` float32; the others ``(B, C, F, H, W)`` like ``x0``."""

    t: Tensor
    noise: Tensor
    x_t: Tensor
    target: Tensor


def draw_flow_matching(
    x0: Tensor,
    schedule: AsyncNoiseSchedule,
    chunk_frames: int,
    generator: torch.Generator | None = None,
) -> FlowMatchingDraw:
    """For ``x0 (B, C, F, H, W)``: times from ``schedule`` (one per chunk, repeated over its frames),
    then noise."""
    batch, _, frames = x0.shape[:3]
    t = schedule.frame_times(batch, frames, chunk_frames, generator, x0.device)
    return draw_at_times(x0, t, generator)


def draw_at_times(x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> FlowMatchingDraw:
    """A draw at given per-frame times ``t (B, F)`` (validation's stratified levels, tests)."""
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return FlowMatchingDraw(t=t, noise=noise, x_t=add_noise(x0, noise, t), target=velocity_target(x0, noise))


def noise_level_bucket(t: Tensor, num_buckets: int) -> Tensor:
    """Bucket index ``floor(t K)`` (``t = 1`` in the last bucket) of times ``t`` in [0, 1]; same shape,
    long."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets={num_buckets}: expected >= 1")
    return (t.float() * num_buckets).floor().long().clamp(0, num_buckets - 1)


def loss_by_noise_level(errors: Tensor, t: Tensor, num_buckets: int) -> tuple[Tensor, Tensor]:
    """Sum and count of per-frame errors ``(B, F)`` in each noise-level bucket of ``t (B, F)``.

    Returns ``(sums (K,) float32, counts (K,) float32)``: sums, so they add up across batches and ranks
    before dividing (a mean of means would weight small batches wrongly).
    """
    if errors.shape != t.shape:
        raise ValueError(f"errors {tuple(errors.shape)} and times {tuple(t.shape)} must both be (B, F)")
    index = noise_level_bucket(t, num_buckets).flatten()
    sums = torch.zeros(num_buckets, dtype=torch.float32, device=errors.device)
    sums.index_add_(0, index, errors.detach().float().flatten())
    counts = torch.bincount(index, minlength=num_buckets).float()
    return sums, counts


def stratified_frame_times(
    batch: int,
    frames: int,
    num_buckets: int,
    offset: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``(B, F)`` times that visit every bucket in turn: frame ``n`` (row-major over ``(B, F)``) falls in
    bucket ``(n + offset) mod K``, uniformly inside it. One forward pass per batch then covers all levels
    evenly, where i.i.d. times would leave buckets empty on a small validation set."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets={num_buckets}: expected >= 1")
    bucket = (torch.arange(batch * frames, device=device) + offset) % num_buckets
    u = torch.rand(batch * frames, generator=generator, device=device)
    return ((bucket + u) / num_buckets).clamp(max=1.0).view(batch, frames)


def noise_level_names(num_buckets: int) -> list[str]:
    """Metric suffixes ``t0.0 .. t0.9`` (K = 10): each bucket's lower edge, as many decimals as K needs."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets={num_buckets}: expected >= 1")
    decimals = 1
    while (
        any(round(k / num_buckets, decimals) != k / num_buckets for k in range(num_buckets))
        and decimals < MAX_LEVEL_DECIMALS
    ):
        decimals += 1
    return [f"t{k / num_buckets:.{decimals}f}" for k in range(num_buckets)]
