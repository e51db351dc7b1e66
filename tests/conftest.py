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


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/train.yaml`` with overrides, the run directory inside the test's tmp_path."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose("train", [f"run_dir={run_dir or tmp_path / 'run'}", *overrides])

    return make
