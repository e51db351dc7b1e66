"""rest-prep mode=ode: latent shards gain the frozen teacher's ODE trajectory of each clip (``ode.npy``),
the latent-mode loader carries it (``ClipBatch.ode``), and the ODE-init student trains on it with no
teacher loaded."""

from __future__ import annotations

import json

import pytest
import torch

from data_prep.ode_trajectories import OdeConfig, load_frozen_teacher, ode_noise, sample_conditions
from rest_lightning import __version__
from rest_lightning.checkpoint import META_KEY
from rest_lightning.cli.prep import run as run_prep_cli
from rest_lightning.config import ConfigError, compose
from rest_lightning.data.datamodule import DataConfig, VideoDataModule
from rest_lightning.diffusion.asd import ode_trajectory
from rest_lightning.training import instantiate_node, train

LEVELS = (1.0, 0.75, 0.5, 0.25)  # conf/stage/student.yaml sampler
STEPS_PER_LEVEL = 2  # tiny_student_ode_init


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ode_shards(tmp_path_factory, tiny_shards):
    """(latent shards, ODE shards, VAE path, teacher path): random tiny VAE and teacher checkpoints in the
    real formats, the shards encoded then given trajectories through the CLI."""
    root = tmp_path_factory.mktemp("ode")
    torch.manual_seed(0)
    vae_stage = instantiate_node(compose("train", ["experiment=tiny_vae", f"data.cfg.root={tiny_shards}"]).stage, "stage")
    vae_path = root / "vae.ckpt"
    checkpoint = {"state_dict": vae_stage.state_dict(), "global_step": 0}
    vae_stage.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, vae_path)

    torch.manual_seed(1)
    teacher = instantiate_node(compose("train", ["experiment=tiny_teacher", "data.cfg.root=unused"]).stage, "stage")
    teacher_path = root / "teacher.ckpt"
    meta = {"stage": "teacher", "config": teacher.identity_config(), "version": __version__}
    torch.save({"state_dict": teacher.state_dict(), META_KEY: meta}, teacher_path)

    latents, odes = root / "latents", root / "odes"
    run_prep_cli(compose("prep", ["mode=encode", f"input={tiny_shards}", f"output={latents}", f"encode.vae={vae_path}",
                                  "encode.progress=false"]))
    summary = run_prep_cli(compose("prep", [
        "mode=ode", f"input={latents}", f"output={odes}", f"ode.teacher={teacher_path}", f"ode.vae={vae_path}",
        f"ode.steps_per_level={STEPS_PER_LEVEL}", "ode.batch_size=3", "ode.seed=7", "ode.progress=false",
    ]))
    return latents, odes, vae_path, teacher_path, summary


def _batch(root, latent_frames: int = 2, batch_size: int = 2):
    dm = VideoDataModule(DataConfig(root=str(root), mode="latent", latent_frames=latent_frames,
                                    batch_size=batch_size, num_workers=0))
    return next(iter(dm.val_dataloader()))


def test_ode_shards_hold_the_teachers_trajectory_from_the_seeded_noise(ode_shards):
    latents, odes, vae_path, teacher_path, summary = ode_shards
    source = json.loads((latents / "manifest.json").read_text())
    manifest = json.loads((odes / "manifest.json").read_text())
    assert summary.clips == source["clips"] and not list(odes.rglob("*.partial"))
    assert manifest["ode"]["timesteps"] == list(LEVELS) and manifest["ode"]["teacher"] == str(teacher_path)
    assert manifest["ode"]["shape"] == [len(LEVELS) + 1, 8, 3, 4, 4] and manifest["latent"] == source["latent"]

    batch = _batch(odes, batch_size=3)
    assert batch.ode.shape == (3, len(LEVELS) + 1, 8, 3, 4, 4) and batch.ode.dtype == torch.float32
    # Recompute: the same teacher and VAE, the reader's samples, the (seed, key) noise, asd.ode_trajectory.
    from data_prep.encode_latents import load_frozen_vae
    from rest_lightning.data.shard_index import CorpusIndex

    cfg = OdeConfig(teacher=str(teacher_path), vae=str(vae_path), steps_per_level=STEPS_PER_LEVEL, seed=7)
    teacher, vae = load_frozen_teacher(teacher_path, cfg), load_frozen_vae(vae_path, torch.device("cpu"))
    corpus = CorpusIndex.from_manifest(latents, "val")
    samples = [corpus.read(i) for i in range(3)]
    cond, keys = sample_conditions(teacher, vae, samples, torch.device("cpu"))
    assert keys == batch.keys
    for b, key in enumerate(keys):  # one sample at a time: the stored result does not depend on the batch
        noise = ode_noise(7, key, tuple(cond.latents.shape[1:]))[None]
        denoise = teacher.denoiser(cond.audio[b : b + 1], cond.ref[b : b + 1])
        expected = ode_trajectory(denoise, noise, LEVELS, STEPS_PER_LEVEL)[:, 0]
        torch.testing.assert_close(batch.ode[b], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.ode[b, 0], noise[0], rtol=0, atol=0)  # the first state is the noise
        # The last state is the sample: the teacher's Euler steps from the last level (0.25) down to t = 0.
        x = batch.ode[b, -2][None]
        for i in range(STEPS_PER_LEVEL):
            t, t_next = LEVELS[-1] * (1 - i / STEPS_PER_LEVEL), LEVELS[-1] * (1 - (i + 1) / STEPS_PER_LEVEL)
            x = x + (t_next - t) * denoise(x, torch.full((1, x.shape[2]), t))
        torch.testing.assert_close(batch.ode[b, -1], x[0], rtol=1e-5, atol=1e-5)
        assert not torch.equal(batch.ode[b, -1], batch.ode[b, 0])
    assert not torch.equal(ode_noise(7, keys[0], (2,)), ode_noise(7, keys[1], (2,))), "noise differs per key"
    assert torch.equal(ode_noise(7, keys[0], (2,)), ode_noise(7, keys[0], (2,)))


def test_latent_batches_carry_ode_aligned_with_their_latent(ode_shards):
    latents, odes, *_ = ode_shards
    full, short = _batch(odes), _batch(odes, latent_frames=1)
    assert full.latent.shape == (2, 8, 3, 4, 4) and short.ode.shape == (2, len(LEVELS) + 1, 8, 2, 4, 4)
    torch.testing.assert_close(short.ode, full.ode[:, :, :, :2], rtol=0, atol=0)  # windows start at frame 0
    torch.testing.assert_close(short.latent, full.latent[:, :, :2], rtol=0, atol=0)
    plain = _batch(latents)
    assert plain.ode is None, "shards without ode.npy give ode=None"
    torch.testing.assert_close(plain.latent, full.latent, rtol=0, atol=0)  # samples copied unchanged
    video = VideoDataModule(DataConfig(root=str(odes), mode="video", latent_frames=2, batch_size=2, num_workers=0))
    assert next(iter(video.val_dataloader())).ode is None, "video mode never reads ode.npy"


def test_ode_mode_needs_latent_shards(tmp_path, tiny_shards, ode_shards):
    _, _, vae_path, teacher_path, _ = ode_shards
    with pytest.raises(ConfigError, match="encode it first"):
        run_prep_cli(compose("prep", ["mode=ode", f"input={tiny_shards}", f"output={tmp_path / 'o'}",
                                      f"ode.teacher={teacher_path}", f"ode.vae={vae_path}"]))
    with pytest.raises(ConfigError, match="not a teacher-stage checkpoint"):
        run_prep_cli(compose("prep", ["mode=ode", f"input={ode_shards[0]}", f"output={tmp_path / 'o'}",
                                      f"ode.teacher={vae_path}", f"ode.vae={vae_path}"]))


def test_student_ode_init_trains_on_shards_without_a_teacher(tmp_path, ode_shards, monkeypatch):
    _, odes, vae_path, _, _ = ode_shards
    from rest_lightning.stages import student as student_module

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher must not be loaded when the trajectories come from the shards")

    monkeypatch.setattr(student_module.FrozenTeacher, "load", no_teacher)
    cfg = compose("train", [
        "experiment=tiny_student_ode_init", f"data.cfg.root={odes}", "data.cfg.mode=latent", f"run_dir={tmp_path}",
        f"stage.vae_checkpoint={vae_path}", "stage.teacher_checkpoint=null", "stage.random_teacher_ok=false",
        "stage.ode_init.from_shards=true", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "checkpoint.every_n_steps=2", "trainer.log_every_n_steps=1", "stage.optim.warmup_steps=1",
        "stage.validation.stream_clips=0",
    ])
    stage = instantiate_node(cfg.stage, "stage")
    assert stage.teacher is None
    result = train(cfg)
    last = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    lines = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert "train/ode_loss" in header and "val/ode_loss" in header and "train/asd_loss" not in header
    column = header.index("train/ode_loss")
    losses = [float(row.split(",")[column]) for row in lines[1:] if row.split(",")[column]]
    assert losses and all(torch.isfinite(torch.tensor(losses))), losses

    # The stored trajectory replaces the online one: same loss as ode_loss fed the batch's ode.
    batch = _batch(odes)
    cond = stage.conditions(batch)
    with pytest.raises(ValueError, match="carries no ODE trajectories"):
        stage.objective().ode_loss(stage.model, cond, torch.Generator().manual_seed(0))
    loss = stage.objective().ode_loss(stage.model, cond, torch.Generator().manual_seed(0), batch.ode)
    assert torch.isfinite(loss) and loss.item() > 0
