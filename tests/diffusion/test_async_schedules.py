"""Asynchronous noise schedules produce their documented per-chunk levels."""

from __future__ import annotations

import pytest
import torch

from rest_lightning.diffusion import (
    IndependentSchedule,
    MixtureSchedule,
    StaggeredSchedule,
    SynchronousSchedule,
    TimestepSampler,
    asd_teacher_times,
)

UNIFORM = TimestepSampler(kind="uniform")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_synchronous_puts_every_chunk_at_one_level() -> None:
    t = SynchronousSchedule(UNIFORM).sample(64, 5, _gen())
    assert t.shape == (64, 5)
    torch.testing.assert_close(t, t[:, :1].expand(-1, 5), rtol=0, atol=0)
    assert float(t[:, 0].std()) > 0.1  # clips differ


def test_independent_levels_differ_within_a_clip() -> None:
    t = IndependentSchedule(UNIFORM).sample(256, 6, _gen())
    assert bool((t.std(dim=1) > 0).all())
    corr = torch.corrcoef(t[:, :2].T)[0, 1]
    assert abs(float(corr)) < 0.2  # independent draws


def test_staggered_rises_by_step_until_clamped() -> None:
    schedule = StaggeredSchedule(UNIFORM, step=0.2)
    t = schedule.sample(512, 6, _gen())
    diffs = t.diff(dim=1)
    assert bool((diffs >= 0).all())
    inside = (t[:, :-1] > 0) & (t[:, 1:] < 1)
    torch.testing.assert_close(diffs[inside], torch.full_like(diffs[inside], 0.2), rtol=0, atol=1e-6)
    assert float(t.min()) >= 0 and float(t.max()) <= 1 and bool(inside.any())


def test_mixture_draws_whole_clips_from_components() -> None:
    sync, staggered = SynchronousSchedule(UNIFORM), StaggeredSchedule(UNIFORM, step=0.3)
    t = MixtureSchedule([sync, staggered], [0.5, 0.5]).sample(400, 4, _gen())
    is_sync = (t == t[:, :1]).all(dim=1)
    assert 100 < int(is_sync.sum()) < 300  # about half, each clip all one kind
    only_sync = MixtureSchedule([sync, staggered], [1.0, 0.0]).sample(50, 4, _gen())
    assert bool((only_sync == only_sync[:, :1]).all())
    with pytest.raises(ValueError, match="one weight per component"):
        MixtureSchedule([sync], [0.5, 0.5])


def test_frame_times_repeat_chunk_levels() -> None:
    t = IndependentSchedule(UNIFORM).frame_times(3, 6, 2, _gen())
    torch.testing.assert_close(t[:, 0::2], t[:, 1::2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="chunks of 4"):
        IndependentSchedule(UNIFORM).frame_times(3, 6, 4, _gen())


def test_asd_teacher_window() -> None:
    t = asd_teacher_times(torch.tensor([0.5, 0.9]), num_past=2, num_future=2, past_time=0.0, future_step=0.25)
    expected = torch.tensor([[0.0, 0.0, 0.5, 0.75, 1.0], [0.0, 0.0, 0.9, 1.0, 1.0]])
    torch.testing.assert_close(t, expected)
