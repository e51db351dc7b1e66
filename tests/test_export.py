"""`rest-ckpt export` / `info` on a Lightning checkpoint of the tiny VAE (two optimizers, EMA, latent stats).
ZeRO directories are covered in test_strategies.py."""

from __future__ import annotations

import json

import pytest
import torch

from rest_lightning.checkpoint import CheckpointMismatchError, load_user_state
from rest_lightning.cli.ckpt import main as rest_ckpt
from rest_lightning.export import checkpoint_info, ema_target_prefix, export_checkpoint
from rest_lightning.training import instantiate_node, train


@pytest.fixture(scope="module")
def vae_run(tiny_shards, tmp_path_factory):
    from rest_lightning.config import compose

    run = tmp_path_factory.mktemp("vae") / "run"
    cfg = compose("train", ["experiment=tiny_vae", f"data.cfg.root={tiny_shards}", "trainer.max_steps=2",
                            "trainer.limit_val_batches=0", "logger=none", f"run_dir={run}"])
    result = train(cfg)
    return cfg, result.last_checkpoint


def test_export_writes_fp32_safetensors_and_a_card(vae_run, tmp_path):
    cfg, ckpt = vae_run
    out = tmp_path / "vae.safetensors"
    card = export_checkpoint(ckpt, out)
    saved = torch.load(ckpt, weights_only=True)
    weights, meta = load_user_state(out)
    assert set(weights) == set(saved["state_dict"])
    for key, value in saved["state_dict"].items():
        assert torch.equal(weights[key], value.float() if value.is_floating_point() else value), key
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk["stage"] == meta["stage"] == "vae" and on_disk["step"] == meta["step"] == 2
    assert on_disk["config"] == saved["rest"]["config"] and on_disk["weights"] == "model"
    assert on_disk["git_sha"] == (ckpt.parent.parent / "git_sha.txt").read_text().strip()
    assert on_disk["source"] == str(ckpt.resolve()) and on_disk["source_kind"] == "lightning"
    assert on_disk["tensors"] == len(weights) and card.sha256 == on_disk["sha256"]

    # init_from the exported file: the stage check passes and every tensor arrives.
    stage = instantiate_node(cfg.stage, "stage")
    stage.load_init_from(out)
    for key, value in stage.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_export_ema_puts_the_average_on_the_model_keys(vae_run, tmp_path):
    _, ckpt = vae_run
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert ema_target_prefix(saved) == "vae."
    card = export_checkpoint(ckpt, tmp_path / "ema.safetensors", ema=True)
    weights, meta = load_user_state(tmp_path / "ema.safetensors")
    assert card.weights == meta["weights"] == "ema" and card.ema_target == "vae."
    ema_keys = [k for k in saved if k.startswith("ema.module.")]
    assert ema_keys
    for key in ema_keys:
        target = "vae." + key[len("ema.module."):]
        assert torch.equal(weights[target], saved[key]) and torch.equal(weights[key], saved[key]), target
    assert not all(torch.equal(saved["vae." + k[len("ema.module."):]], saved[k]) for k in ema_keys), \
        "the trained and the EMA weights differ after 2 steps, so the test can tell them apart"
    for key in (k for k in saved if k.startswith("discriminator.")):
        assert torch.equal(weights[key], saved[key]), "modules the EMA does not shadow are kept as trained"


def test_export_ema_without_an_ema_copy_is_refused(vae_run, tmp_path):
    _, ckpt = vae_run
    saved = torch.load(ckpt, weights_only=True)
    saved["state_dict"] = {k: v for k, v in saved["state_dict"].items() if not k.startswith("ema.")}
    no_ema = tmp_path / "no_ema.ckpt"
    torch.save(saved, no_ema)
    with pytest.raises(CheckpointMismatchError, match="holds no EMA copy"):
        export_checkpoint(no_ema, tmp_path / "x.safetensors", ema=True)


def test_info_says_what_a_checkpoint_holds(vae_run):
    _, ckpt = vae_run
    saved = torch.load(ckpt, weights_only=True)
    info = checkpoint_info(ckpt)
    assert (info["kind"], info["stage"], info["step"]) == ("lightning", "vae", 2)
    assert info["optimizers"] == 2 and info["lr_schedulers"] == 2 and info["ema"] and info["rng_states"]
    assert info["tensors"] == len(saved["state_dict"])
    assert info["bytes"] == sum(v.numel() * v.element_size() for v in saved["state_dict"].values())
    assert set(info["modules"]) == {"vae", "discriminator", "ema", "latent_mean", "latent_sq_mean",
                                    "latent_stats_seen"}
    assert info["provenance"]["git_sha"] and info["provenance"]["world_size"] == 1


def test_cli_export_then_info_of_the_export(vae_run, tmp_path, capsys):
    _, ckpt = vae_run
    out = tmp_path / "cli.safetensors"
    assert rest_ckpt(["export", f"ckpt={ckpt}", f"out={out}", "ema=true"]) == 0
    assert out.exists() and out.with_suffix(".json").exists()
    capsys.readouterr()
    assert rest_ckpt(["info", f"ckpt={out}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["stage"], info["weights"], info["step"]) == ("safetensors", "vae", "ema", 2)
    assert rest_ckpt(["export", f"ckpt={ckpt}", f"out={tmp_path / 'x.pt'}"]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert rest_ckpt(["info", f"ckpt={tmp_path / 'missing.ckpt'}"]) == 2


def test_a_zero_directory_with_foreign_pickles_is_refused(tmp_path):
    zero = tmp_path / "last.ckpt"
    (zero / "checkpoint").mkdir(parents=True)
    (zero / "latest").write_text("checkpoint")
    torch.save({"module": {}, "payload": CheckpointMismatchError("not a tensor")},
               zero / "checkpoint" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointMismatchError, match="CheckpointMismatchError: not a plain DeepSpeed ZeRO"):
        load_user_state(zero)
