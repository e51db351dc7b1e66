"""Set-level metrics with bootstrap intervals, from per-video records (``eval.scoring.VideoRecord``).

* generated systems: FID / FVD against the ground truth of the same items, Sync-C/D with the driving
  audio, CSIM to the reference, LPIPS / PSNR / SSIM against the ground-truth frames;
* the real-video row: FID / FVD between two halves of the ground-truth videos (even vs odd items),
  Sync-C/D and CSIM of the ground truth itself; LPIPS / PSNR / SSIM are not defined for it (a video
  against itself) and are reported as null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eval.bootstrap import BootstrapConfig, Estimate, frechet_estimate, weighted_mean_estimate
from eval.protocol import EvalProtocol
from eval.scoring import VideoRecord
from rest_lightning.metrics.dlib_identity import DLIB_SAME_PERSON_DISTANCE

REAL_SYSTEM = "real_video"


@dataclass(frozen=True)
class MetricSpec:
    name: str  # results key (gets _uncalibrated appended when uncalibrated)
    label: str  # table header
    higher_is_better: bool


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("fid", "FID", False),
    MetricSpec("fvd", "FVD", False),
    MetricSpec("sync_c", "Sync-C", True),
    MetricSpec("sync_d", "Sync-D", False),
    MetricSpec("csim", "CSIM", True),
    MetricSpec("identity_dist", "ID-dist (dlib)", False),
    MetricSpec("identity_match", "ID-match (dlib)", True),
    MetricSpec("lpips", "LPIPS", False),
    MetricSpec("psnr", "PSNR", True),
    MetricSpec("ssim", "SSIM", True),
    MetricSpec("fps", "FPS", True),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}


def _means(records: list[VideoRecord], config: BootstrapConfig, rng: np.random.Generator) -> dict[str, Estimate]:
    ones = np.ones(len(records))
    out = {
        "sync_c": weighted_mean_estimate(np.array([r.sync_confidence for r in records]), ones, config, rng),
        "sync_d": weighted_mean_estimate(np.array([r.sync_distance for r in records]), ones, config, rng),
        # CSIM of a set = mean over videos of each video's mean over frames (metrics.CSIM)
        "csim": weighted_mean_estimate(np.array([float(r.csim_frames.mean()) for r in records]), ones, config, rng),
    }
    identity = [r.identity_frames for r in records]
    if all(v is not None for v in identity):
        # like metrics.DlibIdentity: per video the mean distance and the share under dlib's 0.6, then mean over videos
        out["identity_dist"] = weighted_mean_estimate(np.array([float(v.mean()) for v in identity]), ones, config, rng)
        matches = np.array([float((v < DLIB_SAME_PERSON_DISTANCE).double().mean()) for v in identity])
        out["identity_match"] = weighted_mean_estimate(matches, ones, config, rng)
    for name in ("lpips", "psnr", "ssim"):
        values = [getattr(r, f"{name}_frames") for r in records]
        if all(v is not None for v in values):
            # LPIPS/PSNR/SSIM are means over all frames (metrics.image_quality): frame sums and counts
            sums = np.array([float(v.sum()) for v in values])
            counts = np.array([len(v) for v in values], dtype=np.float64)
            out[name] = weighted_mean_estimate(sums, counts, config, rng)
    return out


def generated_metrics(
    generated: list[VideoRecord], truth: list[VideoRecord], protocol: EvalProtocol, config: BootstrapConfig
) -> dict[str, Estimate]:
    """Metrics of one system's videos; ``generated[i]`` and ``truth[i]`` are the same test item."""
    rng = np.random.default_rng(config.seed)
    out = {
        "fid": frechet_estimate(
            [r.fid_features for r in generated], [r.fid_features for r in truth], protocol.fid.ddof, True, config, rng
        ),
        "fvd": frechet_estimate(
            [r.fvd_features for r in generated], [r.fvd_features for r in truth], protocol.fvd.ddof, True, config, rng
        ),
    }
    return out | _means(generated, config, rng)


def real_metrics(truth: list[VideoRecord], protocol: EvalProtocol, config: BootstrapConfig) -> dict[str, Estimate]:
    """The real-video row: Fréchet distances between the even and odd items, the rest on all of them."""
    if len(truth) < 2:
        raise ValueError(f"the real-video row splits the test set in two halves; it needs >= 2 items, got {len(truth)}")
    rng = np.random.default_rng(config.seed)
    first, second = truth[0::2], truth[1::2]
    out = {
        "fid": frechet_estimate(
            [r.fid_features for r in first], [r.fid_features for r in second], protocol.fid.ddof, False, config, rng
        ),
        "fvd": frechet_estimate(
            [r.fvd_features for r in first], [r.fvd_features for r in second], protocol.fvd.ddof, False, config, rng
        ),
    }
    return out | _means(truth, config, rng)


def drift_curve(records: list[VideoRecord], frames_per_chunk: int) -> list[dict[str, float | int]]:
    """Per streaming chunk (frame 0 alone, then ``frames_per_chunk`` frames each, as the causal VAE
    decodes): mean CSIM to the reference and, for generated videos, mean PSNR / LPIPS vs ground truth."""
    chunks: dict[int, dict[str, list[float]]] = {}
    for record in records:
        frame_chunk = [0 if f == 0 else 1 + (f - 1) // frames_per_chunk for f in range(record.frames)]
        for name in ("csim", "psnr", "lpips"):
            values = getattr(record, f"{name}_frames")
            if values is None:
                continue
            for f, v in enumerate(values[: record.frames].tolist()):
                chunks.setdefault(frame_chunk[f], {}).setdefault(name, []).append(v)
    curve = []
    for chunk in sorted(chunks):
        row: dict[str, float | int] = {"chunk": chunk}
        for name, values in chunks[chunk].items():
            row[name] = float(torch.tensor(values, dtype=torch.float64).mean())
        curve.append(row)
    return curve
