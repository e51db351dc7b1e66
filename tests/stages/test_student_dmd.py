"""The DMD student stage (DESIGN §4.3, optional DMD term with a trainable critic) on the tiny config: the
DMD gradient vanishes when the critic is the unguided teacher, no gradient reaches the frozen teacher, both
optimizers step while ``global_step`` counts generator steps, the validator refuses DeepSpeed, and a short
``train()`` run end to end."""

from __future__ import annotations

import pytest
import torch

from rest_lightning import __version__
from rest_lightning.checkpoint import META_KEY
from rest_lightning.conditioning import ClipConditions
from rest_lightning.config import ConfigError, compose
from rest_lightning.diffusion.dmd import dmd_gradient, dmd_loss, renoised_window
from rest_lightning.diffusion.guidance import GuidanceScales
from rest_lightning.distillation import StepChoices
from rest_lightning.stages.student_dmd import StudentDMDStage
from rest_lightning.train_config import validate_train_config
from rest_lightning.training import instantiate_node, train

TINY = ["experiment=tiny_student_dmd", "data.cfg.root=unused"]
CHANNELS, GRID = 8, (4, 4)  # vae_tiny latents on 32x32 clips


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_stage(*overrides: str) -> StudentDMDStage:
    torch.manual_seed(0)
    return instantiate_node(compose("train", [*TINY, *overrides]).stage, "stage")


def conditions(stage: StudentDMDStage, batch: int, chunks: int, seed: int = 0) -> ClipConditions:
    generator = torch.Generator().manual_seed(seed)
    waveform = torch.randn(batch, (1 + 8 * (chunks - 1)) * 640, generator=generator) * 0.1
    return ClipConditions(
        latents=torch.randn(batch, CHANNELS, chunks, *GRID, generator=generator),
        ref=torch.randn(batch, CHANNELS, 1, *GRID, generator=generator),
        audio=stage.model.audio_encoder(waveform, chunks),
        waveform=waveform,
    )


def test_dmd_maths_gradient_is_the_x0_difference_and_reaches_x_through_the_surrogate():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 1, 2, 2, generator=generator, requires_grad=True)
    real, fake = torch.randn(2, 3, 1, 2, 2, generator=generator), torch.randn(2, 3, 1, 2, 2, generator=generator)
    raw = dmd_gradient(x, real, fake, normalise=False)
    torch.testing.assert_close(raw, fake - real)
    dmd_loss(x, raw).backward()
    torch.testing.assert_close(x.grad, raw / x.numel())
    normalised = dmd_gradient(x, real, fake)
    scale = (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(normalised, (fake - real) / scale)
    assert torch.equal(dmd_gradient(x, real, real), torch.zeros_like(raw)), "critic == teacher: no gradient"


def test_the_critic_starts_as_the_teacher_and_is_a_trainable_submodule():
    stage = tiny_stage()
    teacher = stage.teacher.model.state_dict()
    critic = stage.critic.state_dict()
    assert critic.keys() == teacher.keys() and all(torch.equal(critic[k], teacher[k]) for k in teacher)
    critic_ids = set(map(id, stage.critic.parameters()))
    assert critic_ids <= set(map(id, stage.parameters())), "a submodule: saved and wrapped with the stage"
    assert not critic_ids & set(map(id, stage.teacher.model.parameters())), "its own tensors, not the teacher's"
    assert any(k.startswith("critic.") for k in stage.state_dict())
    assert not stage.critic.dit.null_audio.requires_grad and not stage.critic.dit.null_ref.requires_grad, "unguided"
    assert stage.critic.training and all(
        p.requires_grad for n, p in stage.critic.named_parameters() if not n.startswith(("dit.null_audio", "dit.null_ref"))
    )


@pytest.mark.parametrize("normalise", [True, False])
def test_dmd_gradient_is_zero_when_the_critic_is_the_unguided_teacher(normalise):
    stage = tiny_stage(f"stage.dmd.normalise={normalise}")
    stage.teacher.config.guidance = GuidanceScales(audio=1.0, ref=1.0)
    for exit_step in range(4):
        cond = conditions(stage, 2, 3)  # fresh audio tokens: each backward frees the student's graph
        asd = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(exit_step), StepChoices(exit_step, (False, False)))
        out = stage.dmd_generator_loss(cond, asd, torch.Generator().manual_seed(10 + exit_step))
        assert out.x0_real.abs().max() > 0
        # Same weights and inputs: equal to float32 round-off (measured max |grad| ~4e-7, normalised or not,
        # against O(1) with guidance on; the teacher's and the critic's forwards differ only in kernel order).
        assert out.grad.abs().max().item() < 1e-5, (exit_step, out.grad.abs().max().item())
        assert out.loss.item() < 1e-12
        stage.model.zero_grad(set_to_none=True)
        out.loss.backward()
        grads = [p.grad for p in stage.model.parameters() if p.grad is not None]
        assert grads and max(g.abs().max().item() for g in grads) < 1e-7, "the DMD term alone moves nothing"
    # With guidance (the real score is the guided teacher) the gradient is not zero.
    stage.teacher.config.guidance = GuidanceScales(audio=3.5, ref=1.0)
    asd = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(0), StepChoices(1, (False, False)))
    guided = stage.dmd_generator_loss(cond, asd, torch.Generator().manual_seed(1)).grad.abs().max().item()
    assert guided > 1e-2, guided


def test_renoised_window_replaces_only_the_current_chunk():
    stage = tiny_stage()
    cond = conditions(stage, 2, 3)
    asd = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(0), StepChoices(2, (False, False)))
    x, noise = torch.randn_like(asd.x_t), torch.randn_like(asd.x_t)
    s = torch.tensor([0.3, 0.7])
    window = renoised_window(asd.window, x, noise, s)
    cur = window.current
    torch.testing.assert_close(window.current_latents, (1 - s.view(2, 1, 1, 1, 1)) * x + s.view(2, 1, 1, 1, 1) * noise)
    torch.testing.assert_close(window.current_times, s[:, None])
    keep = [i for i in range(window.latents.shape[2]) if not cur.start <= i < cur.stop]
    torch.testing.assert_close(window.latents[:, :, keep], asd.window.latents[:, :, keep], rtol=0, atol=0)


def test_no_gradient_reaches_the_teacher_and_the_critic_learns_only_in_its_own_step():
    stage = tiny_stage()
    cond = conditions(stage, 2, 3)
    asd = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(0), StepChoices(1, (False, False)))
    out = stage.dmd_generator_loss(cond, asd, torch.Generator().manual_seed(1))
    (asd.loss + out.loss).backward()
    assert all(p.grad is None and not p.requires_grad for p in stage.teacher.model.parameters())
    assert not stage.teacher.model.training
    assert all(p.grad is None for p in stage.critic.parameters()), "the critic is fixed in the generator step"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.model.parameters())
    stage.model.zero_grad(set_to_none=True)
    critic = stage.critic_loss(cond, out.x, out.window, torch.Generator().manual_seed(2))
    critic.backward()
    assert all(p.grad is None for p in stage.teacher.model.parameters())
    assert all(p.grad is None for p in stage.model.parameters()), "the critic loss sees the student's sample detached"
    trainable = [p for p in stage.critic.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable), "every trainable critic parameter gets a gradient (DDP)"


def test_the_validator_refuses_deepspeed_and_trainer_clipping_for_this_stage():
    cfg = compose("train", [*TINY, "strategy=deepspeed_zero2", "trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match="steps 2 optimizers .* accepts one. Use strategy=ddp or strategy=fsdp"):
        validate_train_config(cfg)
    cfg = compose("train", [*TINY, "trainer.gradient_clip_val=1.0"])
    with pytest.raises(ConfigError, match="optimizes manually .* set trainer.gradient_clip_val=null"):
        validate_train_config(cfg)


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    teacher = instantiate_node(compose("train", ["experiment=tiny_teacher", "data.cfg.root=unused"]).stage, "stage")
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    meta = {"stage": "teacher", "config": teacher.identity_config(), "version": __version__}
    torch.save({"state_dict": teacher.state_dict(), META_KEY: meta}, path)
    return path, teacher


def test_tiny_student_dmd_trains_both_optimizers_and_counts_generator_steps(tmp_path, tiny_shards, teacher_checkpoint):
    path, teacher = teacher_checkpoint
    cfg = compose(
        "train",
        [
            "experiment=tiny_student_dmd",
            f"data.cfg.root={tiny_shards}",
            f"run_dir={tmp_path}",
            f"init_from={path}",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "checkpoint.every_n_steps=2",
            "trainer.log_every_n_steps=1",
            "stage.optim.warmup_steps=1",
            "stage.validation.stream_chunks=4",
            "stage.dmd.critic_steps=3",
        ],
    )
    validate_train_config(cfg)
    result = train(cfg)
    last = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2, "global_step counts generator steps only"
    assert last[META_KEY]["stage"] == "student_dmd"
    assert {k.split(".")[0] for k in last["state_dict"]} == {"model", "ema", "critic"}, "no teacher, no VAE"
    gen_state, critic_state = last["optimizer_states"]
    gen_steps = {float(s["step"]) for s in gen_state["state"].values()}
    critic_steps = {float(s["step"]) for s in critic_state["state"].values()}
    assert gen_steps == {2.0} and critic_steps == {6.0}, (gen_steps, critic_steps)  # 2 x critic_steps=3
    ema_teacher = teacher.ema.module.state_dict()
    moved = [k for k, v in ema_teacher.items() if not torch.equal(last["state_dict"][f"critic.{k}"], v)]
    assert moved, "the critic trained away from the teacher's weights"
    header = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/asd_loss", "train/dmd_loss", "train/critic_loss", "val/asd_loss"):
        assert key in header, key
