"""Fixtures for the rest-eval tests: a tiny rest-prep test split (8 clips of 17 frames at 32x32, enough
for FID/FVD's >= 8 samples and FVD's 16-frame clips), a freshly initialised tiny student + VAE saved as
stage checkpoints (the layout the stages write), and the CLI arguments of a fast CPU run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

NUM_TEST_CLIPS = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test module here runs single-threaded (tests/conftest.py: one_thread)."""


@pytest.fixture(scope="session")
def eval_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw synthetic videos (64x64, audio track) and their rest-prep shards with a test split."""
    from data_prep.config import PrepConfig
    from data_prep.run import run_prep
    from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus

    root = tmp_path_factory.mktemp("eval_corpus")
    write_synthetic_corpus(SynthConfig(output=str(root / "raw"), n_videos=12, n_speakers=12, seconds=1.2, size=64, seed=1))
    summary = run_prep(PrepConfig(
        input=str(root / "raw"), output=str(root / "shards"), size=32, latent_frames=2, val_fraction=0.1,
        test_fraction=0.75, max_clips_per_video=1, progress=False, workers=1, seed=0,
    ))
    assert summary.clips_per_split["test"] >= NUM_TEST_CLIPS, summary
    return {"raw": root / "raw", "shards": root / "shards", "root": root}


@pytest.fixture(scope="session")
def eval_checkpoints(eval_corpus) -> dict[str, Path]:
    """A freshly initialised tiny student (DiT + audio encoder under the stage prefixes) and VAE, saved
    with the rest metadata as the stages save them, plus a rest-bench style JSON."""
    from rest_lightning.config import compose
    from rest_lightning.generation import build_models
    from rest_lightning.sizes import with_size_overrides

    root = eval_corpus["root"]
    cfg = compose("generate", with_size_overrides(["ref=x", "audio=y"]))
    models = build_models(cfg)
    student = {f"ema.module.dit.{k}": v for k, v in models.dit.state_dict().items()}
    student |= {f"model.audio_encoder.{k}": v for k, v in models.audio.state_dict().items()}
    torch.save({"state_dict": student, "rest": {"stage": "student"}}, root / "student.ckpt")
    torch.save({"state_dict": {f"vae.{k}": v for k, v in models.vae.state_dict().items()}, "rest": {"stage": "vae"}}, root / "vae.ckpt")
    bench = {
        "first_frame_latency_s": 0.01, "fps": 500.0, "rtf": 0.05, "peak_memory_bytes": 2**30, "cache_speedup": 1.4,
        "chunk_latency_s": {"p50": 0.011, "p95": 0.012, "p99": 0.015}, "device": "cpu", "dtype": "float32",
        "resolution": [32, 32],
    }
    (root / "bench.json").write_text(json.dumps(bench))
    return {"student": root / "student.ckpt", "vae": root / "vae.ckpt", "bench": root / "bench.json"}


@pytest.fixture
def fast_args() -> list[str]:
    """The smoke protocol with the tiny stand-in networks, few bootstrap replicates, tiny models at 32x32."""
    return [
        "protocol=smoke_v1", "eval.networks=tiny", "eval.allow_random_weights=true", "eval.device=cpu",
        "bootstrap.samples=200", "bootstrap.frechet_samples=30", "generate=['resolution=32','stream.window=2']",
    ]
