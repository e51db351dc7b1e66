"""Validation of the streaming student by streaming (DESIGN §4.3, §5): clips many times the training
window, generated with the real ``StreamingGenerator`` (ID-Context Cache, few-step sampler, causal VAE
decode), and per-chunk drift curves.

For each of ``stream_clips`` validation clips: the clip's reference image and its audio repeated to
``stream_chunks`` chunks (a clip is only a few chunks long; looping its speech keeps the audio real) are
streamed. Per chunk c:

- ``latent_mean`` / ``latent_std``: statistics of the chunk's clean latent (a drifting stream saturates
  or collapses them);
- ``lpips_ref``: LPIPS of the chunk's frames to the reference image (appearance drift). Without
  ``lpips_weights`` the AlexNet trunk is random: curves compare runs with each other, not to the paper;
- ``id_cos``: cosine similarity of the chunk's latent (mean over its frames) to the reference latent, an
  identity proxy that needs no face network.

On a synthetic corpus each stream is also scored by the SynthTalk metrics (``stage.validation.synthtalk``;
``stages/val_metrics.py``): lip-sync r of the whole stream against its looped audio, pooled per speaker over
the streamed clips of all ranks, and identity distance to the reference, logged at the epoch's end as
``val/synthtalk_*``. A frozen copy of the reference scores a perfect identity and r = 0: read them together.

Logged: ``val/stream_<curve>_first`` and ``_last`` (chunk 0 and the last chunk, averaged over clips), the
whole curves as ``<run_dir>/media/drift_step*.json`` and, under W&B, as line plots; the streamed video
with its audio as ``<run_dir>/media/stream_step*_<i>.mp4``. Every rank streams (sharded strategies run
collective forwards); rank 0 writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from rest_lightning.conditioning import ClipConditions
    from rest_lightning.data.batch import ClipBatch
    from rest_lightning.models.denoiser import AudioVideoDenoiser
    from rest_lightning.streaming.generator import VideoChunk

CURVES = ("latent_mean", "latent_std", "lpips_ref", "id_cos")


@dataclass
class StreamValidationConfig:
    """``stage.validation``."""

    stream_clips: int = 1  # validation clips streamed (from the first batch); 0 = no streaming
    stream_chunks: int = 50  # design choice: 50 chunks = 16 s at 0.32 s a chunk, >> the training window
    lpips_weights: str | None = None  # torchvision alexnet-owt-7be5be79.pth; None = random trunk (uncalibrated)
    seed: int = 0  # the stream's noise seed (the same every validation: comparable curves)
    synthtalk: bool = True  # SynthTalk lip-sync / identity of the streams (synthetic corpora only)

    def __post_init__(self) -> None:
        if self.stream_clips < 0 or self.stream_chunks < 1:
            raise ValueError(
                f"stage.validation needs stream_clips >= 0 and stream_chunks >= 1, got {self.stream_clips}, "
                f"{self.stream_chunks}"
            )


class DriftMeter:
    """Per-chunk drift measures of one stream (module doc); holds the LPIPS network."""

    def __init__(self, lpips_weights: str | None, device: torch.device) -> None:
        from rest_lightning.metrics.image_quality import LPIPS

        self.lpips = LPIPS(lpips_weights, allow_random_weights=lpips_weights is None).to(device)

    @torch.no_grad()
    def chunk(self, chunk: VideoChunk, ref_image: Tensor, ref_latent: Tensor | None) -> dict[str, float]:
        """``chunk.frames (1, 3, n, H, W)``, ``ref_image (1, 3, H, W)`` in [-1, 1]; ``ref_latent (1, C, 1, h, w)``."""
        latent = chunk.latent.float()
        frames = chunk.frames[0].transpose(0, 1).float()  # (n, 3, H, W)
        lpips = self.lpips.per_frame(frames, ref_image.float().expand_as(frames)).mean().item()
        id_cos = math.nan
        if ref_latent is not None:
            id_cos = torch.nn.functional.cosine_similarity(
                latent.mean(dim=2).flatten(1), ref_latent.float()[:, :, 0].flatten(1)
            ).item()
        return {
            "latent_mean": latent.mean().item(),
            "latent_std": latent.std().item(),
            "lpips_ref": lpips,
            "id_cos": id_cos,
        }


def stream_audio(waveform: Tensor, num_chunks: int, samples_per_frame: int, temporal_compression: int,
                 chunk_frames: int) -> Tensor:
    """``waveform (S,)`` looped to cover ``num_chunks`` chunks: ``1 + 8 (N cf - 1)`` video frames (the causal
    VAE's first latent frame is one video frame) -> ``(1, frames * samples_per_frame)``."""
    frames = 1 + temporal_compression * (num_chunks * chunk_frames - 1)
    samples = frames * samples_per_frame
    repeats = -(-samples // waveform.shape[0])
    return waveform.repeat(repeats)[:samples][None]


def validate_streams(stage: Any, model: AudioVideoDenoiser, batch: ClipBatch, cond: ClipConditions) -> dict[str, list[list[float]]]:
    """Stream ``stage.validation_config.stream_clips`` clips of ``batch`` with ``model`` and log drift (module
    doc). Returns the curves ``{name: [per clip: per chunk]}``."""
    from rest_lightning.stages.val_metrics import synthtalk_rows
    from rest_lightning.streaming.generator import StreamingGenerator

    config = stage.validation_config
    meter = getattr(stage, "_drift_meter", None)
    if meter is None:
        meter = DriftMeter(config.lpips_weights, stage.device)
        stage._drift_meter = meter  # a plain attribute: not a submodule, never saved
    vae = stage.frozen_vae.vae
    generator = StreamingGenerator(model.dit, vae, model.audio_encoder, stage.stream_config(), device=stage.device)
    curves: dict[str, list[list[float]]] = {name: [] for name in CURVES}
    videos = []
    rows = [i for i in range(len(batch)) if bool(batch.mask[i])][: config.stream_clips]
    scorable = set(synthtalk_rows(batch))
    for i in rows:
        ref_image = batch.ref[i : i + 1].to(stage.device)
        audio = stream_audio(
            cond.waveform[i].float(),
            config.stream_chunks,
            stage.audio_config.samples_per_video_frame,
            stage.vae_config.temporal_compression,
            stage.chunk_frames,
        ).to(stage.device)
        chunks = list(generator.generate(ref_image[:, :, None], [audio]))
        per_chunk = [meter.chunk(c, ref_image, cond.ref[i : i + 1]) for c in chunks]
        for name in CURVES:
            curves[name].append([values[name] for values in per_chunk])
        video = torch.cat([c.frames for c in chunks], dim=2)  # (1, 3, T, H, W), T frames as the audio covers
        if stage.synthtalk is not None and i in scorable:
            stage.synthtalk.update(video, audio, ref_image, [batch.speakers[i]])
        videos.append((video[0], audio[0]))
    if not rows:
        return curves
    size = len(rows)
    for name in CURVES:
        first = sum(curve[0] for curve in curves[name]) / size
        last = sum(curve[-1] for curve in curves[name]) / size
        stage.log(f"val/stream_{name}_first", first, batch_size=size, rank_zero_only=True)
        stage.log(f"val/stream_{name}_last", last, batch_size=size, rank_zero_only=True)
    if stage.trainer.is_global_zero:
        _write(stage, curves, videos)
    return curves


def _write(stage: Any, curves: dict[str, list[list[float]]], videos: list[tuple[Tensor, Tensor]]) -> None:
    from rest_lightning.data.codecs import encode_mp4

    media = Path(stage.trainer.default_root_dir).parent / "media"
    media.mkdir(parents=True, exist_ok=True)
    step = stage.logged_step()
    (media / f"drift_step{step:08d}.json").write_text(json.dumps({"step": step, "curves": curves}))
    paths = []
    for i, (video, audio) in enumerate(videos):
        frames = ((video.permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype("uint8")
        path = media / f"stream_step{step:08d}_{i}.mp4"
        path.write_bytes(
            encode_mp4(frames, fps=stage.audio_config.fps, audio=audio.float().cpu().numpy(),
                       sample_rate=stage.audio_config.sample_rate)
        )
        paths.append(path)
    logger = stage.logger
    if logger is not None and type(logger).__name__ == "WandbLogger":
        import wandb

        log: dict[str, Any] = {"trainer/global_step": step}
        for i, path in enumerate(paths):
            log[f"val/stream_{i}"] = wandb.Video(str(path), format="mp4")
        for name, per_clip in curves.items():
            xs = list(range(len(per_clip[0])))
            log[f"val/drift_{name}"] = wandb.plot.line_series(
                xs=xs, ys=per_clip, keys=[f"clip {i}" for i in range(len(per_clip))], title=name, xname="chunk"
            )
        logger.experiment.log(log)
