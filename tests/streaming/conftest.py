"""Tiny streaming models built from the real conf/ tree (STYLE rule 15), float32 on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rest_lightning.models.audio import AudioEncoder
from rest_lightning.models.dit import DiT
from rest_lightning.models.vae import CausalVideoVAE
from rest_lightning.streaming import StreamConfig, StreamingGenerator

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"
SIZE = 16  # video side in pixels: a 2x2 latent grid with vae_tiny (8x spatial)
SAMPLES_PER_LATENT = 5120  # 8 video frames of 640 samples (16 kHz / 25 fps)


def model_config(group: str, name: str, **overrides):
    return dataclasses.replace(instantiate(OmegaConf.load(CONF_MODEL / group / f"{name}.yaml")), **overrides)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test module here runs single-threaded (tests/conftest.py: one_thread)."""


@dataclasses.dataclass
class TinyModels:
    dit: DiT
    vae: CausalVideoVAE
    audio: AudioEncoder


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    torch.manual_seed(0)
    dit = DiT(model_config("dit", "dit_tiny")).eval()
    vae = CausalVideoVAE(model_config("vae", "vae_tiny")).eval()
    audio = AudioEncoder(model_config("audio", "log_mel_tiny")).eval()
    return TinyModels(dit, vae, audio)


def make_generator(models: TinyModels, **config) -> StreamingGenerator:
    return StreamingGenerator(models.dit, models.vae, models.audio, StreamConfig(**config))


def make_ref(seed: int = 0, batch: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, 3, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def make_audio(samples: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 0.5


def pieces(audio: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(audio.split(size))
