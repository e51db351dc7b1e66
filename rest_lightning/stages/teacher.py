"""Stage 2: the bidirectional audio-to-video teacher (DESIGN §4.2).

Per training step: latents (from latent shards, or the frozen VAE's encoding of the video), the
reference latent (the reference image encoded by the frozen VAE as one frame) and the audio tokens; per
latent frame a flow time from the configured ``AsyncNoiseSchedule`` (the teacher trains on asynchronous
schedules so that it can judge a clip whose past is clean and whose present is noisy, which is what ASD
asks of it); audio and reference dropped per sample for classifier-free guidance; the DiT with the
bidirectional pattern regresses the velocity ``noise - x0`` (``diffusion/losses.py``).

One optimizer (AdamW, warm-up then cosine; ``stages/optim.py``), automatic optimization, so DeepSpeed
is allowed. An EMA of the DiT + audio encoder is kept (``ema.module.*``; the student initialises from
it). It is a submodule, which DDP leaves exact; DeepSpeed bf16 casts it to bf16 (small EMA updates are
lost) and ZeRO-3 partitions it, so ``setup`` refuses ZeRO-3 with an EMA. The frozen VAE is not a
submodule (``conditioning.py``): teacher checkpoints hold ``model.*`` and ``ema.module.*`` only.

Randomness: every step draws from a ``torch.Generator`` seeded by (run seed, rank, step), so ranks draw
different times/noise/dropout from one another, a resumed run draws what the uninterrupted run would
have, and validation sees the same noise every epoch (comparable curves).

Validation: the flow-matching error per noise-level bucket (``val/loss_t0.0`` .. ``val/loss_t0.9``, and
``val/loss`` over all), at stratified times so each bucket is visited; and one clip sampled with
``EulerSampler`` under CFG from held-out audio and reference, decoded by the frozen VAE and written with
the clip's audio to ``<run_dir>/media/sample_step*.mp4`` (ground truth | sample), logged to W&B. On a
synthetic corpus the sampled clips are also scored by the SynthTalk metrics (``val/synthtalk_*``,
``stages/val_metrics.py``): the ``sample_clips`` clips of the first batch, or every clip when FID/FVD/Sync
are on (they sample the whole validation set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rest_lightning.conditioning import (
    ClipConditions,
    FrozenVAE,
    clip_conditions,
    guided_denoiser,
    latent_tokens_per_clip,
)
from rest_lightning.data.batch import ClipBatch
from rest_lightning.data.schema import MediaSpec
from rest_lightning.diffusion.flow import flow_matching_loss, per_frame_mse
from rest_lightning.diffusion.guidance import ConditionDropout, GuidanceScales
from rest_lightning.diffusion.losses import (
    FlowMatchingDraw,
    draw_at_times,
    draw_flow_matching,
    loss_by_noise_level,
    noise_level_names,
    stratified_frame_times,
)
from rest_lightning.diffusion.samplers import EulerSampler
from rest_lightning.diffusion.schedules import AsyncNoiseSchedule, IndependentSchedule
from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.audio import AudioConfig, AudioEncoder
from rest_lightning.models.denoiser import AudioVideoDenoiser
from rest_lightning.models.dit import DiTConfig
from rest_lightning.models.pairing import check_pairing
from rest_lightning.models.pretrained import build_dit
from rest_lightning.models.vae import VAEConfig
from rest_lightning.stages.base import RestStage
from rest_lightning.stages.ema import EMA
from rest_lightning.stages.identity import diffusion_identity_config
from rest_lightning.stages.optim import DiffusionOptimConfig, build_optimizer
from rest_lightning.stages.val_metrics import ValMetrics, ValMetricsConfig

log = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM = 0, 1  # generator streams (module doc)


@dataclass
class TeacherValidationConfig:
    """``stage.validation``: per-level loss buckets and the sampled clip."""

    sampler: EulerSampler = field(default_factory=EulerSampler)  # 40 Euler steps (LTX-Video default)
    guidance: GuidanceScales = field(default_factory=GuidanceScales)
    num_level_buckets: int = 10  # design choice: val/loss_t0.0 .. val/loss_t0.9
    sample_clips: int = 1  # clips sampled and written per validation (from the first batch)

    def __post_init__(self) -> None:
        if self.num_level_buckets < 1:
            raise ValueError(f"stage.validation.num_level_buckets={self.num_level_buckets} must be >= 1")
        if self.sample_clips < 0:
            raise ValueError(f"stage.validation.sample_clips={self.sample_clips} must be >= 0")


@dataclass(frozen=True)
class TeacherLoss:
    """One training loss: ``loss`` scalar, per-frame ``errors (B, F)``, the ``draw`` and the dropout masks."""

    loss: Tensor
    errors: Tensor
    draw: FlowMatchingDraw
    drop_audio: Tensor
    drop_ref: Tensor


class TeacherStage(RestStage):
    stage_name = "teacher"

    def __init__(
        self,
        dit: DiTConfig,
        audio: AudioConfig,
        vae: VAEConfig,
        vae_checkpoint: str | None,
        schedule: AsyncNoiseSchedule | None = None,
        condition_dropout: ConditionDropout | None = None,
        optim: DiffusionOptimConfig | None = None,
        validation: TeacherValidationConfig | None = None,
        chunk_frames: int = 1,  # DESIGN §3: a chunk is one latent frame; must match the student's pattern
        metrics: ValMetricsConfig | None = None,
    ) -> None:
        super().__init__()
        check_pairing(dit, vae, audio)
        if chunk_frames < 1:
            raise ValueError(f"stage.chunk_frames={chunk_frames} must be >= 1")
        self.dit_config, self.audio_config, self.vae_config = dit, audio, vae
        self.schedule = schedule if schedule is not None else IndependentSchedule()
        self.condition_dropout = condition_dropout if condition_dropout is not None else ConditionDropout()
        self.optim_config = optim if optim is not None else DiffusionOptimConfig()
        self.validation_config = validation if validation is not None else TeacherValidationConfig()
        self.chunk_frames = chunk_frames
        self.pattern = AttentionPattern.bidirectional()
        self.model = AudioVideoDenoiser(build_dit(dit), AudioEncoder(audio))
        decay = self.optim_config.ema_decay
        self.ema = EMA(self.model, decay) if decay is not None else None
        # A plain attribute, not a submodule: frozen, never saved, never sharded (conditioning.py).
        self.frozen_vae = FrozenVAE.load(vae, vae_checkpoint)
        # Not submodules either: metric networks are neither trained nor saved (val_metrics.py).
        self.val_metrics = ValMetrics(metrics if metrics is not None else ValMetricsConfig(),
                                      MediaSpec(fps=audio.fps, sample_rate=audio.sample_rate))
        # train() seeds before it builds the stage, so this is the run seed, also after a resume.
        self._seed = torch.initial_seed()

    def tokens_per_sample(self, batch: ClipBatch) -> int:
        return latent_tokens_per_clip(batch, self.vae_config)

    def identity_config(self) -> dict[str, Any]:
        return diffusion_identity_config(self.dit_config, self.audio_config, self.vae_config, self.chunk_frames,
                                         self.ema is not None)

    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3 and self.ema is not None:
            raise ValueError(
                "strategy=deepspeed_zero3 partitions the EMA copy, which stages/ema.py updates as whole tensors; "
                "use strategy=deepspeed_zero2 (or ddp/fsdp), or set stage.optim.ema_decay=null"
            )

    # --- training -----------------------------------------------------------------------------

    def _generator(self, stream: int, index: int) -> torch.Generator:
        """A generator for (run seed, rank, stream, index): see the module doc."""
        seed = np.random.SeedSequence([self._seed, self.global_rank, stream, index]).generate_state(1)[0]
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def conditions(self, batch: ClipBatch) -> ClipConditions:
        dtype = next(self.model.dit.parameters()).dtype
        return clip_conditions(batch, self.frozen_vae, self.model.audio_encoder, dtype)

    def training_loss(self, cond: ClipConditions, generator: torch.Generator | None = None) -> TeacherLoss:
        """Flow-matching loss of one batch. Draws, in order: the schedule's per-frame times, the noise
        (``draw_flow_matching``), then the condition-dropout masks, all from ``generator``."""
        x0 = cond.latents
        draw = draw_flow_matching(x0, self.schedule, self.chunk_frames, generator)
        drop_audio, drop_ref = self.condition_dropout.sample(x0.shape[0], generator, x0.device)
        v = self.model(draw.x_t, draw.t, cond.audio, cond.ref, self.pattern, drop_audio, drop_ref)
        errors = per_frame_mse(v, draw.target)
        return TeacherLoss(flow_matching_loss(v, draw.target), errors, draw, drop_audio, drop_ref)

    def training_step(self, batch: ClipBatch, batch_idx: int) -> Tensor:
        out = self.training_loss(self.conditions(batch), self._generator(TRAIN_STREAM, self.global_step))
        size = len(batch)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=size)
        self.log("train/skipped_samples", float(batch.skipped), reduce_fx="sum", batch_size=size)
        self.log("train/failed_shards", float(batch.failed_shards), reduce_fx="sum", batch_size=size)
        return out.loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The EMA follows each optimizer step here, not in on_train_batch_end: Lightning runs the callbacks'
        # on_train_batch_end (where the step's checkpoint is saved) before the module's, so a checkpoint held
        # the EMA of the step before its weights, and an accumulating batch would have moved the EMA too.
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    # --- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        buckets = self.validation_config.num_level_buckets
        self._level_sums = torch.zeros(buckets, device=self.device)
        self._level_counts = torch.zeros(buckets, device=self.device)

    def validation_step(self, batch: ClipBatch, batch_idx: int) -> None:
        # Every rank runs the same forwards whatever its padding (sharded strategies gather weights
        # collectively); padded rows are dropped from the sums afterwards.
        model = self.ema.module if self.ema is not None else self.model
        cond = self.conditions(batch)
        batch_size, _, frames = cond.latents.shape[:3]
        buckets = self.validation_config.num_level_buckets
        generator = self._generator(VAL_STREAM, batch_idx)
        t = stratified_frame_times(
            batch_size, frames, buckets, batch_idx * batch_size * frames, generator, self.device
        )
        draw = draw_at_times(cond.latents, t, generator)
        errors = per_frame_mse(model(draw.x_t, t, cond.audio, cond.ref, self.pattern), draw.target)
        keep = batch.mask.to(self.device)
        sums, counts = loss_by_noise_level(errors[keep], t[keep], buckets)
        self._level_sums += sums
        self._level_counts += counts
        clips = min(self.validation_config.sample_clips, batch_size)
        sampled = torch.zeros_like(keep)  # rows whose clip is sampled (and decoded into fake)
        if self.val_metrics:
            # Metrics need samples of every validation clip: sample the whole batch, write the first ones.
            sample = self.sample(model, cond, generator)
            real = batch.video.to(sample.device) if batch.video is not None else self.frozen_vae.decode(cond.latents)
            fake = self.frozen_vae.decode(sample)
            self.val_metrics.update(fake[keep], real[keep].float().clamp(-1, 1), cond.waveform[keep],
                                    ref=batch.ref[keep])  # identity / csim against the reference it was given
            sampled[:] = True
        elif batch_idx == 0 and clips > 0:
            fake = self.frozen_vae.decode(self.sample(model, cond.select(slice(0, clips)), generator))
            sampled[:clips] = True
        if sampled.any():
            # SynthTalk scores whatever was sampled: every clip with FID/FVD/Sync on, else the written ones.
            rows = sampled & keep
            real = batch.video[rows] if batch.video is not None else None
            # fake holds the first len(fake) rows of the batch: the sampled ones.
            self.val_metrics.update_synthtalk(fake[rows[: len(fake)]], batch, rows, cond.waveform, real=real)
        if batch_idx == 0 and clips > 0 and self.trainer.is_global_zero:
            self._write_sample(batch, cond.select(slice(0, clips)), fake[:clips], keep[:clips])

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_metrics.compute_and_reset(self.device).items():
            self.log(key, value)  # already synced across ranks by the metric
        sums = self.trainer.strategy.reduce(self._level_sums, reduce_op="sum")
        counts = self.trainer.strategy.reduce(self._level_counts, reduce_op="sum")
        if counts.sum() == 0:
            return
        self.log("val/loss", sums.sum() / counts.sum())
        for name, total, count in zip(noise_level_names(len(sums)), sums, counts, strict=True):
            if count > 0:
                self.log(f"val/loss_{name}", total / count)

    @torch.no_grad()
    def sample(
        self, model: AudioVideoDenoiser, cond: ClipConditions, generator: torch.Generator | None
    ) -> Tensor:
        """Latents ``(B, C, F, h, w)`` sampled for ``cond``'s audio and reference (Euler, CFG), from noise
        drawn from ``generator``; ``cond.latents`` only give the shape."""
        noise = torch.randn(
            cond.latents.shape, generator=generator, device=cond.latents.device, dtype=cond.latents.dtype
        )
        denoise = guided_denoiser(model, cond.audio, cond.ref, self.pattern, self.validation_config.guidance)
        return self.validation_config.sampler.sample(denoise, noise)

    def _write_sample(self, batch: ClipBatch, cond: ClipConditions, fake: Tensor, valid: Tensor) -> None:
        """(ground truth | sample) mp4s with the clip's audio in <run_dir>/media, logged to W&B; ``fake``:
        the decoded samples ``(B, 3, T, H, W)`` of ``cond``'s clips."""
        from rest_lightning.data.codecs import encode_mp4

        real = (
            batch.video[: len(fake)].to(fake.device)
            if batch.video is not None
            else self.frozen_vae.decode(cond.latents)
        )
        pair = torch.cat([real.float().clamp(-1, 1), fake], dim=-1)  # (B, 3, T, H, 2W)
        media = Path(self.trainer.default_root_dir).parent / "media"
        media.mkdir(parents=True, exist_ok=True)
        logger = self.logger
        for i in range(len(fake)):
            if not valid[i]:
                continue
            frames = (
                ((pair[i].permute(1, 2, 3, 0).cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype("uint8")
            )
            path = media / f"sample_step{self.logged_step():08d}_{i}.mp4"
            path.write_bytes(
                encode_mp4(
                    frames,
                    fps=self.audio_config.fps,
                    audio=cond.waveform[i].float().cpu().numpy(),
                    sample_rate=self.audio_config.sample_rate,
                )
            )
            if logger is not None and type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log(
                    {
                        f"val/sample_{i}": wandb.Video(str(path), format="mp4"),
                        "trainer/global_step": self.logged_step(),
                    }
                )

    # --- optimizer ----------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.model.parameters(), self.optim_config, self.total_steps())
