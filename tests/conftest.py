"""Shared fixtures. Tests compose the real conf/ tree (STYLE rule 15) and shrink it with overrides."""

from __future__ import annotations

import os

# Forced before anything imports wandb or huggingface_hub, even when a key is set in the environment.
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".torch_extensions"))

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rest_lightning.config import compose  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP's spinning threads
    slow them down by an order of magnitude: one thread for a module's tests, restored after it. Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` (a folder: an autouse fixture in its conftest)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/train.yaml`` with overrides, the run directory inside the test's tmp_path."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose("train", [f"run_dir={run_dir or tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real rest-prep output (manifest + train/val shards) of a tiny synthetic corpus: 32x32 face
    crops, clips of 17 frames (k = 2). Built once per session, about 5 s on 2 cores."""
    from data_prep.config import PrepConfig
    from data_prep.run import run_prep
    from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus

    root = tmp_path_factory.mktemp("tiny_shards")
    write_synthetic_corpus(SynthConfig(output=str(root / "raw"), n_videos=6, n_speakers=6, seconds=2.0, seed=0))
    summary = run_prep(PrepConfig(
        input=str(root / "raw"), output=str(root / "shards"), size=32, latent_frames=2,
        val_fraction=0.34, test_fraction=0.0, progress=False, workers=1, seed=0,
    ))
    assert summary.clips_per_split["train"] > 0 and summary.clips_per_split["val"] > 0, summary
    return root / "shards"
