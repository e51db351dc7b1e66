"""Stage 3 with DMD-style distribution matching and a trainable critic (DESIGN §4.3, the optional term;
DMD / DMD2, CausVid, Self-Forcing). Maths: ``diffusion/dmd.py``.

``StudentDMDStage`` is the ASD student (``stages/student.py``, unchanged) plus:

- a **critic** ("fake score"): a second ``AudioVideoDenoiser`` initialised from the frozen teacher's
  weights, a trainable submodule (``critic.*``: saved in checkpoints, wrapped by DDP / FSDP), unguided,
  bidirectional over the teacher's window, with its own AdamW (``stage.dmd``: lr, betas, weight decay);
  its guidance null tokens are frozen (never used);
- the **generator step**: the ASD rollout of ``StudentStage.asd_loss`` gives the student's one-step x0 ``x``
  on the current chunk (with gradients) and the teacher's window. ``x`` is noised again at ``s ~ U[min_t,
  max_t]``; the guided frozen teacher (real score) and the critic (fake score, no gradients) predict
  velocities there, compared in x0 space (``x0 = x_s - s v``); the DMD gradient ``x0_fake - x0_real``
  (normalised) reaches the student through ``dmd_loss``. Loss = the student's losses (ASD, ...) +
  ``dmd.weight`` * DMD;
- the **critic steps**: ``dmd.critic_steps`` flow-matching (denoising) updates of the critic per generator
  step, on the student's *detached* x0 noised at ``s ~ U[min_t, max_t]`` inside the same window.

Two optimizers, so manual optimization (``num_optimizers = 2``, ``manual_optimization = True``): the config
validator refuses Lightning's DeepSpeed strategy and ``trainer.gradient_clip_val`` (the stage clips each
optimizer's gradients itself, ``stage.dmd.grad_clip``). Step counting as ``stages/vae.py``:
``trainer.global_step`` counts *generator* steps; the critic steps its raw torch optimizer, so Lightning
does not count it. ``has_unused_parameters``: the critic takes no gradient in the generator backward and
the student none in the critic's, so DDP looks for unused parameters.

DMD needs the ASD rollout (``stage.asd.weight > 0``). ``init_from`` a teacher or a (plain) student checkpoint
leaves the critic at the teacher's weights; a ``student_dmd`` checkpoint restores it too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rest_lightning.checkpoint import load_user_state
from rest_lightning.conditioning import ClipConditions
from rest_lightning.data.batch import ClipBatch
from rest_lightning.diffusion.asd import TeacherWindow
from rest_lightning.diffusion.dmd import (
    critic_flow_matching_loss,
    dmd_gradient,
    dmd_loss,
    dmd_times,
    renoised_window,
)
from rest_lightning.diffusion.flow import x0_from_velocity
from rest_lightning.distillation import AsdOutput
from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.denoiser import AudioVideoDenoiser
from rest_lightning.stages.optim import build_optimizer, warmup_cosine
from rest_lightning.stages.student import TRAIN_STREAM, StudentStage

CRITIC_STREAM = 2  # generator stream of the DMD noise (TRAIN_STREAM 0 and VAL_STREAM 1 are the student's)


@dataclass
class DMDConfig:
    """``stage.dmd``."""

    weight: float = 1.0  # design choice: DMD beside ASD at equal weight
    critic_steps: int = 5  # Self-Forcing / DMD2 dfake_gen_update_ratio = 5 critic updates per generator update
    min_t: float = 0.02  # DMD2 min_step_percent
    max_t: float = 0.98  # DMD2 max_step_percent
    normalise: bool = True  # DMD: divide the gradient per sample by mean |x - x0_real|
    lr: float = 4.0e-7  # Self-Forcing lr_critic (its generator: 2e-6)
    betas: tuple[float, float] = (0.0, 0.999)  # Self-Forcing critic beta1 = 0 (DMD2 GAN-style Adam)
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float | None = 10.0  # Self-Forcing max_grad_norm; per optimizer (manual optimization)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.weight < 0 or self.critic_steps < 1 or self.lr <= 0:
            raise ValueError(
                f"stage.dmd needs weight >= 0, critic_steps >= 1 and lr > 0; got {self.weight}, "
                f"{self.critic_steps}, {self.lr}"
            )
        if not 0.0 < self.min_t <= self.max_t <= 1.0:
            raise ValueError(f"stage.dmd needs 0 < min_t <= max_t <= 1, got {self.min_t}, {self.max_t}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"stage.dmd.grad_clip={self.grad_clip} must be > 0 or null")


@dataclass(frozen=True)
class DMDOutput:
    """One DMD generator term: ``loss`` (surrogate scalar), the student's sample ``x`` (with graph), the
    DMD ``grad`` w.r.t. it, the real / fake x0 estimates at time ``s (B,)`` and the renoised ``window``."""

    loss: Tensor
    x: Tensor
    grad: Tensor
    x0_real: Tensor
    x0_fake: Tensor
    s: Tensor
    window: TeacherWindow


class StudentDMDStage(StudentStage):
    stage_name = "student_dmd"
    init_from_stages = ("teacher", "student")
    num_optimizers = 2
    manual_optimization = True
    has_unused_parameters = True  # module doc

    def __init__(self, *args: Any, dmd: DMDConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = not self.manual_optimization
        self.dmd = dmd if dmd is not None else DMDConfig()
        if self.teacher is None or self.asd.weight <= 0:
            raise ValueError("stage.dmd needs the ASD rollout and the frozen teacher: set stage.asd.weight > 0")
        # The critic starts as the teacher (the fake score of a student initialised from it).
        self.critic: AudioVideoDenoiser = copy.deepcopy(self.teacher.model).float().train().requires_grad_(True)
        self.critic.dit.null_audio.requires_grad_(False)  # unguided: never used, frozen (DDP)
        self.critic.dit.null_ref.requires_grad_(False)
        self.critic_pattern = AttentionPattern.bidirectional()

    def identity_config(self) -> dict[str, Any]:
        return {**super().identity_config(), "critic": True}

    def load_init_from(self, path: str | Path, *, strict: bool = True, key_map: dict[str, str] | None = None) -> None:
        """A ``student_dmd`` file loads whole (critic included); a teacher or student file loads as in
        ``StudentStage`` and the critic keeps the teacher's weights it got in ``__init__``."""
        _, meta = load_user_state(path)
        if meta.get("stage") == self.stage_name:
            super().load_init_from(path, strict=strict, key_map=key_map)
            return
        critic = self._modules.pop("critic")
        try:
            super().load_init_from(path, strict=strict, key_map=key_map)
        finally:
            self.critic = critic

    # --- DMD maths wiring ----------------------------------------------------------------------

    def _window_audio(self, window: TeacherWindow, num_frames: int) -> slice:
        """The clip's latent frames the teacher's window covers (as ``StudentStage.asd_loss`` builds it)."""
        cf = self.chunk_frames
        current = self.pattern.num_chunks(num_frames) - 1 - self.asd.future_chunks
        return slice((current - window.num_past) * cf, (current + 1 + window.num_future) * cf)

    def critic_velocity(self, cond: ClipConditions, window: TeacherWindow) -> Tensor:
        """The critic's (unguided) velocity of the current chunk over ``window``, in the graph of its
        parameters unless called under ``no_grad``."""
        frames = self._window_audio(window, cond.latents.shape[2])
        dtype = next(self.critic.parameters()).dtype
        audio = self.critic.audio_encoder(cond.waveform, cond.latents.shape[2])[:, frames]
        v = self.critic(window.latents.to(dtype), window.times, audio.to(dtype), cond.ref.to(dtype), self.critic_pattern)
        return v[:, :, window.current].float()

    def dmd_generator_loss(self, cond: ClipConditions, asd: AsdOutput, generator: torch.Generator) -> DMDOutput:
        """The DMD term on the student's one-step x0 of the current chunk (module doc). Draws ``s`` then the noise."""
        assert self.teacher is not None
        x = x0_from_velocity(asd.x_t, asd.velocity, asd.t)  # (B, C, cf, h, w), with the student's graph
        s = dmd_times(x.shape[0], self.dmd.min_t, self.dmd.max_t, generator, x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        window = renoised_window(asd.window, x.detach(), noise, s)
        frames = self._window_audio(window, cond.latents.shape[2])
        s_frames = window.current_times
        with self.teacher.on_device(x.device):
            audio_teacher = self.teacher.audio_tokens(cond.waveform, cond.latents.shape[2])[:, frames]
            v_real = self.teacher.denoiser(audio_teacher, cond.ref)(window.latents, window.times)[:, :, window.current]
        with torch.no_grad():
            v_fake = self.critic_velocity(cond, window)
        x_s = window.current_latents.float()
        x0_real = x0_from_velocity(x_s, v_real.float(), s_frames)
        x0_fake = x0_from_velocity(x_s, v_fake, s_frames)
        grad = dmd_gradient(x, x0_real, x0_fake, self.dmd.normalise)
        return DMDOutput(dmd_loss(x, grad), x, grad, x0_real, x0_fake, s, window)

    def critic_loss(self, cond: ClipConditions, x: Tensor, window: TeacherWindow, generator: torch.Generator) -> Tensor:
        """Flow matching of the critic on the student's detached sample ``x`` at a fresh ``s`` and noise."""
        x = x.detach()
        s = dmd_times(x.shape[0], self.dmd.min_t, self.dmd.max_t, generator, x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        v = self.critic_velocity(cond, renoised_window(window, x, noise, s))
        return critic_flow_matching_loss(v, x, noise)

    # --- Lightning hooks ------------------------------------------------------------------------

    def training_step(self, batch: ClipBatch, batch_idx: int) -> None:
        opt_gen, opt_critic = self.optimizers()
        sched_gen, sched_critic = self.lr_schedulers()
        step = self.global_step
        size = len(batch)
        cond = self.conditions(batch)
        objective = self.objective()
        num_chunks = objective.check_clip_length(cond.latents.shape[2])
        generator = self._generator(TRAIN_STREAM, step)
        dmd_generator = self._generator(CRITIC_STREAM, step)
        choices = objective.step_choices(max(0, num_chunks - 1 - self.asd.future_chunks), step, generator)

        # Generator (student) step: the student's losses + the DMD term; the critic gets no gradient.
        self.toggle_optimizer(opt_gen)
        out = objective.training_loss(self.model, cond, generator, choices, batch.ode)
        assert out.asd is not None
        dmd = self.dmd_generator_loss(cond, out.asd, dmd_generator)
        loss = out.loss + self.dmd.weight * dmd.loss
        opt_gen.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(opt_gen, gradient_clip_val=self.dmd.grad_clip, gradient_clip_algorithm="norm")
        opt_gen.step()  # LightningOptimizer: global_step += 1
        sched_gen.step()
        self.untoggle_optimizer(opt_gen)
        if self.ema is not None:
            self.ema.update(self.model)  # manual optimization: Lightning calls no optimizer_step hook

        # Critic steps on the student's detached sample (raw optimizer: global_step counts generator steps).
        sample = dmd.x.detach()
        window = out.asd.window
        self.toggle_optimizer(opt_critic)
        critic_losses = []
        for _ in range(self.dmd.critic_steps):
            critic = self.critic_loss(cond, sample, window, dmd_generator)
            opt_critic.zero_grad(set_to_none=True)
            self.manual_backward(critic)
            self.clip_gradients(opt_critic, gradient_clip_val=self.dmd.grad_clip, gradient_clip_algorithm="norm")
            opt_critic.optimizer.step()
            sched_critic.step()
            critic_losses.append(critic.detach())
        self.untoggle_optimizer(opt_critic)

        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size)
        self.log("train/asd_loss", out.asd.loss.detach(), batch_size=size)
        self.log("train/exit_step", float(choices.exit_step), batch_size=size)
        self.log("train/dmd_loss", dmd.loss.detach(), batch_size=size)
        self.log("train/dmd_grad_norm", dmd.grad.norm().detach(), batch_size=size)
        self.log("train/critic_loss", torch.stack(critic_losses).mean(), batch_size=size)
        if out.flow_matching is not None:
            self.log("train/flow_matching_loss", out.flow_matching.detach(), batch_size=size)
        if out.ode is not None:
            self.log("train/ode_loss", out.ode.detach(), batch_size=size)
        self.log("train/skipped_samples", float(batch.skipped), reduce_fx="sum", batch_size=size)
        self.log("train/failed_shards", float(batch.failed_shards), reduce_fx="sum", batch_size=size)

    def configure_optimizers(self) -> Any:
        generator = build_optimizer(self.model.parameters(), self.optim_config, self.total_steps())
        cfg, optim = self.dmd, self.optim_config
        trainable = [p for p in self.critic.parameters() if p.requires_grad]
        critic = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        # The critic's schedule counts its own steps (critic_steps per generator step): the same warm-up in
        # generator steps, then constant.
        warmup = optim.warmup_steps * cfg.critic_steps
        critic_sched = torch.optim.lr_scheduler.LambdaLR(critic, lambda step: warmup_cosine(step, warmup, 1, 1.0))
        return [generator["optimizer"], critic], [generator["lr_scheduler"]["scheduler"], critic_sched]


__all__ = ["DMDConfig", "DMDOutput", "StudentDMDStage"]
