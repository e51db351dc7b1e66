"""The tiny VAE experiment end to end on CPU: run directory, checkpoints, resume, init_from, W&B offline."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from rest_lightning.checkpoint import CheckpointMismatchError
from rest_lightning.training import train


class _Crash(L.Callback):
    """Simulates a job killed after ``at_step`` optimizer steps (after that step's checkpoint)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at_step:
            raise RuntimeError("simulated crash")


class _FirstStep(L.Callback):
    def __init__(self) -> None:
        self.first: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            self.first = trainer.global_step


@pytest.fixture
def tiny(train_cfg, tiny_shards):
    """``train_cfg`` for experiment=tiny_vae on the session's tiny shards, checkpoints every 4 steps."""

    def make(*overrides: str, run_dir=None):
        return train_cfg("experiment=tiny_vae", f"data.cfg.root={tiny_shards}", "checkpoint.every_n_steps=4",
                         "trainer.limit_val_batches=0", *overrides, run_dir=run_dir)

    return make


def test_tiny_experiment_end_to_end(tiny, tmp_path):
    result = train(tiny("trainer.max_steps=10"))
    run = result.run_dir
    assert result.global_step == 10
    assert "name: tiny_vae" in (run / "config.yaml").read_text()
    assert (run / "git_sha.txt").read_text().strip()
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    # every_n_steps=4, keep_last=2 -> steps 4 and 8 kept; last.ckpt holds the final step 10.
    assert ckpts == ["last.ckpt", "step=00000004.ckpt", "step=00000008.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10
    assert last["rest"]["stage"] == "vae"
    assert (run / "logs" / "metrics.csv").exists()


def test_keep_last_prunes_old_step_checkpoints(tiny):
    result = train(tiny("trainer.max_steps=16", "checkpoint.keep_last=2"))
    steps = sorted(p.name for p in (result.run_dir / "checkpoints").glob("step=*.ckpt"))
    assert steps == ["step=00000012.ckpt", "step=00000016.ckpt"]


def test_resume_auto_continues_from_the_newest_checkpoint(tiny, monkeypatch):
    import rest_lightning.training as training

    cfg = tiny("trainer.max_steps=12")
    crash = _Crash(at_step=6)
    original = training.build_callbacks
    monkeypatch.setattr(training, "build_callbacks", lambda c, r: [*original(c, r), crash])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    run = Path(cfg.run_dir)
    saved = torch.load(run / "checkpoints" / "step=00000004.ckpt", weights_only=True)
    assert not (run / "checkpoints" / "last.ckpt").exists() or \
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    first = _FirstStep()
    monkeypatch.setattr(training, "build_callbacks", lambda c, r: [*original(c, r), first])
    result = train(cfg)  # same run_dir, resume=auto (the default)
    assert first.first == 4, "resume=auto must restart at the newest checkpoint's step"
    assert result.global_step == 12
    # The optimizer state and EMA came back too: the resumed run started from the saved moments.
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 12
    assert saved["optimizer_states"][0]["state"][0]["step"].item() == 4
    assert any(k.startswith("ema.") for k in resumed["state_dict"])


def test_resume_restores_rng_state():
    from rest_lightning.stages.base import _rng_states, _set_rng_states

    torch.manual_seed(123)
    state = _rng_states()
    a = torch.rand(3)
    torch.manual_seed(999)
    _set_rng_states(state)
    assert torch.equal(torch.rand(3), a)


def test_resume_refuses_a_checkpoint_of_another_config(tiny):
    cfg = tiny("trainer.max_steps=4")
    train(cfg)
    bigger = tiny("trainer.max_steps=8", "model.vae.latent_channels=4")
    with pytest.raises(CheckpointMismatchError, match=r"vae.latent_channels: checkpoint 8 vs config 4"):
        train(bigger)


def test_init_from_loads_weights_only(tiny, tmp_path):
    source = train(tiny("trainer.max_steps=4", run_dir=tmp_path / "a"))
    target = tiny("trainer.max_steps=1",
                  f"init_from={source.last_checkpoint}", run_dir=tmp_path / "b")
    from rest_lightning.training import instantiate_node

    stage = instantiate_node(target.stage, "stage")
    stage.load_init_from(source.last_checkpoint)
    saved = torch.load(source.last_checkpoint, weights_only=True)["state_dict"]
    for key, value in stage.state_dict().items():
        assert torch.equal(value, saved[key]), key
    result = train(target)
    assert result.global_step == 1, "init_from starts a new run at step 0, it does not resume"


def test_init_from_wrong_stage_names_both(tiny, tmp_path):
    source = train(tiny("trainer.max_steps=2", run_dir=tmp_path / "a"))
    ckpt = torch.load(source.last_checkpoint, weights_only=True)
    ckpt["rest"]["stage"] = "teacher"
    wrong = tmp_path / "teacher.ckpt"
    torch.save(ckpt, wrong)
    cfg = tiny(f"init_from={wrong}", run_dir=tmp_path / "b")
    with pytest.raises(CheckpointMismatchError, match=r"is a 'teacher' checkpoint but this run trains stage 'vae'"):
        train(cfg)
    assert not (tmp_path / "b").exists(), "a refused config must not leave a run directory behind"


def test_init_from_refuses_pickled_code(tiny, tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Crash(1)}, evil)
    cfg = tiny(f"init_from={evil}")
    with pytest.raises(CheckpointMismatchError, match=r"init_from=.*evil.ckpt names code outside the weights-only "
                                                      r"allowlist \(test_train._Crash\)"):
        train(cfg)


def test_wandb_offline_run_id_kept_across_relaunch(tiny):
    cfg = tiny("logger=wandb", "trainer.max_steps=2")
    first = train(cfg)
    run_id = (first.run_dir / "wandb_run_id.txt").read_text().strip()
    assert list((first.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    relaunch = tiny("logger=wandb", "trainer.max_steps=4")
    second = train(relaunch)
    assert (second.run_dir / "wandb_run_id.txt").read_text().strip() == run_id
    assert len(list((second.run_dir / "configs").glob("config-*.yaml"))) == 1, "the first config is kept"
