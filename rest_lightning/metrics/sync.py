"""Sync-C / Sync-D (a.k.a. LSE-C / LSE-D): lip-sync scores from SyncNet, as syncnet_python computes them.

Per video (``SyncNetInstance.evaluate``; metrics.md §4.2):

1. frames as raw BGR in [0, 255] at 224x224; audio at int16 scale -> MFCC (13 x 100 Hz);
2. ``min_length = min(frames, floor(samples / 640))`` (640 samples per 25 fps frame) and
   ``L = min_length - 5`` windows (the reference's -5 drops the last full window; kept for parity);
3. window v: video frames ``v..v+4`` and MFCC columns ``4v..4v+19`` -> one 1024-d embedding each;
4. for every video window i and audio offset k in -15..+15, the distance between video embedding i
   and audio embedding i+k (zero rows past the ends), with pairwise_distance's eps added to the
   difference; mean over i gives 31 mean distances;
5. Sync-D = min of the mean distances, Sync-C = median - min, AV offset = 15 - argmin.

Sync-C and Sync-D over a set are the means over videos (Wav2Lip ``calculate_scores_LRS.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from rest_lightning.metrics.mfcc import MFCCConfig, mfcc
from rest_lightning.metrics.nets.base import network_dtype
from rest_lightning.metrics.nets.syncnet import SYNCNET_FACE_SIZE, SYNCNET_FRAMES, SYNCNET_MFCC_STEPS, SyncNet
from rest_lightning.metrics.preprocess import check_video, quantize_uint8, resize_bilinear
from rest_lightning.metrics.result import MetricResult, keep_network_in_eval, make_results
from rest_lightning.metrics.weights import SYNCNET_FILE, load_network, metric_network

INT16_FULL_SCALE = 32768  # PCM16 full scale: soundfile/torchaudio floats are int16 / 32768
PAIRWISE_EPS = 1e-6  # torch.nn.functional.pairwise_distance default eps, added to the difference


@dataclass
class SyncConfig:
    fps: int = 25  # syncnet_python assumes 25 fps video (run_pipeline.py transcodes to 25)
    vshift: int = 15  # demo_syncnet.py / run_syncnet.py --vshift 15 (the function default is 10)
    batch_size: int = 20  # windows per SyncNet forward (syncnet_python --batch_size 20)
    quantize: bool = True  # 8-bit frames and int16 audio, as the reference reads them back from files
    mfcc: MFCCConfig = field(default_factory=MFCCConfig)

    def __post_init__(self) -> None:
        if self.fps < 1 or self.vshift < 0 or self.batch_size < 1:
            raise ValueError(
                f"SyncConfig: fps, batch_size >= 1 and vshift >= 0, got {self.fps}, {self.batch_size}, {self.vshift}"
            )
        if self.mfcc.sample_rate % self.fps:
            raise ValueError(
                f"SyncConfig: mfcc.sample_rate {self.mfcc.sample_rate} must be a multiple of fps {self.fps}"
            )
        if self.mfcc.step_samples * self.mfcc_steps_per_frame != self.samples_per_frame:
            raise ValueError(
                f"SyncConfig: one video frame ({self.samples_per_frame} samples) must span a whole number of "
                f"MFCC steps ({self.mfcc.step_samples} samples); SyncNet expects 100 Hz MFCCs at 25 fps"
            )
        if SYNCNET_FRAMES * self.mfcc_steps_per_frame != SYNCNET_MFCC_STEPS:
            raise ValueError(
                f"SyncConfig: SyncNet pairs {SYNCNET_FRAMES} frames with {SYNCNET_MFCC_STEPS} MFCC steps, but fps "
                f"{self.fps} and mfcc.step_s {self.mfcc.step_s} give {self.mfcc_steps_per_frame} steps per frame"
            )

    @property
    def samples_per_frame(self) -> int:
        """640 at 16 kHz / 25 fps."""
        return self.mfcc.sample_rate // self.fps

    @property
    def mfcc_steps_per_frame(self) -> int:
        """4 at 100 Hz MFCC / 25 fps."""
        return self.samples_per_frame // self.mfcc.step_samples


@dataclass(frozen=True)
class SyncScores:
    """Scores of one video. ``mean_distances`` ``(2*vshift+1,)`` is indexed by audio offset + vshift."""

    offset: int
    confidence: float  # Sync-C
    min_distance: float  # Sync-D
    mean_distances: Tensor


def num_windows(num_frames: int, num_samples: int, config: SyncConfig) -> int:
    """Windows scored per video: ``min(frames, floor(samples / 640)) - 5`` (syncnet_python ``lastframe``)."""
    return min(num_frames, num_samples // config.samples_per_frame) - SYNCNET_FRAMES


def mean_offset_distances(video_embeddings: Tensor, audio_embeddings: Tensor, vshift: int) -> Tensor:
    """Mean over windows of the distance between video window i and audio window i + k, k = -vshift..vshift.

    Args:
        video_embeddings, audio_embeddings: ``(L, D)``.

    Returns:
        ``(2*vshift+1,)`` float64; entry ``k + vshift`` is the mean distance at audio offset k. Audio rows
        outside 0..L-1 are zeros (syncnet_python ``calc_pdist`` pads with zeros).
    """
    if video_embeddings.shape != audio_embeddings.shape or video_embeddings.ndim != 2:
        raise ValueError(
            f"video and audio embeddings must both be (L, D), got {tuple(video_embeddings.shape)} and "
            f"{tuple(audio_embeddings.shape)}"
        )
    video = video_embeddings.to(torch.float64)
    audio = F.pad(audio_embeddings.to(torch.float64), (0, 0, vshift, vshift))  # (L + 2*vshift, D)
    candidates = audio.unfold(0, 2 * vshift + 1, 1).transpose(1, 2)  # (L, 2*vshift+1, D): rows i..i+2v
    distances = F.pairwise_distance(video[:, None, :].expand_as(candidates), candidates, eps=PAIRWISE_EPS)
    return distances.mean(dim=0)


def sync_scores(video_embeddings: Tensor, audio_embeddings: Tensor, vshift: int) -> SyncScores:
    """Offset, Sync-C and Sync-D from per-window embeddings ``(L, D)`` (syncnet_python ``evaluate``)."""
    mean_distances = mean_offset_distances(video_embeddings, audio_embeddings, vshift)
    min_distance, min_index = torch.min(mean_distances, dim=0)
    # torch.median returns the lower middle value; with 2*vshift+1 (odd) entries it is the true median.
    confidence = torch.median(mean_distances) - min_distance
    return SyncScores(
        offset=vshift - int(min_index),
        confidence=float(confidence),
        min_distance=float(min_distance),
        mean_distances=mean_distances,
    )


def syncnet_frames(video: Tensor, quantize: bool) -> Tensor:
    """One video ``(3, T, H, W)`` RGB in [-1, 1] -> SyncNet frames ``(3, T, 224, 224)`` BGR in [0, 255]."""
    frames = video.transpose(0, 1)  # (T, 3, H, W)
    frames = resize_bilinear(frames, SYNCNET_FACE_SIZE)
    if quantize:
        frames = quantize_uint8(frames)
    frames = (frames.flip(1) + 1) * (255 / 2)  # RGB -> BGR (cv2.imread order), [-1, 1] -> [0, 255]
    return frames.transpose(0, 1)


def int16_scale(audio: Tensor, quantize: bool) -> Tensor:
    """Mono audio ``(S,)`` in [-1, 1] -> int16 scale (as ``scipy.io.wavfile.read`` of a PCM16 file)."""
    scaled = audio.to(torch.float64) * INT16_FULL_SCALE
    if quantize:
        scaled = torch.round(scaled).clamp(-INT16_FULL_SCALE, INT16_FULL_SCALE - 1)
    return scaled


class LipSync(Metric):
    """Sync-C (higher is better) and Sync-D (lower is better) over a set of talking-head videos.

    ``update(video, audio)``: video ``(B, 3, T, H, W)`` RGB face crops in [-1, 1] at ``fps``;
    audio ``(B, S)`` mono waveforms in [-1, 1] at ``mfcc.sample_rate``. Needs
    ``min(T, S // 640) >= 6``. ``compute()`` -> ``{"sync_c": , "sync_d": }`` float64 scalars.
    Per-video AV offsets (in frames) are kept in :meth:`offsets`.

    Args:
        weights_path: ``eval.weights.syncnet`` (``syncnet_v2.model``).
        allow_random_weights: ``eval.allow_random_weights``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        weights_path: str | Path | None = None,
        allow_random_weights: bool = False,
        config: SyncConfig | None = None,
        network: SyncNet | None = None,
    ) -> None:
        super().__init__()
        self.config = config or SyncConfig()
        loaded = metric_network(
            network, lambda: load_network(SYNCNET_FILE, SyncNet, weights_path, allow_random_weights, "Sync-C/D")
        )
        loaded_module, calibrated = loaded.module, loaded.calibrated
        self.network: SyncNet = loaded_module
        self.uncalibrated = not calibrated
        self.add_state("confidence_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("distance_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("offset_list", [], dist_reduce_fx="cat")

    def embeddings(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Per-window embeddings of one video ``(3, T, H, W)`` and its audio ``(S,)``: two ``(L, 1024)``."""
        cfg = self.config
        windows = num_windows(video.shape[1], audio.shape[0], cfg)
        if windows < 1:
            needed = SYNCNET_FRAMES + 1
            raise ValueError(
                f"LipSync needs at least {needed} frames and {needed * cfg.samples_per_frame} audio samples per "
                f"video, got T={video.shape[1]} and S={audio.shape[0]}"
            )
        dtype = network_dtype(self.network)
        frames = syncnet_frames(video, cfg.quantize).to(dtype)  # (3, T, 224, 224)
        coeffs = mfcc(int16_scale(audio, cfg.quantize).cpu(), cfg.mfcc).T.to(device=video.device, dtype=dtype)
        step = cfg.mfcc_steps_per_frame
        video_out, audio_out = [], []
        with torch.no_grad():
            for first in range(0, windows, cfg.batch_size):
                starts = range(first, min(windows, first + cfg.batch_size))
                lips = torch.stack([frames[:, v : v + SYNCNET_FRAMES] for v in starts])  # (b, 3, 5, 224, 224)
                sound = torch.stack(
                    [coeffs[None, :, step * v : step * v + SYNCNET_MFCC_STEPS] for v in starts]
                )
                video_out.append(self.network.video_embedding(lips))
                audio_out.append(self.network.audio_embedding(sound))  # sound: (b, 1, 13, 20)
        return torch.cat(video_out), torch.cat(audio_out)

    def score_video(self, video: Tensor, audio: Tensor) -> SyncScores:
        """Scores of one video ``(3, T, H, W)`` with audio ``(S,)`` (also used to filter training clips)."""
        video_embeddings, audio_embeddings = self.embeddings(video, audio)
        return sync_scores(video_embeddings, audio_embeddings, self.config.vshift)

    def update(self, video: Tensor, audio: Tensor) -> None:
        check_video(video, "LipSync.update")
        if audio.ndim != 2 or audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"LipSync.update: audio must be (B, S) with B={video.shape[0]} to match the video, got {tuple(audio.shape)}"
            )
        for clip, sound in zip(video, audio, strict=True):
            scores = self.score_video(clip, sound)
            self.confidence_sum += scores.confidence
            self.distance_sum += scores.min_distance
            self.num_videos += 1
            self.offset_list.append(torch.tensor([scores.offset], device=self.num_videos.device))

    def compute(self) -> dict[str, Tensor]:
        if float(self.num_videos) < 1:
            raise ValueError("LipSync.compute: no videos were scored; call update first")
        return {
            "sync_c": self.confidence_sum / self.num_videos,
            "sync_d": self.distance_sum / self.num_videos,
        }

    def offsets(self) -> Tensor:
        """AV offsets (frames; negative = audio late) of the videos scored on this rank, in update order."""
        state = self.offset_list
        if isinstance(state, Tensor):  # after a distributed sync torchmetrics concatenates list states
            return state
        return torch.cat(state) if state else torch.zeros(0, dtype=torch.int64)

    def train(self, mode: bool = True) -> LipSync:
        super().train(mode)
        keep_network_in_eval(self.network)
        return self

    def results(self) -> dict[str, MetricResult]:
        return make_results(self.compute(), {"sync_c": True, "sync_d": False}, self.uncalibrated)
