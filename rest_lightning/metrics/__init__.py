"""Evaluation metrics as torchmetrics ``Metric``s (DESIGN §8): FID, FVD, Sync-C/D, CSIM, LPIPS, PSNR, SSIM,
and the analytic SynthTalk lip-sync / identity metrics of the synthetic corpus (no weights; issue 12).

Every network loads from a local weight file (``eval.weights.<name>``); nothing is downloaded. With
``allow_random_weights`` a metric runs on seeded random weights and labels its results uncalibrated.
Importing this package builds nothing.
"""

from rest_lightning.metrics.csim import CSIM, CSIMConfig
from rest_lightning.metrics.fid import FID, FIDConfig
from rest_lightning.metrics.frechet import FeatureStats, FrechetMetric, frechet_distance
from rest_lightning.metrics.fvd import FVD, FVDConfig
from rest_lightning.metrics.image_quality import LPIPS, PSNR, SSIM
from rest_lightning.metrics.result import MetricResult
from rest_lightning.metrics.sync import LipSync, SyncConfig, SyncScores, sync_scores
from rest_lightning.metrics.synthtalk import SynthTalkIdentity, SynthTalkLipSync
from rest_lightning.metrics.weights import MetricWeightsConfig, MissingWeightsError

__all__ = [
    "CSIM",
    "CSIMConfig",
    "FID",
    "FIDConfig",
    "FVD",
    "FVDConfig",
    "FeatureStats",
    "FrechetMetric",
    "LPIPS",
    "LipSync",
    "MetricResult",
    "MetricWeightsConfig",
    "MissingWeightsError",
    "PSNR",
    "SSIM",
    "SyncConfig",
    "SyncScores",
    "SynthTalkIdentity",
    "SynthTalkLipSync",
    "frechet_distance",
    "sync_scores",
]
