"""Face detection behind one interface, so a stronger detector (S3FD, RetinaFace) plugs in by name.

A detector maps an RGB frame to face boxes; ``data_prep`` takes the largest box per sampled frame,
interpolates between samples and smooths the box over time (``data_prep.crop``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np


@dataclass(frozen=True)
class FaceBox:
    """Axis-aligned face box in pixels of the frame it was found in."""

    x: float
    y: float
    w: float
    h: float

    @property
    def area(self) -> float:
        return self.w * self.h


class FaceDetector(Protocol):
    """Finds faces in one ``(H, W, 3)`` uint8 RGB frame; returns boxes in that frame's pixels."""

    def detect(self, frame: np.ndarray) -> list[FaceBox]: ...


HAAR_CASCADE = "haarcascade_frontalface_default.xml"  # OpenCV's frontal-face cascade, ships in the wheel


class HaarFaceDetector:
    """OpenCV Viola-Jones frontal-face cascade: runs offline, weights inside opencv-python.

    The frame is shrunk to ``max_side`` first (speed). The cascade is tried on the grey frame, then on
    a CLAHE and a histogram-equalised copy, stopping at the first hit: low-contrast faces (dark skin,
    dim light) that the plain grey frame misses are often found after contrast normalisation.
    """

    def __init__(
        self,
        max_side: int = 320,
        scale_factor: float = 1.05,  # design choice: finer pyramid than OpenCV's 1.1 finds more faces
        min_neighbors: int = 3,  # OpenCV default: 3 overlapping hits make a face
        min_size: int = 24,  # the cascade's own window size, px
    ) -> None:
        path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE) if hasattr(cv2, "data") else ""
        if not path or not os.path.exists(path) or not hasattr(cv2, "CascadeClassifier"):
            raise ValueError(
                f"OpenCV {cv2.__version__} ships no Haar cascades (opencv-python 5 dropped them): install "
                "'opencv-python-headless<5' or set prep.detector=center"
            )
        self._cascade = cv2.CascadeClassifier(path)
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))  # design choice: local contrast
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        for variant in (grey, self._clahe.apply(grey), cv2.equalizeHist(grey)):
            found = self._cascade.detectMultiScale(
                variant, self.scale_factor, self.min_neighbors, minSize=(self.min_size, self.min_size)
            )
            if len(found):
                return [FaceBox(x / scale, y / scale, bw / scale, bh / scale) for x, y, bw, bh in found]
        return []


class CenterFaceDetector:
    """No detection: the central square of side ``min(H, W) / (1 + 2 * margin)``, so that after the
    margin is added the crop is the largest centred square. For pre-cropped corpora."""

    def __init__(self, margin: float) -> None:
        self.margin = margin

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        h, w = frame.shape[:2]
        side = min(h, w) / (1.0 + 2.0 * self.margin)
        return [FaceBox((w - side) / 2, (h - side) / 2, side, side)]


def make_detector(name: str, max_side: int, margin: float) -> FaceDetector:
    """The detector registered under ``prep.detector``."""
    if name == "haar":
        return HaarFaceDetector(max_side=max_side)
    if name == "center":
        return CenterFaceDetector(margin)
    raise ValueError(f"unknown prep.detector {name!r}; choose 'haar' or 'center'")
