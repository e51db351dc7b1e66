"""Metric networks in the layouts of their published weight files (FID Inception, I3D, SyncNet, ArcFace)."""

from rest_lightning.metrics.nets.base import FeatureExtractor
from rest_lightning.metrics.nets.fid_inception import FIDInceptionV3
from rest_lightning.metrics.nets.i3d import InceptionI3d, TorchScriptI3D
from rest_lightning.metrics.nets.iresnet import IResNet
from rest_lightning.metrics.nets.syncnet import SyncNet

__all__ = ["FIDInceptionV3", "FeatureExtractor", "IResNet", "InceptionI3d", "SyncNet", "TorchScriptI3D"]
