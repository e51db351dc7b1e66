"""The streaming student's objectives (DESIGN §4.3): Asynchronous Streaming Distillation, teacher-forced flow
matching and ODE regression, and the random choices of one step. ``stages/student.py`` keeps the Lightning
hooks and builds a ``StudentObjective`` from its state (``StudentStage.objective()``); the maths are here.

One ASD step, on a clip of C chunks (C >= W + 2 + future_chunks, so the current chunk k = C - 1 -
future_chunks has a full window and chunk 0 has been evicted: the positions a long stream sees):

1. Draw the step's control choices on rank 0 and broadcast them (``rest_lightning.distributed``): the
   exit step of the current chunk and, per context chunk, own rollout or ground truth (``stage.asd.context``:
   ``rollout``, ``ground_truth`` or a ``curriculum`` from teacher forcing to self-rollout). All ranks then
   run the same number of forwards (FSDP / ZeRO-3 gather weights in every one).
2. Roll the student out chunk by chunk through an ``IDContextCache`` exactly as the streaming generator
   does (``streaming/rollout.py``; few-step sampler from fresh noise; a clean pass at t = 0 writes the chunk's
   keys/values), without gradients.
3. On chunk k, run the sampler without gradients up to the exit step (``random``, Self-Forcing, or
   ``last``), then one forward *with* gradients (ID-Sink recomputed with gradients too) at the exit
   step's input ``x_t``.
4. The frozen teacher (``frozen_teacher.py``) gets the window ``diffusion/asd.py: teacher_window``
   (the student's own outputs at ``teacher_context_time``, chunk k at the student's ``x_t``, future chunks
   noisier or absent) and gives the target (``trajectory`` by default, ``velocity`` or ``x0``).
5. Loss = ``asd.weight`` * ASD regression + ``flow_matching.weight`` * teacher-forced flow matching of the
   block-causal student on the ground-truth clip + ``ode_init.weight`` * ODE regression on the teacher's
   trajectories (read from ``batch.ode`` when the shards carry them, else computed online from the teacher).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from rest_lightning.conditioning import ClipConditions
from rest_lightning.diffusion.asd import (
    ASD_TARGETS,
    CONTEXT_SOURCES,
    TeacherWindow,
    asd_regression_loss,
    asd_target,
    ground_truth_context_probability,
    ode_regression_inputs,
    ode_trajectory,
    teacher_window,
)
from rest_lightning.diffusion.flow import flow_matching_loss, per_frame_mse, x0_from_velocity
from rest_lightning.diffusion.losses import draw_flow_matching
from rest_lightning.diffusion.samplers import FewStepSampler
from rest_lightning.diffusion.schedules import AsyncNoiseSchedule, IndependentSchedule
from rest_lightning.distributed import broadcast_from_rank_zero
from rest_lightning.frozen_teacher import FrozenTeacher
from rest_lightning.models.attention import AttentionPattern, WindowKV
from rest_lightning.models.denoiser import AudioVideoDenoiser
from rest_lightning.models.dit import DiTConfig
from rest_lightning.streaming.cache import CacheConfig, IDContextCache
from rest_lightning.streaming.rollout import ChunkRollout, cache_shape, chunk_noise


@dataclass
class ASDConfig:
    """``stage.asd`` (module doc)."""

    weight: float = 1.0  # 0 = no ASD (the teacher-forced ablation); the teacher is then not loaded
    target: Literal["trajectory", "velocity", "x0"] = "trajectory"  # DESIGN §4.3 default
    trajectory_steps: int = 8  # design choice: teacher Euler steps from the student's t to 0
    context: Literal["rollout", "ground_truth", "curriculum"] = "rollout"  # Self-Forcing: own rollout
    curriculum_steps: int = 1000  # design choice: ground truth -> rollout over this many steps
    exit_step: Literal["random", "last"] = "random"  # Self-Forcing: random exit step
    teacher_past_chunks: int | None = None  # past chunks the teacher sees; None = all rolled out
    teacher_context_time: float = 0.05  # design choice: the student's past, lightly noised, for the teacher
    future_chunks: int = 1  # design choice: ground-truth chunks after the current one (0 = absent)
    future_step: float = 0.25  # design choice: each future chunk this much noisier (staggered, capped at 1)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"stage.asd.weight={self.weight} must be >= 0")
        if self.target not in ASD_TARGETS:
            raise ValueError(f"stage.asd.target={self.target!r} is not one of {', '.join(ASD_TARGETS)}")
        if self.context not in CONTEXT_SOURCES:
            raise ValueError(f"stage.asd.context={self.context!r} is not one of {', '.join(CONTEXT_SOURCES)}")
        if self.exit_step not in ("random", "last"):
            raise ValueError(f"stage.asd.exit_step={self.exit_step!r} is not one of random, last")
        if self.trajectory_steps < 1 or self.curriculum_steps < 1:
            raise ValueError("stage.asd.trajectory_steps and stage.asd.curriculum_steps must be >= 1")
        if self.teacher_past_chunks is not None and self.teacher_past_chunks < 0:
            raise ValueError(f"stage.asd.teacher_past_chunks={self.teacher_past_chunks} must be >= 0 or null")
        if not 0.0 <= self.teacher_context_time < 1.0 or self.future_chunks < 0 or self.future_step < 0:
            raise ValueError(
                "stage.asd needs teacher_context_time in [0, 1), future_chunks >= 0 and future_step >= 0; got "
                f"{self.teacher_context_time}, {self.future_chunks}, {self.future_step}"
            )


@dataclass
class FlowMatchingConfig:
    """``stage.flow_matching``: the ground-truth (teacher-forced) flow-matching term."""

    weight: float = 0.0  # design choice: off beside ASD; 1 in student_no_asd
    schedule: AsyncNoiseSchedule = field(default_factory=IndependentSchedule)  # Diffusion Forcing

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"stage.flow_matching.weight={self.weight} must be >= 0")


@dataclass
class ODEInitConfig:
    """``stage.ode_init``: ODE regression (CausVid / Self-Forcing warm start) on the teacher's trajectories."""

    weight: float = 0.0  # 1 in student_ode_init (alone), 0 beside ASD
    steps_per_level: int = 4  # design choice: teacher Euler steps between two student levels (16 in all)
    # True: the trajectories come only from the shards (batch.ode, `rest-prep mode=ode`); no teacher is loaded
    # unless ASD needs it. False: batch.ode when present, else computed online from the frozen teacher.
    from_shards: bool = False

    def __post_init__(self) -> None:
        if self.weight < 0 or self.steps_per_level < 1:
            raise ValueError(
                f"stage.ode_init needs weight >= 0 and steps_per_level >= 1, got {self.weight}, {self.steps_per_level}"
            )


@dataclass(frozen=True)
class StepChoices:
    """The random choices all ranks share in one step: the exit step and, per context chunk, whether it
    is the ground truth (True) or the student's own rollout."""

    exit_step: int
    ground_truth: tuple[bool, ...]


@dataclass(frozen=True)
class AsdOutput:
    """One ASD loss: ``loss`` scalar; ``outputs`` the context chunks as the student produced them
    ``(B, C, k * cf, h, w)``; the exit step's input ``x_t``, time ``t (B, cf)`` and the student's
    velocity there; the teacher's ``target`` and ``window``."""

    loss: Tensor
    outputs: Tensor | None
    x_t: Tensor
    t: Tensor
    velocity: Tensor
    target: Tensor
    window: TeacherWindow


@dataclass(frozen=True)
class StudentLoss:
    loss: Tensor
    asd: AsdOutput | None
    flow_matching: Tensor | None
    ode: Tensor | None


def rollout_seed(generator: torch.Generator) -> int:
    """The seed of one ASD step's rollout, drawn from the step's ``generator``: chunk c of the rollout uses
    ``chunk_noise(seed, c)``, the noise a ``StreamingGenerator`` with ``StreamConfig.seed = seed`` uses."""
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


@dataclass(frozen=True)
class StudentObjective:
    """The student's losses over its configuration (``StudentStage.objective()`` builds one from the stage's
    state on every call: the stage owns the state, this holds references only)."""

    dit_config: DiTConfig
    chunk_frames: int
    sampler: FewStepSampler
    pattern: AttentionPattern
    cache: CacheConfig
    asd: ASDConfig
    flow_matching: FlowMatchingConfig
    ode_init: ODEInitConfig
    teacher: FrozenTeacher | None

    def step_choices(self, num_context: int, step: int, generator: torch.Generator) -> StepChoices:
        """Draw the exit step and the context sources from ``generator`` (so each rank draws its own) and
        keep rank 0's (``broadcast_from_rank_zero``; single-process it is the draw itself)."""
        levels = len(self.sampler.timesteps)
        exit_step = torch.randint(levels, (1,), generator=generator, device=generator.device)
        if self.asd.exit_step == "last":
            exit_step.fill_(levels - 1)
        p_truth = ground_truth_context_probability(self.asd.context, step, self.asd.curriculum_steps)
        truth = torch.rand(num_context, generator=generator, device=generator.device) < p_truth
        shared = broadcast_from_rank_zero(torch.cat([exit_step, truth.long()]))
        return StepChoices(int(shared[0]), tuple(bool(v) for v in shared[1:].tolist()))

    def new_cache(self, latents: Tensor) -> IDContextCache:
        shape = cache_shape(self.dit_config, latents.shape[0], latents.shape[3:], self.chunk_frames)
        return IDContextCache(self.cache, shape, latents.dtype, latents.device)

    def rollout(self, model: AudioVideoDenoiser) -> ChunkRollout:
        """The streaming rollout (``streaming/rollout.py``) of ``model``: unguided, as the student streams."""
        return ChunkRollout(model.dit.forward_chunk, self.sampler, self.pattern, self.cache.use_context_cache)

    def chunk_velocity(self, model: AudioVideoDenoiser, x: Tensor, t: float, audio: Tensor, windows: list[WindowKV]) -> Tensor:
        times = torch.full((x.shape[0], self.chunk_frames), t, device=x.device)
        return model.dit.forward_chunk(x, times, audio, windows, self.pattern).velocity

    def asd_loss(
        self, model: AudioVideoDenoiser, cond: ClipConditions, generator: torch.Generator, choices: StepChoices
    ) -> AsdOutput:
        """The ASD loss of ``model`` (the student) on ``cond`` (module doc, steps 2-4). Draws from
        ``generator``, in order: the rollout's seed (``rollout_seed``; each chunk's noise and re-noising come
        from ``chunk_noise(seed, c)`` as in a stream with that seed), then the teacher window's noise."""
        assert self.teacher is not None, "asd_loss needs the frozen teacher (stage.asd.weight > 0)"
        cf, levels = self.chunk_frames, list(self.sampler.timesteps)
        x0 = cond.latents
        num_chunks = self.pattern.num_chunks(x0.shape[2])
        current = num_chunks - 1 - self.asd.future_chunks
        if current < 0:
            raise ValueError(f"a clip of {num_chunks} chunks has no current chunk with stage.asd.future_chunks="
                             f"{self.asd.future_chunks}")
        frames = lambda c: slice(c * cf, (c + 1) * cf)  # noqa: E731  chunk c's latent frames
        ref = cond.ref if self.cache.use_id_sink else None
        cache, rollout = self.new_cache(x0), self.rollout(model)
        seed = rollout_seed(generator)  # chunk c's noise = chunk_noise(seed, c): the stream's, given its seed
        outputs = []
        with torch.no_grad():
            if ref is not None:
                cache.set_id_sink(model.dit.encode_id_sink(ref))
            for c in range(current + 1):  # context chunks in full, the current one up to the exit step
                audio, windows = cond.audio[:, frames(c)], cache.read()
                if c < current and choices.ground_truth[c]:
                    out = x0[:, :, frames(c)]
                else:
                    noise, chunk_generator = chunk_noise(seed, c, x0[:, :, frames(c)].shape, x0.device, x0.dtype)
                    stop = choices.exit_step if c == current else None
                    out = rollout.sample(noise, audio, windows, chunk_generator, stop_at=stop)
                if c < current:
                    outputs.append(out)
                    rollout.write(cache, out, audio, windows)
            x = out  # the current chunk's input at the exit step
        # The exit step with gradients: the ID-Sink is recomputed so the reference pathway learns too.
        if ref is not None:
            sink = model.dit.encode_id_sink(ref)
            windows = [WindowKV(s, w.context, w.num_context_chunks) for s, w in zip(sink, windows, strict=True)]
        t_exit = levels[choices.exit_step]
        velocity = self.chunk_velocity(model, x, t_exit, cond.audio[:, frames(current)], windows)
        t = torch.full((x.shape[0], cf), t_exit, device=x.device)
        past = torch.cat(outputs, dim=2) if outputs else None
        num_past = current if self.asd.teacher_past_chunks is None else min(current, self.asd.teacher_past_chunks)
        future_end = (current + 1 + self.asd.future_chunks) * cf
        teacher = self.teacher
        with teacher.on_device(x.device):
            window = teacher_window(
                past[:, :, (current - num_past) * cf :] if past is not None and num_past > 0 else None,
                x,
                t[:, 0],
                x0[:, :, (current + 1) * cf : future_end] if self.asd.future_chunks > 0 else None,
                self.asd.teacher_context_time,
                self.asd.future_step,
                cf,
                generator,
            )
            window_frames = slice((current - num_past) * cf, future_end)
            audio_teacher = teacher.audio_tokens(cond.waveform, x0.shape[2])[:, window_frames]
            denoise = teacher.denoiser(audio_teacher, cond.ref)
            target = asd_target(self.asd.target, denoise, window, self.asd.trajectory_steps)
        loss = asd_regression_loss(self.asd.target, velocity, x, t, target.to(velocity.dtype))
        return AsdOutput(loss, past, x, t, velocity, target, window)

    def flow_matching_loss(self, model: AudioVideoDenoiser, cond: ClipConditions, generator: torch.Generator) -> Tensor:
        """Teacher-forced flow matching of the block-causal student on the ground-truth clip."""
        draw = draw_flow_matching(cond.latents, self.flow_matching.schedule, self.chunk_frames, generator)
        ref = cond.ref if self.cache.use_id_sink else None
        v = model(draw.x_t, draw.t, cond.audio, ref, self.pattern)
        return flow_matching_loss(v, draw.target)

    def ode_loss(
        self, model: AudioVideoDenoiser, cond: ClipConditions, generator: torch.Generator, stored: Tensor | None = None
    ) -> Tensor:
        """ODE regression: the teacher's guided ODE from fresh noise over the whole clip, recorded at the
        student's levels (``ode_trajectory``); each chunk takes the state at a random level (CausVid) and the
        block-causal student regresses its x0 onto the ODE's end point. Draws: noise, then the levels.

        ``stored`` (``batch.ode``, ``(B, S + 1, C, F, h, w)`` as ``data_prep/ode_trajectories.py`` writes it):
        the trajectory is read from it instead (no teacher call, no noise drawn; only the levels are drawn).
        """
        x0, levels = cond.latents, list(self.sampler.timesteps)
        if stored is not None:
            expected = (x0.shape[0], len(levels) + 1, *x0.shape[1:])
            if tuple(stored.shape) != expected:
                raise ValueError(
                    f"batch.ode has shape {tuple(stored.shape)}, expected {expected} (B, S + 1, C, F, h, w) for the "
                    f"student's {len(levels)} levels: write the shards with ode.timesteps = stage.sampler.timesteps"
                )
            trajectory = stored.to(device=x0.device, dtype=torch.float32).transpose(0, 1)  # (S + 1, B, C, F, h, w)
        else:
            if self.teacher is None:
                raise ValueError(
                    "stage.ode_init.from_shards=true but the batch carries no ODE trajectories: train on shards "
                    "written by `rest-prep mode=ode` with data.cfg.mode=latent"
                )
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            with self.teacher.on_device(x0.device):
                denoise = self.teacher.denoiser(self.teacher.audio_tokens(cond.waveform, x0.shape[2]), cond.ref)
                trajectory = ode_trajectory(denoise, noise.float(), levels, self.ode_init.steps_per_level)
        num_chunks = self.pattern.num_chunks(x0.shape[2])
        index = torch.randint(len(levels), (x0.shape[0], num_chunks), generator=generator, device=x0.device)
        x_t = ode_regression_inputs(trajectory, index, self.chunk_frames).to(x0.dtype)
        t = torch.tensor(levels, device=x0.device)[index].repeat_interleave(self.chunk_frames, dim=1)
        ref = cond.ref if self.cache.use_id_sink else None
        v = model(x_t, t, cond.audio, ref, self.pattern)
        return per_frame_mse(x0_from_velocity(x_t, v, t), trajectory[-1]).mean()

    def training_loss(
        self,
        model: AudioVideoDenoiser,
        cond: ClipConditions,
        generator: torch.Generator,
        choices: StepChoices,
        ode: Tensor | None = None,
    ) -> StudentLoss:
        """The step's weighted losses; ``ode`` = the batch's stored teacher trajectories (``batch.ode``) or None."""
        total = torch.zeros((), device=cond.latents.device)
        asd = fm = ode_term = None
        if self.asd.weight > 0:
            asd = self.asd_loss(model, cond, generator, choices)
            total = total + self.asd.weight * asd.loss
        if self.flow_matching.weight > 0:
            fm = self.flow_matching_loss(model, cond, generator)
            total = total + self.flow_matching.weight * fm
        if self.ode_init.weight > 0:
            ode_term = self.ode_loss(model, cond, generator, ode)
            total = total + self.ode_init.weight * ode_term
        return StudentLoss(total, asd, fm, ode_term)

    def check_clip_length(self, num_frames: int) -> int:
        """Chunks of a training clip; refuses clips too short to reach the positions after eviction."""
        num_chunks = self.pattern.num_chunks(num_frames)
        future = self.asd.future_chunks if self.asd.weight > 0 else 0
        needed = self.pattern.window + 2 + future
        if num_chunks < needed:
            raise ValueError(
                f"training clips hold {num_chunks} chunks but the student needs C >= W + 2 + future_chunks = "
                f"{needed} (W={self.pattern.window}) so that it trains on the window positions a long stream "
                "sees after eviction; raise data.cfg.latent_frames or lower stage.cache.window"
            )
        return num_chunks


__all__ = [
    "ASDConfig",
    "AsdOutput",
    "FlowMatchingConfig",
    "ODEInitConfig",
    "StepChoices",
    "StudentLoss",
    "StudentObjective",
    "rollout_seed",
]
