"""Classifier-free guidance with audio and reference dropped separately."""

from __future__ import annotations

import pytest
import torch

from rest_lightning.diffusion import ConditionDropout, GuidanceScales, guided_velocity

V = {  # velocity per (drop_audio, drop_ref)
    (False, False): torch.tensor([3.0]),
    (True, False): torch.tensor([2.0]),
    (True, True): torch.tensor([0.5]),
}


def _denoise(calls: list):
    def denoise(drop_audio: bool, drop_ref: bool) -> torch.Tensor:
        calls.append((drop_audio, drop_ref))
        return V[(drop_audio, drop_ref)]

    return denoise


def test_scales_of_one_mean_one_conditional_call() -> None:
    calls: list = []
    torch.testing.assert_close(
        guided_velocity(_denoise(calls), GuidanceScales(audio=1.0, ref=1.0)), V[(False, False)]
    )
    assert calls == [(False, False)]


def test_audio_and_reference_guidance_combine_nested() -> None:
    calls: list = []
    v = guided_velocity(_denoise(calls), GuidanceScales(audio=2.0, ref=1.0))
    torch.testing.assert_close(v, torch.tensor([2.0 + 2.0 * 1.0]))
    assert (True, True) not in calls
    calls.clear()
    v = guided_velocity(_denoise(calls), GuidanceScales(audio=2.0, ref=3.0))
    torch.testing.assert_close(v, torch.tensor([0.5 + 3.0 * 1.5 + 2.0 * 1.0]))
    assert sorted(calls) == [(False, False), (True, False), (True, True)]


def test_condition_dropout_rates() -> None:
    drop_audio, drop_ref = ConditionDropout(audio=0.2, ref=0.1, both=0.3).sample(
        20000, torch.Generator().manual_seed(0)
    )
    both = drop_audio & drop_ref
    assert abs(float(both.float().mean()) - 0.3) < 0.02
    assert abs(float((drop_audio & ~drop_ref).float().mean()) - 0.2) < 0.02
    assert abs(float((drop_ref & ~drop_audio).float().mean()) - 0.1) < 0.02
    with pytest.raises(ValueError, match="sum"):
        ConditionDropout(audio=0.5, ref=0.5, both=0.5)
