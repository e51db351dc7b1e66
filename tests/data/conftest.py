"""Shared fixtures of the data tests: one small synthetic corpus and its prepared shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.config import PrepConfig
from data_prep.run import run_prep
from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus

# Tiny on purpose (2-core CI): 6 videos x 3 s at 96 px, clips of 1 + 8*2 = 17 frames at 64 px.
SYNTH = dict(n_videos=6, n_speakers=3, seconds=3.0, size=96, seed=0)
PREP = dict(
    size=64,
    latent_frames=2,
    shard_max_count=3,
    val_fraction=0.34,
    test_fraction=0.34,
    progress=False,
    workers=0,
)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[Path]:
    return write_synthetic_corpus(SynthConfig(output=str(tmp_path_factory.mktemp("corpus")), **SYNTH))


@pytest.fixture(scope="session")
def prepared(corpus, tmp_path_factory):
    """(PrepConfig, PrepSummary) of the corpus prepared into shards."""
    cfg = PrepConfig(
        input=str(corpus[0].parent.parent), output=str(tmp_path_factory.mktemp("shards")), **PREP
    )
    return cfg, run_prep(cfg)


@pytest.fixture(scope="session")
def prep_kwargs() -> dict:
    """The tiny ``PrepConfig`` fields shared by the prep tests (a copy each test may change)."""
    return dict(PREP)
