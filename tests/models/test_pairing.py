"""One check pairs a DiT, a VAE and an audio encoder (issue 13): the rotary scales derive from the VAE and
the frame rate; a stage refuses a mismatch, a stored model streams with a warning."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rest_lightning.config import conf_dir
from rest_lightning.models.pairing import check_pairing, rope_scales
from rest_lightning.sizes import SIZES


def model(group: str, name: str):
    return instantiate(OmegaConf.load(conf_dir() / "model" / group / f"{name}.yaml"))


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_size_preset_pairs(size):
    preset = SIZES[size]
    check_pairing(model("dit", preset.dit), model("vae", preset.vae), model("audio", preset.audio))


def test_rope_scales_derive_from_the_vae_and_the_frame_rate():
    vae, audio = model("vae", "vae_tiny"), model("audio", "log_mel_tiny")
    assert rope_scales(vae, audio) == (pytest.approx(8 / 25), 8.0)
    assert rope_scales(model("vae", "vae_synth_s"), audio) == (pytest.approx(0.32), 4.0)


def test_a_mismatch_is_refused_for_training_and_warned_for_a_stored_model(caplog):
    vae, audio = model("vae", "vae_tiny"), model("audio", "log_mel_tiny")
    wrong = dataclasses.replace(model("dit", "dit_tiny"), rope_space_scale=32.0)
    with pytest.raises(ValueError, match=r"rope_space_scale=32.0 should be .* and 8 \(the VAE's spatial compression\)"):
        check_pairing(wrong, vae, audio)
    with caplog.at_level(logging.WARNING, logger="rest_lightning.models.pairing"):
        check_pairing(wrong, vae, audio, rope="warn")
    assert "kept as stored" in caplog.text
    with pytest.raises(ValueError, match="model.dit.audio_dim=16 must equal model.audio.token_dim=32"):
        check_pairing(dataclasses.replace(model("dit", "dit_tiny"), audio_dim=16), vae, audio)
