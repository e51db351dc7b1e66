"""Strategies: the DeepSpeed CPU test path (ZeRO-2/3 on 2 CPU processes), ZeRO checkpoints through resume,
info, export and init_from. Multi-process runs go through `rest-train` as a subprocess, as users run them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from omegaconf import OmegaConf

from rest_lightning.checkpoint import (
    checkpoint_step,
    find_resume_checkpoint,
    is_zero_checkpoint,
    load_user_state,
)
from rest_lightning.config import ConfigError, compose
from rest_lightning.export import checkpoint_info, export_checkpoint
from rest_lightning.launch.strategies import AtomicDeepSpeedStrategy, CPUDeepSpeedStrategy, build_strategy
from rest_lightning.train_config import validate_train_config

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest_train(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``rest-train`` in a subprocess with its own MASTER_PORT (two DDP runs in one session must not collide)."""
    env = {**os.environ, "MASTER_PORT": str(free_port()), "CI": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    cmd = [sys.executable, "-m", "rest_lightning.cli.train", *overrides]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}"
    return result


def test_deepspeed_on_cpu_uses_the_test_path_and_gpu_lightnings_own():
    cfg = OmegaConf.create({"name": "deepspeed", "zero_stage": 2, "offload_optimizer": True,
                            "offload_parameters": False, "find_unused_parameters": False})
    cpu = build_strategy(cfg, accelerator="cpu")
    assert type(cpu) is CPUDeepSpeedStrategy
    assert cpu.config["zero_optimization"]["stage"] == 2
    assert cpu.config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    gpu = build_strategy(cfg, accelerator="gpu")
    assert type(gpu) is AtomicDeepSpeedStrategy, "the GPU path is Lightning's own strategy, not the CPU shim"
    assert isinstance(gpu, DeepSpeedStrategy)


class _FakeEngine:
    """Writes a ZeRO-like folder file by file, as DeepSpeed does; can die after the first file."""

    def __init__(self, die: bool = False) -> None:
        self.die = die

    def save_checkpoint(self, path, client_state, tag, exclude_frozen_parameters) -> None:
        folder = Path(path) / tag
        folder.mkdir(parents=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"model " + str(client_state["step"]).encode())
        if self.die:
            raise KeyboardInterrupt("killed mid-save")
        (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optim")
        (Path(path) / "latest").write_text(tag)


def test_zero_saves_appear_complete_or_not_at_all(tmp_path):
    """A ZeRO save killed mid-write leaves the previous checkpoint whole and only a temporary folder, which
    the next launch deletes; a completed save replaces the old folder."""
    from rest_lightning.run_dir import RunDir

    strategy = AtomicDeepSpeedStrategy(stage=2)
    checkpoints = tmp_path / "checkpoints"
    last = checkpoints / "last.ckpt"
    strategy.model = _FakeEngine()
    strategy.save_checkpoint({"step": 1}, last)
    assert (last / "latest").read_text() == "checkpoint"
    assert (last / "checkpoint" / "mp_rank_00_model_states.pt").read_bytes() == b"model 1"

    strategy.model = _FakeEngine(die=True)
    with pytest.raises(KeyboardInterrupt):
        strategy.save_checkpoint({"step": 2}, last)
    assert (last / "checkpoint" / "mp_rank_00_model_states.pt").read_bytes() == b"model 1", "old save intact"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f".last.ckpt.tmp-{os.getpid()}", "last.ckpt"]
    removed = RunDir(tmp_path).remove_stale_temp_files()
    assert [p.name for p in removed] == [f".last.ckpt.tmp-{os.getpid()}"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]

    strategy.model = _FakeEngine()
    strategy.save_checkpoint({"step": 3}, last)
    assert (last / "checkpoint" / "mp_rank_00_model_states.pt").read_bytes() == b"model 3"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"], "no old or temporary folder left"


@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_validator_accepts_deepspeed_on_cpu_for_a_one_optimizer_stage(strategy, tmp_path):
    cfg = compose("train", ["experiment=tiny_teacher", f"strategy={strategy}", "data.cfg.root=x", f"run_dir={tmp_path}"])
    assert cfg.trainer.accelerator == "cpu"
    validate_train_config(cfg)
    fp16 = compose("train", ["experiment=tiny_teacher", f"strategy={strategy}", "data.cfg.root=x",
                             "trainer.precision=16-mixed"])
    with pytest.raises(ConfigError, match="32-true or bf16-mixed"):
        validate_train_config(fp16)


@pytest.fixture(scope="module")
def zero_runs(tiny_shards, tmp_path_factory):
    """tiny_teacher, 2 steps on 2 CPU processes under ZeRO-2 and ZeRO-3: {strategy: run_dir}. ZeRO-3 without
    the EMA copy (the stage's EMA reads full parameters, which ZeRO-3 partitions; conf/stage/teacher.yaml)."""
    runs = {}
    for strategy, extra in (("deepspeed_zero2", []), ("deepspeed_zero3", ["stage.optim.ema_decay=null"])):
        run = tmp_path_factory.mktemp(strategy) / "run"
        rest_train("experiment=tiny_teacher", f"data.cfg.root={tiny_shards}", f"strategy={strategy}",
                   "trainer.devices=2", "trainer.max_steps=2", "trainer.limit_val_batches=0", "logger=none",
                   f"run_dir={run}", *extra)
        runs[strategy] = run
    return runs


@pytest.mark.parametrize(("strategy", "zero_stage"), [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_zero_checkpoint_info_export_and_init_from(zero_runs, strategy, zero_stage, tmp_path):
    ckpt = zero_runs[strategy] / "checkpoints" / "last.ckpt"
    assert is_zero_checkpoint(ckpt), "DeepSpeed writes a directory with a 'latest' file"
    info = checkpoint_info(ckpt)
    assert (info["kind"], info["stage"], info["step"]) == ("zero", "teacher", 2)
    assert (info["zero_stage"], info["world_size"], info["optimizer_files"]) == (zero_stage, 2, 2)
    assert info["ema"] is (zero_stage == 2)

    # init_from a ZeRO directory == init_from its export: the same fp32 tensors, the same stage check.
    weights, meta = load_user_state(ckpt)
    card = export_checkpoint(ckpt, tmp_path / "teacher.safetensors")
    exported, exported_meta = load_user_state(tmp_path / "teacher.safetensors")
    assert meta["stage"] == exported_meta["stage"] == card.stage == "teacher"
    assert card.step == 2 and card.source_kind == "zero" and card.tensors == info["tensors"] == len(weights)
    assert set(weights) == set(exported)
    for key, value in weights.items():
        assert value.dtype == torch.float32 and torch.equal(value, exported[key]), key
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_zero2_resume_auto_continues_the_run(zero_runs):
    run = zero_runs["deepspeed_zero2"]
    assert find_resume_checkpoint(run).name == "last.ckpt" and checkpoint_step(run / "checkpoints" / "last.ckpt") == 2
    result = rest_train("experiment=tiny_teacher", f"data.cfg.root={_shards_of(run)}", "strategy=deepspeed_zero2",
                        "trainer.devices=2",
                        "trainer.max_steps=3", "trainer.limit_val_batches=0", "logger=none", f"run_dir={run}")
    assert "resuming from" in result.stderr
    assert checkpoint_info(run / "checkpoints" / "last.ckpt")["step"] == 3


def _shards_of(run: Path) -> str:
    return str(OmegaConf.load(run / "config.yaml").data.cfg.root)
