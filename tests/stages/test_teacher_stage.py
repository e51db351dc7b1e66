"""The teacher stage (issue 5, DESIGN §4.2) on the tiny config: end-to-end training, what its checkpoints
hold, the schedule's per-frame times and the condition dropout reaching the DiT, the frozen VAE, and
overfitting one clip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import pytest
import torch

from rest_lightning.checkpoint import CheckpointMismatchError
from rest_lightning.conditioning import ClipConditions, FrozenVAE
from rest_lightning.config import ConfigError, compose
from rest_lightning.data.batch import ClipBatch
from rest_lightning.diffusion.flow import add_noise
from rest_lightning.diffusion.guidance import ConditionDropout, GuidanceScales
from rest_lightning.diffusion.losses import (
    loss_by_noise_level,
    noise_level_names,
    stratified_frame_times,
)
from rest_lightning.diffusion.samplers import EulerSampler
from rest_lightning.diffusion.schedules import IndependentSchedule, StaggeredSchedule
from rest_lightning.diffusion.timesteps import TimestepSampler
from rest_lightning.models.dit import DiT
from rest_lightning.models.vae import CausalVideoVAE
from rest_lightning.models.vae_config import vae_tiny
from rest_lightning.stages.optim import warmup_cosine
from rest_lightning.train_config import validate_train_config
from rest_lightning.training import instantiate_node, train

TINY = ["experiment=tiny_teacher", "data.cfg.root=unused"]
LATENT_SHAPE = (8, 3, 4, 4)  # vae_tiny on 32x32 clips of 17 frames: C, F, h, w


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_stage(*overrides: str):
    torch.manual_seed(0)
    return instantiate_node(compose("train", [*TINY, *overrides]).stage, "stage")


def random_conditions(stage, batch: int, generator: torch.Generator) -> ClipConditions:
    waveform = torch.randn(batch, 17 * 640, generator=generator) * 0.1
    return ClipConditions(
        latents=torch.randn(batch, *LATENT_SHAPE, generator=generator),
        ref=torch.randn(batch, LATENT_SHAPE[0], 1, *LATENT_SHAPE[2:], generator=generator),
        audio=stage.model.audio_encoder(waveform, LATENT_SHAPE[1]),
        waveform=waveform,
    )


# --- end to end through train() -------------------------------------------------------------------


def _run_overrides(tiny_shards) -> list[str]:
    return ["experiment=tiny_teacher", f"data.cfg.root={tiny_shards}", "trainer.max_steps=6",
            "trainer.val_check_interval=6", "checkpoint.every_n_steps=3", "checkpoint.keep_last=-1",
            "stage.optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_shards):
    run_dir = tmp_path_factory.mktemp("teacher_run")
    cfg = compose("train", [*_run_overrides(tiny_shards), f"run_dir={run_dir}"])
    seen: list[tuple[bool, torch.Tensor]] = []
    original = DiT.forward

    def spy(self, latents, timesteps, *args, **kwargs):
        seen.append((self.training, timesteps.detach().clone()))
        return original(self, latents, timesteps, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiT, "forward", spy)
        result = train(cfg)
    return cfg, result, seen


def test_tiny_teacher_trains_and_validates_end_to_end(teacher_run):
    cfg, result, _ = teacher_run
    last = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6
    header = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    levels = [f"val/loss_{name}" for name in noise_level_names(cfg.stage.validation.num_level_buckets)]
    for key in ("train/loss", "val/loss", *levels):
        assert key in header, key


def test_validation_writes_a_sampled_clip_with_its_audio(teacher_run):
    _, result, _ = teacher_run
    videos = sorted((result.run_dir / "media").glob("sample_step*.mp4"))
    assert videos, "validation writes (ground truth | sample) to <run_dir>/media"
    with av.open(str(videos[0])) as container:
        assert container.streams.video and container.streams.audio, "the mp4 carries the clip's audio"
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        assert (video.codec_context.width, video.codec_context.height) == (64, 32)
    assert frames == 17, "every frame of the 17-frame clip: 1 + 8 (F - 1) for F = 3 latent frames"


def test_checkpoints_hold_the_dit_and_ema_but_not_the_frozen_vae(teacher_run):
    cfg, result, _ = teacher_run
    ckpts = result.run_dir / "checkpoints"
    first = torch.load(ckpts / "step=00000003.ckpt", weights_only=True)
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    keys = list(last["state_dict"])
    fresh = instantiate_node(cfg.stage, "stage")
    trained = list(fresh.model.state_dict())
    assert set(keys) == {f"model.{k}" for k in trained} | {f"ema.module.{k}" for k in trained}, (
        "the DiT + audio encoder and their EMA, nothing of the frozen VAE"
    )
    assert len(last["optimizer_states"]) == 1, "one optimizer: DeepSpeed ZeRO-2/3 accept the stage"
    meta = last["rest"]
    assert meta["stage"] == "teacher"
    assert json.loads(json.dumps(meta["config"])) == meta["config"], "identity config is plain JSON"
    assert meta["config"]["dit"]["width"] == cfg.model.dit.width
    assert meta["config"]["audio"]["token_dim"] == cfg.model.audio.token_dim
    manifest = json.loads((Path(cfg.data.cfg.root) / "manifest.json").read_text())
    assert meta["resolution"] == manifest["media"]["size"], "the side it trained at (rest-generate's default)"
    ema_moved = [
        k
        for k in keys
        if k.startswith("ema.module.") and not torch.equal(first["state_dict"][k], last["state_dict"][k])
    ]
    assert ema_moved, "the EMA copy follows training"
    fresh.load_state_dict(last["state_dict"], strict=True)  # resume-compatible: same keys, no VAE


def test_resume_from_a_step_checkpoint_reproduces_the_weights_and_their_ema(teacher_run, tiny_shards, tmp_path):
    """The EMA follows each optimizer step before that step's checkpoint is written: resuming the 6-step run
    at step 3 gives its final weights and EMA exactly (the EMA used to be saved one update behind)."""
    _, result, _ = teacher_run
    resumed = train(compose("train", [*_run_overrides(tiny_shards), f"run_dir={tmp_path / 'resumed'}",
                                      f"resume='{result.run_dir / 'checkpoints' / 'step=00000003.ckpt'}'"]))
    straight = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    again = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    assert resumed.global_step == 6 and set(again) == set(straight)
    for key, value in straight.items():
        assert torch.equal(again[key], value), key


def test_async_schedule_times_reach_the_dit_during_training(teacher_run):
    _, _, seen = teacher_run
    train_times = [t for training, t in seen if training]
    assert train_times and all(t.shape == (2, LATENT_SHAPE[1]) for t in train_times)
    assert any(len(set(row.tolist())) > 1 for t in train_times for row in t), (
        "the teacher's mixture schedule gives frames of one clip different times"
    )


def test_tiny_teacher_composes_for_deepspeed_and_refuses_mismatched_models(tiny_shards, train_cfg):
    validate_train_config(train_cfg(*TINY, "strategy=deepspeed_zero2", "trainer.accelerator=gpu"))
    cfg = train_cfg(*TINY, "model.dit.latent_channels=16")
    with pytest.raises(
        ConfigError, match="model.dit.latent_channels=16 must equal model.vae.latent_channels=8"
    ):
        instantiate_node(cfg.stage, "stage")
    cfg = train_cfg(*TINY, "model.audio.token_dim=16")
    with pytest.raises(ConfigError, match="model.dit.audio_dim=32 must equal model.audio.token_dim=16"):
        instantiate_node(cfg.stage, "stage")


# --- the training loss at stage level -------------------------------------------------------------


def _spy_dit(stage, monkeypatch, run_model: bool) -> list[dict]:
    calls: list[dict] = []
    original = stage.model.dit.forward

    def spy(latents, timesteps, audio, ref, pattern, drop_audio=None, drop_ref=None):
        calls.append(
            dict(
                latents=latents,
                timesteps=timesteps,
                drop_audio=drop_audio,
                drop_ref=drop_ref,
                pattern=pattern,
            )
        )
        if run_model:
            return original(latents, timesteps, audio, ref, pattern, drop_audio, drop_ref)
        return torch.zeros_like(latents)

    monkeypatch.setattr(stage.model.dit, "forward", spy)
    return calls


def test_schedule_per_frame_times_reach_the_dit_exactly(monkeypatch):
    stage = tiny_stage()
    stage.schedule = StaggeredSchedule(TimestepSampler(kind="uniform"), step=0.25)
    calls = _spy_dit(stage, monkeypatch, run_model=True)
    generator = torch.Generator().manual_seed(3)
    cond = random_conditions(stage, 4, generator)
    replay = torch.Generator().manual_seed(7)
    generator.manual_seed(7)
    stage.training_loss(cond, generator)
    expected_t = stage.schedule.frame_times(4, LATENT_SHAPE[1], stage.chunk_frames, replay)
    expected_noise = torch.randn(cond.latents.shape, generator=replay)
    (call,) = calls
    torch.testing.assert_close(call["timesteps"], expected_t, rtol=0, atol=0)
    torch.testing.assert_close(call["latents"], add_noise(cond.latents, expected_noise, expected_t))
    steps = call["timesteps"].diff(dim=1)
    unclamped = (call["timesteps"][:, 1:] < 1) & (call["timesteps"][:, :-1] > 0)
    torch.testing.assert_close(steps[unclamped], torch.full_like(steps[unclamped], 0.25))
    assert call["pattern"].kind == "bidirectional"


def test_condition_dropout_rates_are_applied(monkeypatch):
    stage = tiny_stage()
    rates = ConditionDropout(audio=0.2, ref=0.1, both=0.3)
    stage.condition_dropout = rates
    calls = _spy_dit(stage, monkeypatch, run_model=False)
    n = 20_000
    generator = torch.Generator().manual_seed(0)
    cond = ClipConditions(
        torch.zeros(n, 8, 1, 1, 1), torch.zeros(n, 8, 1, 1, 1), torch.zeros(n, 1, 1, 32), torch.zeros(n, 1)
    )
    stage.training_loss(cond, generator)
    drop_audio, drop_ref = calls[0]["drop_audio"], calls[0]["drop_ref"]
    observed = {
        "audio only": (drop_audio & ~drop_ref).float().mean().item(),
        "ref only": (drop_ref & ~drop_audio).float().mean().item(),
        "both": (drop_audio & drop_ref).float().mean().item(),
    }
    for (name, value), p in zip(observed.items(), (rates.audio, rates.ref, rates.both), strict=True):
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(value - p) < 5 * sigma, f"{name}: {value:.4f} vs {p} (5 sigma = {5 * sigma:.4f})"
    stage.condition_dropout = ConditionDropout(0.0, 0.0, 0.0)
    stage.training_loss(cond, generator)
    assert not calls[1]["drop_audio"].any() and not calls[1]["drop_ref"].any()


def test_latent_mode_uses_the_shards_latents_and_encodes_only_the_reference(monkeypatch):
    stage = tiny_stage()
    monkeypatch.setattr(
        stage.frozen_vae, "encode_video", lambda video: pytest.fail("latent mode must not encode video")
    )
    latent = torch.randn(2, *LATENT_SHAPE)
    batch = ClipBatch(
        video=None,
        audio=torch.zeros(2, 17 * 640),
        ref=torch.zeros(2, 3, 32, 32),
        latent=latent,
        mask=torch.ones(2, dtype=torch.bool),
        start_frame=torch.zeros(2, dtype=torch.long),
        keys=["a", "b"],
    )
    cond = stage.conditions(batch)
    assert torch.equal(cond.latents, latent)
    assert cond.ref.shape == (2, LATENT_SHAPE[0], 1, *LATENT_SHAPE[2:]), "reference = one latent frame"
    assert cond.audio.shape == (2, LATENT_SHAPE[1], 2, 32)
    bad = ClipBatch(**{**batch.__dict__, "latent": torch.randn(2, 16, 3, 4, 4)})
    with pytest.raises(ValueError, match="16 channels but model.vae has 8"):
        stage.conditions(bad)


# --- the frozen VAE -------------------------------------------------------------------------------


def test_frozen_vae_loads_ema_weights_first_and_refuses_other_stages(tmp_path):
    torch.manual_seed(0)
    config = vae_tiny()
    raw, averaged = CausalVideoVAE(config).state_dict(), CausalVideoVAE(config).state_dict()
    state = {
        **{f"vae.{k}": v for k, v in raw.items()},
        **{f"ema.module.{k}": v for k, v in averaged.items()},
        "discriminator.w": torch.zeros(1),
    }
    path = tmp_path / "vae.ckpt"
    torch.save({"state_dict": state, "rest": {"stage": "vae", "config": {}}}, path)
    frozen = FrozenVAE.load(config, path)
    for key, value in frozen.vae.state_dict().items():
        assert torch.equal(value, averaged[key]), key
    assert not frozen.vae.training and not any(p.requires_grad for p in frozen.vae.parameters())
    torch.save({"state_dict": {f"vae.{k}": v for k, v in raw.items()}, "rest": {"stage": "vae"}}, path)
    assert all(torch.equal(v, raw[k]) for k, v in FrozenVAE.load(config, path).vae.state_dict().items())
    torch.save({"state_dict": state, "rest": {"stage": "teacher"}}, path)
    with pytest.raises(CheckpointMismatchError, match="'teacher' checkpoint"):
        FrozenVAE.load(config, path)


def test_vae_checkpoint_null_warns_and_the_vae_is_no_submodule():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        stage = tiny_stage()
    assert not any(p is q for p in stage.parameters() for q in stage.frozen_vae.vae.parameters())
    assert stage.identity_config()["vae"]["latent_channels"] == 8


# --- pure pieces ----------------------------------------------------------------------------------


def test_loss_by_noise_level_buckets_and_stratified_times_cover_every_level():
    t = stratified_frame_times(3, 4, 4, offset=1, generator=torch.Generator().manual_seed(0))
    assert t.shape == (3, 4) and bool(((t >= 0) & (t <= 1)).all())
    errors = torch.arange(12, dtype=torch.float32).view(3, 4)
    sums, counts = loss_by_noise_level(errors, t, 4)
    assert counts.tolist() == [3.0, 3.0, 3.0, 3.0], "12 frames visit 4 buckets evenly"
    assert sums.sum().item() == errors.sum().item()
    edge = loss_by_noise_level(torch.ones(1, 2), torch.tensor([[0.0, 1.0]]), 4)[1]
    assert edge.tolist() == [1.0, 0.0, 0.0, 1.0], "t = 1 falls in the last bucket"
    assert noise_level_names(10)[:2] == ["t0.0", "t0.1"] and noise_level_names(4)[1] == "t0.25"


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 100, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)


# --- overfitting one clip -------------------------------------------------------------------------

OVERFIT_STEPS = 120  # ~4 s on one idle core; the DiT author ran 300 (loss 2.28 -> 0.171, sample 0.096)
OVERFIT_COPIES = 8


def test_overfitting_one_clip_lowers_the_loss_and_sampling_reproduces_it():
    """The yardsticks are measured in the same run: the loss moves from step to step (random times and noise),
    so the drop from the first to the last 12 steps must exceed 5 standard errors of those windows' means;
    sampling must then land closer to the clip than any of 4 samples of an untrained copy of the model, by more
    than 5 times those samples' spread."""
    stage = tiny_stage()
    stage.schedule = IndependentSchedule(TimestepSampler(kind="uniform"))  # every level, every frame
    stage.condition_dropout = ConditionDropout(0.0, 0.0, 0.0)
    generator = torch.Generator().manual_seed(0)
    clip = random_conditions(stage, 1, generator)
    waveform = clip.waveform
    optimizer = torch.optim.AdamW(stage.model.parameters(), lr=3e-3, weight_decay=0.0)

    def copies(n: int) -> ClipConditions:
        audio = stage.model.audio_encoder(waveform, LATENT_SHAPE[1])  # the projector trains too
        return ClipConditions(
            clip.latents.expand(n, -1, -1, -1, -1),
            clip.ref.expand(n, -1, -1, -1, -1),
            audio.expand(n, -1, -1, -1),
            waveform.expand(n, -1),
        )

    losses = []
    for _ in range(OVERFIT_STEPS):
        loss = stage.training_loss(copies(OVERFIT_COPIES), generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    window = OVERFIT_STEPS // 10
    first, last = torch.tensor(losses[:window]), torch.tensor(losses[-window:])
    standard_error = ((first.var() + last.var()) / window).sqrt().item()
    drop = (first.mean() - last.mean()).item()
    assert drop > 5 * standard_error, f"loss {first.mean():.3f} -> {last.mean():.3f}, standard error {standard_error:.3f}"

    stage.validation_config.sampler = EulerSampler(num_steps=20)
    stage.validation_config.guidance = GuidanceScales(audio=1.0, ref=1.0)
    scale = clip.latents.flatten().norm()

    def sample_error(model) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            target = copies(4)
            sample = stage.sample(model, target, torch.Generator().manual_seed(1))
        return (sample - target.latents).flatten(1).norm(dim=1) / scale

    trained = sample_error(stage.model)
    untrained = sample_error(tiny_stage().model)  # the same architecture and seed, not trained: the control
    gap = (untrained.min() - trained.max()).item()
    assert gap > 5 * untrained.std().item(), f"rel. L2 trained {trained.tolist()}, untrained {untrained.tolist()}"


def test_tokens_per_sample_counts_latent_and_reference_tokens(tiny_shards):
    """Telemetry's tokens/s: (latent frames + reference frame) x latent height x width, from either mode."""
    from rest_lightning.config import compose
    from rest_lightning.data.batch import ClipBatch
    from rest_lightning.training import instantiate_node

    stage = instantiate_node(compose("train", ["experiment=tiny_teacher", f"data.cfg.root={tiny_shards}"]).stage, "stage")
    video = ClipBatch(video=torch.zeros(1, 3, 17, 32, 32), audio=torch.zeros(1, 17 * 640), ref=torch.zeros(1, 3, 32, 32),
                      latent=None, mask=torch.ones(1, dtype=torch.bool), start_frame=torch.zeros(1), keys=["a"])
    assert stage.tokens_per_sample(video) == (3 + 1) * 4 * 4  # vae_tiny: 8x8x8 compression
    latent = ClipBatch(video=None, audio=video.audio, ref=video.ref, latent=torch.zeros(1, 8, 3, 4, 4),
                       mask=video.mask, start_frame=video.start_frame, keys=["a"])
    assert stage.tokens_per_sample(latent) == (3 + 1) * 4 * 4
