"""Rectified flow, timestep shift and samplers: the path, its inverses, exact integration of linear flows."""

from __future__ import annotations

import pytest
import torch

from rest_lightning.diffusion import (
    EulerSampler,
    FewStepSampler,
    TimestepSampler,
    add_noise,
    flow_matching_loss,
    noise_from_velocity,
    per_frame_mse,
    shift_timesteps,
    timestep_grid,
    velocity_target,
    x0_from_velocity,
)

SHAPE = (2, 3, 4, 2, 2)  # (B, C, F, H, W)
EXACT = 1e-5  # float32, a handful of O(1) additions


def _pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def test_path_endpoints_and_per_frame_times() -> None:
    x0, noise = _pair()
    t = torch.tensor([[0.0, 1.0, 0.25, 0.5], [1.0, 0.0, 0.75, 0.5]])
    x_t = add_noise(x0, noise, t)
    torch.testing.assert_close(x_t[0, :, 0], x0[0, :, 0])
    torch.testing.assert_close(x_t[0, :, 1], noise[0, :, 1])
    torch.testing.assert_close(x_t[1, :, 2], 0.25 * x0[1, :, 2] + 0.75 * noise[1, :, 2])
    v = velocity_target(x0, noise)
    torch.testing.assert_close(x0_from_velocity(x_t, v, t), x0, rtol=0, atol=EXACT)
    torch.testing.assert_close(noise_from_velocity(x_t, v, t), noise, rtol=0, atol=EXACT)
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        add_noise(x0, noise, t[:, :3])


def test_loss_weights_select_frames() -> None:
    x0, noise = _pair()
    per_frame = per_frame_mse(x0, noise)
    assert per_frame.shape == (2, 4)
    weights = torch.zeros(2, 4)
    weights[1, 2] = 1.0
    torch.testing.assert_close(flow_matching_loss(x0, noise, weights), per_frame[1, 2])
    torch.testing.assert_close(flow_matching_loss(x0, noise), per_frame.mean())


def test_shift_is_increasing_and_fixes_the_ends() -> None:
    t = torch.linspace(0, 1, 101)
    for shift in (0.5, 1.0, 3.0):
        s = shift_timesteps(t, shift)
        assert s[0] == 0 and s[-1] == 1 and bool((s.diff() > 0).all())
    assert bool((shift_timesteps(t[1:-1], 3.0) > t[1:-1]).all())


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_timestep_sampler_range_and_seed(kind: str) -> None:
    sampler = TimestepSampler(kind=kind, shift=2.0, t_min=0.1, t_max=0.9)
    a = sampler.sample((1000,), torch.Generator().manual_seed(0))
    b = sampler.sample((1000,), torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(a.min()) >= 0.1 and float(a.max()) <= 0.9


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_integrates_the_straight_flow_to_its_data_point_exactly(shift: float) -> None:
    """For one data point x0 the flow's velocity field is ``(x - x0) / t``, whose paths are straight
    lines: Euler is exact on any grid, even 3 steps, so the sample must be x0."""
    x0, noise = _pair(1)
    calls = []

    def denoise(x, t):
        calls.append(t)
        return (x - x0) / t[:, None, :, None, None]

    sample = EulerSampler(num_steps=3, shift=shift).sample(denoise, noise)
    torch.testing.assert_close(sample, x0, rtol=0, atol=EXACT)
    assert len(calls) == 3 and calls[0].shape == (2, 4) and float(calls[-1].min()) > 0
    # A constant field v = noise - x0 (the conditional target) is also integrated exactly.
    torch.testing.assert_close(
        EulerSampler(num_steps=5).sample(lambda x, t: noise - x0, noise), x0, rtol=0, atol=EXACT
    )


def test_euler_is_not_exact_for_a_curved_flow() -> None:
    """The exactness above is a property of straight paths, not of the test: dx/dt = x is curved."""
    _, noise = _pair(2)
    coarse = EulerSampler(num_steps=2).sample(lambda x, t: x, noise)
    torch.testing.assert_close(coarse, noise * 0.25, rtol=0, atol=EXACT)  # (1 - 1/2)^2, not exp(-1)
    assert not torch.allclose(coarse, noise * torch.exp(torch.tensor(-1.0)), atol=1e-2)


def test_grid_and_few_step_sampler() -> None:
    grid = timestep_grid(4, shift=1.0)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    x0, noise = _pair(3)
    levels = []

    def denoise(x, t):
        levels.append(float(t[0, 0]))
        return (x - x0) / t[:, None, :, None, None]

    sample = FewStepSampler().sample(denoise, noise, torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample, x0, rtol=0, atol=EXACT)
    assert levels == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="decreasing"):
        FewStepSampler(timesteps=(0.5, 0.75))
