"""Stage 1: the causal video VAE (DESIGN §4.1).

Losses: L1 + LPIPS (perceptual) + a small KL (weighted against the pixel loss as Stable Diffusion's
``LPIPSWithDiscriminator`` weighs it, see ``kl_per_video_value``), and a 3D PatchGAN hinge GAN switched on at
``loss.disc_start`` with the adaptive generator weight (gradient-norm ratio at the decoder's last
layer). Two optimizers, so manual optimization: DDP or FSDP, never Lightning's DeepSpeed strategy
(``num_optimizers = 2``; the config validator refuses it).

Step counting: ``trainer.global_step`` counts *generator* steps (one per batch). Lightning increments
it on every ``LightningOptimizer.step``; the discriminator therefore steps its raw torch optimizer, so
``max_steps``, checkpoint intervals and ``disc_start`` all count batches.

EMA under FSDP: the EMA copy is a full (unsharded) module updated from the local parameters, so it
is only correct with ``use_orig_params`` and full-state gathering; the adaptive weight needs the full
``last_decoder_layer`` (see ``adaptive_generator_weight``). Use DDP for this stage unless the VAE no
longer fits one device.

Latent statistics: per-channel mean/std of the posterior mode on the training data, tracked as an
exponential moving average (averaged over ranks) and copied into ``vae.latent_norm`` every step, so
every checkpoint carries the statistics ``encode``/``decode`` normalise with.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rest_lightning.data.batch import ClipBatch
from rest_lightning.models.discriminator import DiscriminatorConfig, PatchDiscriminator3D
from rest_lightning.models.ltx_vae_keymap import load_ltx_vae
from rest_lightning.models.vae import CausalVideoVAE, VAEConfig
from rest_lightning.models.vae_losses import (
    adaptive_generator_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
    kl_per_video_value,
    motion_weights,
)
from rest_lightning.stages.base import RestStage, plain_config
from rest_lightning.stages.ema import EMA
from rest_lightning.stages.optim import warmup_cosine_scheduler
from rest_lightning.stages.val_metrics import ValMetrics, ValMetricsConfig

log = logging.getLogger(__name__)

LPIPS_RANDOM_BACKBONE_SEED = 0  # design choice: any fixed value; see VAEStage.perceptual


@dataclass
class VAELossConfig:
    l1_weight: float = 1.0  # design choice (LTX-Video / taming: pixel L1 at weight 1)
    lpips_weight: float = 1.0  # taming-transformers perceptual_weight
    kl_weight: float = 1e-6  # Stable Diffusion / LTX-Video VAE, relative to the pixel loss summed per sample
    # L1 weight 1 + motion_weight * |x - mean_t x| (vae_losses.motion_weights): 0 = plain L1 (LTX-Video);
    # the SynthTalk recipe uses 20 so the small, moving mouth is learned (docs/synthtalk.md)
    motion_weight: float = 0.0
    gan_weight: float = 0.5  # taming-transformers disc_weight
    disc_start: int = 50_000  # design choice: GAN only once reconstructions are sharp (taming: 50k)
    adaptive_weight: bool = True  # taming-transformers: scale the GAN term by the gradient-norm ratio
    lpips_net: str = "alex"  # lpips backbone: alex | vgg | squeeze
    # pretrained: the backbone's ImageNet weights from $TORCH_HOME (torchvision cache file, e.g.
    # hub/checkpoints/alexnet-owt-7be5be79.pth); random: a random backbone with lpips' shipped linear
    # heads (offline, tests and demo; still a feature-matching loss, but not the calibrated metric).
    lpips_backbone: str = "pretrained"
    lpips_frames: int = 4  # frames per clip (evenly spaced) that LPIPS sees: it is per image and costly

    def __post_init__(self) -> None:
        for name in ("l1_weight", "lpips_weight", "kl_weight", "gan_weight", "motion_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"stage.loss.{name}={getattr(self, name)} must be >= 0")
        if self.disc_start < 0:
            raise ValueError(f"stage.loss.disc_start={self.disc_start} must be >= 0")
        if self.lpips_backbone not in ("pretrained", "random"):
            raise ValueError(f"stage.loss.lpips_backbone={self.lpips_backbone!r}: use 'pretrained' or 'random'")
        if self.lpips_net not in ("alex", "vgg", "squeeze"):
            raise ValueError(f"stage.loss.lpips_net={self.lpips_net!r}: use 'alex', 'vgg' or 'squeeze'")
        if self.lpips_frames < 1:
            raise ValueError(f"stage.loss.lpips_frames={self.lpips_frames} must be >= 1")


@dataclass
class VAEOptimConfig:
    lr: float = 1e-4  # design choice (LTX-Video-Trainer VAE fine-tuning range)
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)  # taming-transformers GAN betas
    weight_decay: float = 0.0
    warmup_steps: int = 1000  # design choice: linear warm-up of both learning rates
    decay_steps: int | None = None  # the VAE's cosine after warm-up; None = trainer.max_steps - warmup_steps
    min_lr_ratio: float = 1.0  # the cosine ends at lr * min_lr_ratio; 1.0 = constant (the SynthTalk recipe: 0.1)
    grad_clip: float | None = 1.0  # design choice: clip each optimizer's gradient norm
    ema_decay: float | None = 0.999  # design choice; None disables the EMA copy
    latent_stats_momentum: float = 0.01  # per-step EMA momentum of the latent mean/std

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.lr <= 0 or self.disc_lr <= 0:
            raise ValueError(f"stage.optim.lr={self.lr} and stage.optim.disc_lr={self.disc_lr} must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"stage.optim.warmup_steps={self.warmup_steps} must be >= 0")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(f"stage.optim.decay_steps={self.decay_steps} must be >= 1 or null")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"stage.optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if not 0 < self.latent_stats_momentum <= 1:
            raise ValueError(f"stage.optim.latent_stats_momentum={self.latent_stats_momentum} must be in (0, 1]")


def evenly_spaced_frames(video: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * min(n, T), C, H, W): n frames at evenly spaced times, as images."""
    t = video.shape[2]
    index = torch.linspace(0, t - 1, min(n, t), device=video.device).round().long()
    return video.index_select(2, index).transpose(1, 2).flatten(0, 1)


class VAEStage(RestStage):
    stage_name = "vae"
    num_optimizers = 2
    manual_optimization = True
    has_unused_parameters = True  # the discriminator takes no gradient before loss.disc_start

    def __init__(
        self,
        vae: VAEConfig,
        discriminator: DiscriminatorConfig,
        loss: VAELossConfig,
        optim: VAEOptimConfig,
        pretrained: str | None = None,
        metrics: ValMetricsConfig | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = not self.manual_optimization
        self.loss_config, self.optim_config = loss, optim
        self.vae = load_ltx_vae(pretrained, causal_decoder=vae.causal_decoder) if pretrained \
            else CausalVideoVAE(vae)
        self.discriminator = PatchDiscriminator3D(discriminator)
        self.ema = EMA(self.vae, optim.ema_decay) if optim.ema_decay is not None else None
        self.register_buffer("latent_mean", torch.zeros(self.vae.config.latent_channels))
        self.register_buffer("latent_sq_mean", torch.ones(self.vae.config.latent_channels))
        self.register_buffer("latent_stats_seen", torch.zeros((), dtype=torch.long))
        # Kept out of the module tree: frozen, not part of the VAE, not worth saving in every checkpoint.
        self._perceptual: list[nn.Module] = []
        # FID/FVD (and, on a synthetic corpus, SynthTalk) of reconstructions; metric networks are not
        # submodules either (val_metrics.py).
        self.val_metrics = ValMetrics(metrics if metrics is not None else ValMetricsConfig())

    def identity_config(self) -> dict[str, Any]:
        return {"vae": plain_config(asdict(self.vae.config)), "ema": self.ema is not None}

    # --- losses -------------------------------------------------------------------------------

    def perceptual(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS between two videos (B, 3, T, H, W) in [-1, 1] on ``loss.lpips_frames`` frames."""
        if not self._perceptual:
            import lpips

            random_backbone = self.loss_config.lpips_backbone == "random"
            # A random backbone is drawn from a fixed seed, aside from the global RNG: the same network
            # in every run, on every rank and after every resume (else the objective changes on resume).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(LPIPS_RANDOM_BACKBONE_SEED)
                net = lpips.LPIPS(net=self.loss_config.lpips_net, pretrained=True, pnet_rand=random_backbone,
                                  verbose=False)
            self._perceptual.append(net.requires_grad_(False).eval())
        net = self._perceptual[0].to(a.device)
        n = self.loss_config.lpips_frames
        return net(evenly_spaced_frames(a, n), evenly_spaced_frames(b, n)).mean()

    def gan_active(self) -> bool:
        return self.global_step >= self.loss_config.disc_start

    def training_step(self, batch: ClipBatch, batch_idx: int) -> None:
        opt_vae, opt_disc = self.optimizers()
        sched_vae, sched_disc = self.lr_schedulers()
        cfg = self.loss_config
        video = batch.video
        out = self.vae(video, sample_posterior=True)

        error = (out.video - video).abs()
        l1 = error.mean()
        logs = {"train/l1": l1}  # unweighted, comparable across motion_weight settings
        if cfg.motion_weight > 0:
            l1 = (error * motion_weights(video, cfg.motion_weight)).mean()
            logs["train/l1_motion_weighted"] = l1
        reconstruction = cfg.l1_weight * l1
        if cfg.lpips_weight > 0:  # the backbone costs as much as the VAE at small sizes: skip it when unused
            perceptual = self.perceptual(out.video, video)
            reconstruction = reconstruction + cfg.lpips_weight * perceptual
            logs["train/lpips"] = perceptual
        kl = out.posterior.kl()
        loss = reconstruction + cfg.kl_weight * kl_per_video_value(kl, video)
        logs["train/kl"] = kl.mean()  # summed over the latent, as LDM logs it

        gan_on = self.gan_active()
        if gan_on:
            self.toggle_optimizer(opt_vae)  # the discriminator takes no gradient from the generator loss
            generator = hinge_generator_loss(self.discriminator(out.video))
            weight = adaptive_generator_weight(reconstruction, generator, self.vae.last_decoder_layer) \
                if cfg.adaptive_weight else torch.ones((), device=video.device)
            loss = loss + cfg.gan_weight * weight * generator
            logs |= {"train/gan_generator": generator, "train/gan_adaptive_weight": weight}

        opt_vae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(opt_vae, gradient_clip_val=self.optim_config.grad_clip, gradient_clip_algorithm="norm")
        opt_vae.step()
        sched_vae.step()
        if gan_on:
            self.untoggle_optimizer(opt_vae)
            self.toggle_optimizer(opt_disc)
            disc_loss = hinge_discriminator_loss(self.discriminator(video), self.discriminator(out.video.detach()))
            opt_disc.zero_grad(set_to_none=True)
            self.manual_backward(disc_loss)
            self.clip_gradients(opt_disc, gradient_clip_val=self.optim_config.grad_clip,
                                gradient_clip_algorithm="norm")
            opt_disc.optimizer.step()  # raw step: global_step counts generator steps (module docstring)
            sched_disc.step()
            self.untoggle_optimizer(opt_disc)
            logs["train/gan_discriminator"] = disc_loss

        if self.ema is not None:
            self.ema.update(self.vae)
        self._update_latent_stats(out.posterior.mode().detach())
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=video.shape[0])
        self.log_dict({k: v.detach() for k, v in logs.items()}, batch_size=video.shape[0])
        self.log("train/gan_on", float(gan_on), batch_size=video.shape[0])
        self.log("train/skipped_samples", float(batch.skipped), reduce_fx="sum", batch_size=video.shape[0])
        self.log("train/failed_shards", float(batch.failed_shards), reduce_fx="sum", batch_size=video.shape[0])

    @torch.no_grad()
    def _update_latent_stats(self, z: torch.Tensor) -> None:
        """z (B, C, T', H', W') raw latents -> EMA of per-channel mean and mean square (rank-averaged)."""
        dims = (0, 2, 3, 4)
        mean, sq_mean = z.mean(dims), z.square().mean(dims)
        if self.trainer.world_size > 1:
            mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
            sq_mean = self.trainer.strategy.reduce(sq_mean, reduce_op="mean")
        m = 1.0 if self.latent_stats_seen.item() == 0 else self.optim_config.latent_stats_momentum
        self.latent_mean.lerp_(mean, m)
        self.latent_sq_mean.lerp_(sq_mean, m)
        self.latent_stats_seen += 1
        std = (self.latent_sq_mean - self.latent_mean.square()).clamp_min(0).sqrt()
        self.vae.latent_norm.set_stats(self.latent_mean, std)
        if self.ema is not None:
            self.ema.module.latent_norm.set_stats(self.latent_mean, std)

    # --- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        # Videos in [-1, 1]: data_range 2. Built per epoch on the right device; cheap.
        self._psnr = PeakSignalNoiseRatio(data_range=2.0).to(self.device)
        self._ssim = StructuralSimilarityIndexMeasure(data_range=2.0).to(self.device)

    def validation_step(self, batch: ClipBatch, batch_idx: int) -> None:
        keep = batch.mask
        if not keep.any():
            return
        video = batch.video[keep]
        model = self.ema.module if self.ema is not None else self.vae
        recon = model(video, sample_posterior=False).video.clamp(-1, 1)
        frames_real = video.transpose(1, 2).flatten(0, 1)
        frames_fake = recon.transpose(1, 2).flatten(0, 1)
        self._psnr.update(frames_fake, frames_real)
        self._ssim.update(frames_fake, frames_real)
        self.log("val/lpips", self.perceptual(recon, video), sync_dist=True, batch_size=video.shape[0])
        self.log("val/l1", (recon - video).abs().mean(), sync_dist=True, batch_size=video.shape[0])
        self.val_metrics.update(recon, video)
        self.val_metrics.update_synthtalk(recon, batch, keep, batch.audio, real=video)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._write_reconstruction(video[:1], recon[:1])

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_metrics.compute_and_reset(self.device).items():
            self.log(key, value)  # already synced across ranks by the metric
        if self._psnr.update_called:
            self.log("val/psnr", self._psnr.compute(), sync_dist=True)
            self.log("val/ssim", self._ssim.compute(), sync_dist=True)

    def _write_reconstruction(self, video: torch.Tensor, recon: torch.Tensor) -> None:
        """Side-by-side (input | reconstruction) mp4 at 25 fps in <run_dir>/media, logged to W&B."""
        from rest_lightning.data.codecs import encode_mp4
        from rest_lightning.data.schema import MediaSpec

        pair = torch.cat([video, recon], dim=-1)[0]  # (3, T, H, 2W)
        frames = ((pair.permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 127.5).round().clip(0, 255)
        media = Path(self.trainer.default_root_dir).parent / "media"
        media.mkdir(parents=True, exist_ok=True)
        path = media / f"reconstruction_step{self.logged_step():08d}.mp4"
        path.write_bytes(encode_mp4(frames.astype("uint8"), fps=MediaSpec().fps))
        logger = self.logger
        if logger is not None and type(logger).__name__ == "WandbLogger":
            import wandb

            logger.experiment.log({"val/reconstruction": wandb.Video(str(path), format="mp4"),
                                   "trainer/global_step": self.logged_step()})

    # --- optimizers ---------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        cfg = self.optim_config
        opt_vae = torch.optim.AdamW(self.vae.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        opt_disc = torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.disc_lr, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay)
        # The VAE warms up then follows the cosine; the discriminator, which may start late, only warms up.
        return [opt_vae, opt_disc], [
            warmup_cosine_scheduler(opt_vae, cfg.warmup_steps, cfg.decay_steps, cfg.min_lr_ratio, self.total_steps()),
            warmup_cosine_scheduler(opt_disc, cfg.warmup_steps, 1, 1.0, self.total_steps()),
        ]
