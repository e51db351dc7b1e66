"""Stage 3: the streaming student trained by Asynchronous Streaming Distillation (DESIGN §4.3).

The student is the teacher's DiT with the block-causal windowed pattern: a chunk sees the ID-Sink (the
reference tokens), the last W chunks (the Context-Cache) and itself. It starts from the teacher's
weights (``init_from=teacher.ckpt``: see ``load_init_from`` for the key map).

Its objectives (ASD, teacher-forced flow matching, ODE regression) and the step's random choices are in
``rest_lightning/distillation.py`` (``StudentObjective``, built from this stage's state by ``objective()``);
this module keeps the Lightning hooks, the models and their checkpoints. With ``ode_init.from_shards=true``
(and no ASD) the teacher is not loaded at all (``stage.teacher_checkpoint`` may be null).

Ablations (configs of this one code path): ``cache.use_id_sink=false`` trains and streams without
reference tokens; ``cache.use_context_cache=false`` with a window of 0 (every chunk sees itself and the
sink); ``asd.weight=0`` + ``flow_matching.weight=1`` is the teacher-forced student.

One optimizer (``stages/optim.py``), automatic optimization: any strategy, DeepSpeed included. The
guidance null tokens are frozen (the student is distilled from the guided teacher and never drops a
condition), so no parameter goes unused under DDP. Validation: ``stages/stream_validation.py``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rest_lightning.checkpoint import META_KEY, load_user_state, load_weights_into
from rest_lightning.conditioning import ClipConditions, FrozenVAE, clip_conditions, latent_tokens_per_clip
from rest_lightning.data.batch import ClipBatch
from rest_lightning.data.schema import MediaSpec
from rest_lightning.diffusion.samplers import FewStepSampler
from rest_lightning.distillation import ASDConfig, FlowMatchingConfig, ODEInitConfig, StudentObjective
from rest_lightning.frozen_teacher import FrozenTeacher, FrozenTeacherConfig
from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.audio import AudioConfig, AudioEncoder
from rest_lightning.models.denoiser import AudioVideoDenoiser
from rest_lightning.models.dit import DiTConfig
from rest_lightning.models.pairing import check_pairing
from rest_lightning.models.pretrained import build_dit
from rest_lightning.models.vae import VAEConfig
from rest_lightning.stages.base import RestStage, plain_config
from rest_lightning.stages.ema import EMA
from rest_lightning.stages.identity import diffusion_identity_config
from rest_lightning.stages.optim import DiffusionOptimConfig, build_optimizer
from rest_lightning.stages.stream_validation import StreamValidationConfig, validate_streams
from rest_lightning.stages.val_metrics import SynthTalkValidation
from rest_lightning.stored_models import DENOISER_PREFIXES, select_module_weights
from rest_lightning.streaming.cache import CacheConfig

log = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM = 0, 1  # generator streams (as the teacher stage)


class StudentStage(RestStage):
    stage_name = "student"
    init_from_stages = ("teacher",)

    def __init__(
        self,
        dit: DiTConfig,
        audio: AudioConfig,
        vae: VAEConfig,
        vae_checkpoint: str | None,
        teacher_checkpoint: str | None,
        random_teacher_ok: bool = False,
        teacher: FrozenTeacherConfig | None = None,
        cache: CacheConfig | None = None,
        chunk_frames: int = 1,  # DESIGN §3: must match the teacher's stage.chunk_frames
        sampler: FewStepSampler | None = None,
        asd: ASDConfig | None = None,
        flow_matching: FlowMatchingConfig | None = None,
        ode_init: ODEInitConfig | None = None,
        optim: DiffusionOptimConfig | None = None,
        validation: StreamValidationConfig | None = None,
    ) -> None:
        super().__init__()
        check_pairing(dit, vae, audio)
        self.dit_config, self.audio_config, self.vae_config = dit, audio, vae
        self.cache_config = cache if cache is not None else CacheConfig()
        self.chunk_frames = chunk_frames
        self.sampler = sampler if sampler is not None else FewStepSampler()
        self.asd = asd if asd is not None else ASDConfig()
        self.flow_matching = flow_matching if flow_matching is not None else FlowMatchingConfig()
        self.ode_init = ode_init if ode_init is not None else ODEInitConfig()
        if self.asd.weight == 0 and self.flow_matching.weight == 0 and self.ode_init.weight == 0:
            raise ValueError(
                "stage.asd.weight, stage.flow_matching.weight and stage.ode_init.weight are all 0: nothing to train"
            )
        self.optim_config = optim if optim is not None else DiffusionOptimConfig()
        self.validation_config = validation if validation is not None else StreamValidationConfig()
        # SynthTalk of the validation streams (stream_validation.py); plain metric objects, never saved.
        media = MediaSpec(fps=audio.fps, sample_rate=audio.sample_rate)
        self.synthtalk = SynthTalkValidation(media) if self.validation_config.synthtalk else None
        window = self.cache_config.window if self.cache_config.use_context_cache else 0
        self.pattern = AttentionPattern.block_causal(window, chunk_frames)
        self.model = AudioVideoDenoiser(build_dit(dit), AudioEncoder(audio))
        # Never trained here (module doc): frozen so DDP sees no unused parameter.
        self.model.dit.null_audio.requires_grad_(False)
        self.model.dit.null_ref.requires_grad_(False)
        decay = self.optim_config.ema_decay
        self.ema = EMA(self.model, decay) if decay is not None else None
        self.frozen_vae = FrozenVAE.load(vae, vae_checkpoint)  # plain attribute: not saved, not sharded
        self.teacher: FrozenTeacher | None = None
        online_ode = self.ode_init.weight > 0 and not self.ode_init.from_shards
        if self.asd.weight > 0 or online_ode:
            # On the meta device (shapes only, DESIGN §10) no weights load, so a missing path is no error there.
            if teacher_checkpoint is None and not random_teacher_ok and torch.empty(0).device.type != "meta":
                raise ValueError(
                    "stage.teacher_checkpoint is null (it defaults to init_from): set init_from=TEACHER.ckpt or "
                    "stage.teacher_checkpoint=PATH; tests may set stage.random_teacher_ok=true (ODE-init on shards "
                    "written by `rest-prep mode=ode` needs no teacher: stage.ode_init.from_shards=true)"
                )
            self.teacher = FrozenTeacher.load(dit, audio, teacher_checkpoint, teacher or FrozenTeacherConfig())
        self._seed = torch.initial_seed()

    def tokens_per_sample(self, batch: ClipBatch) -> int:
        return latent_tokens_per_clip(batch, self.vae_config)

    def identity_config(self) -> dict[str, Any]:
        return {
            **diffusion_identity_config(self.dit_config, self.audio_config, self.vae_config, self.chunk_frames,
                                        self.ema is not None),
            "cache": plain_config(asdict(self.cache_config)),
        }

    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3 and self.ema is not None:
            raise ValueError(
                "strategy=deepspeed_zero3 partitions the EMA copy, which stages/ema.py updates as whole tensors; "
                "use strategy=deepspeed_zero2, ddp or fsdp, or set stage.optim.ema_decay=null"
            )

    def load_init_from(self, path: str | Path, *, strict: bool = True, key_map: dict[str, str] | None = None) -> None:
        """``init_from`` a teacher checkpoint with no key map: teacher ``ema.module.*`` (else ``model.*``)
        -> student ``model.*`` and ``ema.module.*`` (the EMA starts at the same weights). Anything else (a
        student checkpoint, an explicit ``init_from_key_map``) takes ``RestStage.load_init_from``."""
        state, meta = load_user_state(path)
        if key_map or meta.get("stage") != "teacher":
            super().load_init_from(path, strict=strict, key_map=key_map)
            if self.ema is not None and not any(k.startswith("ema.") for k in state):
                self.ema.module.load_state_dict(self.model.state_dict())
            return
        self.check_compatible(meta, source=f"init_from={path}", resume=False)
        weights, prefix = select_module_weights(state, DENOISER_PREFIXES)
        mapped = {f"model.{k}": v for k, v in weights.items()}
        if self.ema is not None:
            mapped |= {f"ema.module.{k}": v for k, v in weights.items()}
        load_weights_into(self, mapped, strict=strict, source=f"init_from={path} ({prefix or 'bare'} weights)")
        log.info("student initialised from the teacher's %s weights in %s", prefix.rstrip(".") or "bare", path)

    # --- the step's randomness -------------------------------------------------------------------

    def _generator(self, stream: int, index: int) -> torch.Generator:
        seed = np.random.SeedSequence([self._seed, self.global_rank, stream, index]).generate_state(1)[0]
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def objective(self) -> StudentObjective:
        """The losses over this stage's current configuration (``rest_lightning/distillation.py``)."""
        return StudentObjective(self.dit_config, self.chunk_frames, self.sampler, self.pattern, self.cache_config,
                                self.asd, self.flow_matching, self.ode_init, self.teacher)

    # --- Lightning hooks ------------------------------------------------------------------------

    def conditions(self, batch: ClipBatch) -> ClipConditions:
        dtype = next(self.model.dit.parameters()).dtype
        return clip_conditions(batch, self.frozen_vae, self.model.audio_encoder, dtype)

    def training_step(self, batch: ClipBatch, batch_idx: int) -> Tensor:
        cond = self.conditions(batch)
        objective = self.objective()
        num_chunks = objective.check_clip_length(cond.latents.shape[2])
        generator = self._generator(TRAIN_STREAM, self.global_step)
        choices = objective.step_choices(max(0, num_chunks - 1 - self.asd.future_chunks), self.global_step, generator)
        out = objective.training_loss(self.model, cond, generator, choices, batch.ode)
        size = len(batch)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=size)
        if out.asd is not None:
            self.log("train/asd_loss", out.asd.loss.detach(), batch_size=size)
            self.log("train/exit_step", float(choices.exit_step), batch_size=size)
        if out.flow_matching is not None:
            self.log("train/flow_matching_loss", out.flow_matching.detach(), batch_size=size)
        if out.ode is not None:
            self.log("train/ode_loss", out.ode.detach(), batch_size=size)
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

    def validation_step(self, batch: ClipBatch, batch_idx: int) -> None:
        model = self.ema.module if self.ema is not None else self.model
        cond = self.conditions(batch)
        num_chunks = self.pattern.num_chunks(cond.latents.shape[2])
        generator = self._generator(VAL_STREAM, batch_idx)
        objective = self.objective()
        choices = objective.step_choices(max(0, num_chunks - 1 - self.asd.future_chunks), self.global_step, generator)
        with torch.no_grad():
            out = objective.training_loss(model, cond, generator, choices, batch.ode)
        size = len(batch)
        self.log("val/loss", out.loss, batch_size=size, sync_dist=True)
        if out.asd is not None:
            self.log("val/asd_loss", out.asd.loss, batch_size=size, sync_dist=True)
        if out.flow_matching is not None:
            self.log("val/flow_matching_loss", out.flow_matching, batch_size=size, sync_dist=True)
        if out.ode is not None:
            self.log("val/ode_loss", out.ode, batch_size=size, sync_dist=True)
        if batch_idx == 0 and self.validation_config.stream_clips > 0:
            validate_streams(self, model, batch, cond)

    def on_validation_epoch_end(self) -> None:
        if self.synthtalk is not None:
            for key, value in self.synthtalk.compute_and_reset(self.device).items():
                self.log(key, value)  # already synced across ranks by the metric

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The few-step levels it was trained to denoise at: generation and evaluation stream with them
        # (stored_models.stream_config). Beside the config, not in it: a resume may change the sampler.
        checkpoint[META_KEY]["sampler_timesteps"] = [float(t) for t in self.sampler.timesteps]

    def stream_config(self) -> Any:
        from rest_lightning.streaming.generator import StreamConfig

        cache = self.cache_config
        return StreamConfig(
            window=cache.window,
            chunk_frames=self.chunk_frames,
            timesteps=tuple(self.sampler.timesteps),
            use_id_sink=cache.use_id_sink,
            use_context_cache=cache.use_context_cache,
            seed=self.validation_config.seed,
        )

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.model.parameters(), self.optim_config, self.total_steps())


def student_from_teacher_state(stage: StudentStage, teacher_model: AudioVideoDenoiser) -> None:
    """Copy a teacher denoiser's weights into the student (and its EMA): what ``init_from`` does, in memory."""
    state = teacher_model.state_dict()
    stage.model.load_state_dict(state)
    if stage.ema is not None:
        stage.ema.module.load_state_dict(state)


__all__ = [
    "StudentStage",
    "student_from_teacher_state",
]
