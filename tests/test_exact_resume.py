"""Exact resume: N steps straight == N/2 steps, kill -9, `resume=auto`, N/2 more — the same final weights
(1e-6, CPU, deterministic mode), under `ddp` with 2 processes, for the VAE stage with its GAN, EMA and latent
statistics all active. Runs `rest-train` as a subprocess, as SLURM or a user does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rest_lightning.checkpoint import checkpoint_step, find_resume_checkpoint
from tests.test_strategies import free_port, rest_train

N = 6  # total steps; the interruption comes after N // 2


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding an AlexNet weights file (random values) where torchvision looks for the
    ImageNet one, so the VAE's LPIPS runs with `lpips_backbone=pretrained` offline. With
    `lpips_backbone=random` the backbone is drawn from the global RNG when first used, i.e. differently
    after a resume: a stage issue (docs/scale.md), so this test loads the backbone from a file."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    return home


def overrides(shards: Path, run: Path, epoch_steps: int) -> list[str]:
    return [
        "experiment=tiny_vae", f"data.cfg.root={shards}", f"data.cfg.epoch_steps={epoch_steps}", f"run_dir={run}",
        "strategy=ddp", "trainer.devices=2", f"trainer.max_steps={N}", "trainer.deterministic=true",
        "trainer.limit_val_batches=0", f"checkpoint.every_n_steps={N // 2}", "logger=none",
        "stage.loss.disc_start=2",  # the GAN is on in both halves: both optimizers, adaptive weight
        "stage.loss.lpips_backbone=pretrained",
    ]


def train_killed_after(step: int, args: list[str], run: Path, env: dict[str, str]) -> None:
    """Start rest-train, kill -9 its whole process group (both ranks) as soon as the step checkpoint exists."""
    env = {**env, "MASTER_PORT": str(free_port())}
    target = run / "checkpoints" / f"step={step:08d}.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "rest_lightning.cli.train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: rank 0 and the rank 1 it launched
    proc.wait()
    assert target.exists(), proc.stderr.read().decode()[-3000:]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == N
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def env(torch_home) -> dict[str, str]:
    return {**os.environ, "TORCH_HOME": str(torch_home), "CI": "1"}


@pytest.fixture(scope="module")
def straight(tiny_shards, tmp_path_factory, monkeypatch_module):
    """The uninterrupted run's final weights for an ``epoch_steps`` (each run once): the streaming source draws
    a new shard order per epoch, so where the epochs end is part of the data order."""
    runs: dict[int, dict[str, torch.Tensor]] = {}

    def weights(epoch_steps: int) -> dict[str, torch.Tensor]:
        if epoch_steps not in runs:
            run = tmp_path_factory.mktemp("straight") / "run"
            rest_train(*overrides(tiny_shards, run, epoch_steps=epoch_steps))
            runs[epoch_steps] = final_weights(run)
        return runs[epoch_steps]

    return weights


@pytest.fixture(scope="module")
def monkeypatch_module(torch_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))  # rest_train() passes os.environ on
        yield mp


@pytest.mark.parametrize("epoch_steps", [
    N // 2,  # the interruption falls on an epoch boundary
    N // 2 + 1,  # the interruption falls mid-epoch
])
def test_ddp_kill9_resume_equals_straight_run(straight, tiny_shards, tmp_path, env, epoch_steps):
    run = tmp_path / "run"
    args = overrides(tiny_shards, run, epoch_steps)
    train_killed_after(N // 2, args, run, env)
    newest = find_resume_checkpoint(run)
    assert checkpoint_step(newest) == N // 2, f"the kill must come before step {N}: found {newest}"
    rest_train(*args)  # resume=auto (the default) in the same run directory
    resumed, straight = final_weights(run), straight(epoch_steps)
    assert set(resumed) == set(straight)
    worst = max(((k, (resumed[k].double() - straight[k].double()).abs().max().item()) for k in straight),
                key=lambda kv: kv[1])
    assert worst[1] <= 1e-6, f"largest difference {worst[1]:.3g} in {worst[0]}"
