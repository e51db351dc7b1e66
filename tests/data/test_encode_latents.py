"""rest-prep mode=encode: shards gain each clip's normalised VAE latent, readable in latent mode."""

from __future__ import annotations

import json

import pytest
import torch

from rest_lightning.cli.prep import run as run_prep_cli
from rest_lightning.config import ConfigError, compose
from rest_lightning.training import instantiate_node


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory, tiny_shards):
    """A VAE-stage checkpoint in the real format (state dict + "rest" metadata), random tiny weights."""
    cfg = compose("train", ["experiment=tiny_vae", f"data.cfg.root={tiny_shards}"])
    torch.manual_seed(0)
    stage = instantiate_node(cfg.stage, "stage")
    for vae in (stage.vae, stage.ema.module):  # non-trivial statistics: the latents must be normalised
        vae.latent_norm.set_stats(torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8))
    path = tmp_path_factory.mktemp("vae") / "vae.ckpt"
    checkpoint = {"state_dict": stage.state_dict(), "global_step": 0}
    stage.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path, stage


def test_encoded_shards_hold_the_vae_latent_of_each_clip(tmp_path, tiny_shards, vae_ckpt):
    path, stage = vae_ckpt
    out = tmp_path / "latents"
    summary = run_prep_cli(compose("prep", [
        "mode=encode", f"input={tiny_shards}", f"output={out}", f"encode.vae={path}", "encode.progress=false",
    ]))
    source = json.loads((tiny_shards / "manifest.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary.clips == source["clips"] and manifest["latent"]["normalised"] is True
    assert {s: v["clips"] for s, v in manifest["splits"].items()} == {s: v["clips"] for s, v in source["splits"].items()}
    assert not list(out.rglob("*.partial")), "every shard was closed and renamed"

    from rest_lightning.data.datamodule import DataConfig, VideoDataModule

    video_dm = VideoDataModule(DataConfig(root=str(out), mode="video", latent_frames=2, batch_size=2, num_workers=0))
    latent_dm = VideoDataModule(DataConfig(root=str(out), mode="latent", latent_frames=2, batch_size=2, num_workers=0))
    video_batch = next(iter(video_dm.val_dataloader()))
    latent_batch = next(iter(latent_dm.val_dataloader()))
    assert video_batch.keys == latent_batch.keys
    # The EMA copy is what a VAE-stage checkpoint is read with (FrozenVAE prefers ema.module.*).
    expected = stage.ema.module.encode(video_batch.video)
    torch.testing.assert_close(latent_batch.latent, expected, rtol=1e-5, atol=1e-5)


def test_encode_refuses_a_checkpoint_of_another_stage(tmp_path, tiny_shards, vae_ckpt):
    path, _ = vae_ckpt
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["rest"]["stage"] = "teacher"
    wrong = tmp_path / "teacher.ckpt"
    torch.save(checkpoint, wrong)
    with pytest.raises(ConfigError, match="is not a VAE-stage checkpoint"):
        run_prep_cli(compose("prep", ["mode=encode", f"input={tiny_shards}", f"output={tmp_path / 'o'}",
                                      f"encode.vae={wrong}"]))
    with pytest.raises(ConfigError, match="output must differ from input"):
        run_prep_cli(compose("prep", ["mode=encode", f"input={tiny_shards}", f"output={tiny_shards}",
                                      f"encode.vae={path}"]))


def _members(root) -> list[tuple]:
    from data_prep.augment import shard_entries
    from rest_lightning.data.shard_index import CorpusIndex

    manifest = json.loads((root / "manifest.json").read_text())
    splits = dict.fromkeys(split for split, _, _ in shard_entries(manifest))
    out = []
    for split in splits:
        index = CorpusIndex.from_manifest(root, split)
        out += [tuple(sorted(index.read(i).items())) for i in range(index.total)]
    return out


def test_encode_as_array_tasks_equals_one_process_and_resumes(tmp_path, tiny_shards, vae_ckpt, capsys):
    path, _ = vae_ckpt
    base = ["mode=encode", f"input={tiny_shards}", f"encode.vae={path}", "encode.progress=false", "encode.batch_size=2"]
    one = run_prep_cli(compose("prep", [*base, f"output={tmp_path / 'one'}"]))
    out = tmp_path / "array"
    n_shards = sum(len(v["shards"]) for v in json.loads((tiny_shards / "manifest.json").read_text())["splits"].values())
    assert n_shards >= 2, "the test needs a shard for each of two tasks"
    run_prep_cli(compose("prep", [*base, f"output={out}", "cluster.array=2", "step=task", "task=1"]))
    assert "encode task 1 of 2 wrote" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"output shards are missing .*rerun the same command"):
        run_prep_cli(compose("prep", [*base, f"output={out}", "cluster.array=2", "step=merge"]))
    assert not (out / "manifest.json").exists()
    with pytest.raises(ConfigError, match=r"other settings \(batch_size differ\)"):  # no mixed shards
        run_prep_cli(compose("prep", [*base, f"output={out}", "cluster.array=2", "step=task", "task=0",
                                      "encode.batch_size=3"]))
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    merged = run_prep_cli(compose("prep", [*base, f"output={out}", "cluster.array=2"]))  # all tasks, then merge
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "task 1's finished shards were kept"
    assert (merged.clips, merged.splits, merged.latent_shape) == (one.clips, one.splits, one.latent_shape)
    assert _members(out) == _members(tmp_path / "one")  # byte for byte, latents included
    a, b = (json.loads((root / "manifest.json").read_text()) for root in (out, tmp_path / "one"))
    assert a == b
