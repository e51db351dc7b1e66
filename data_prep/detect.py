"""Face detection behind one interface, so a stronger detector (S3FD, RetinaFace) plugs in by name.

A detector maps an RGB frame to face boxes; ``data_prep`` takes the largest box per sampled frame,
interpolates between samples and smooths the box over time (``data_prep.crop``).

``hog`` and ``cnn`` are dlib's detectors (the optional ``faces`` extra, ``rest_lightning.faces``); they
also give 68-point landmarks, which the frame checks here use (several faces, face too small, profile)
and prep stores per frame. Without the extra they fall back to ``haar`` with one warning per process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from rest_lightning import faces

log = logging.getLogger(__name__)


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


class DlibFaceDetector:
    """dlib's HOG (``kind="hog"``) or MMOD CNN (``"cnn"``) face detector, plus its 68-point landmarks.

    The frame is resized so that its long side is ``max_side`` (shrunk or enlarged: dlib's detectors find
    faces from about 80 px at that scale, so at 320 a face must span a quarter of the frame; raise
    ``prep.detect_max_side`` for smaller faces, at quadratic cost). Landmarks are fitted on the full frame.
    Measured on one core at 320 px (docs/data.md): HOG about 12 ms a frame, the CNN about 0.6 s.
    """

    def __init__(self, kind: str, max_side: int = 320) -> None:
        if kind not in faces.DETECTOR_KINDS:
            raise ValueError(f"unknown dlib detector {kind!r}; choose one of {', '.join(faces.DETECTOR_KINDS)}")
        self.kind = kind
        self.max_side = max_side
        (faces.hog_detector if kind == "hog" else faces.cnn_detector)()  # load now: fail before any video

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        h, w = frame.shape[:2]
        scale = self.max_side / max(h, w)
        small = frame
        if scale != 1.0:
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            small = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=interp)
        boxes = faces.detect_faces(small, self.kind) / scale  # (N, 4) x0, y0, x1, y1, largest first
        return [FaceBox(float(x0), float(y0), float(x1 - x0), float(y1 - y0)) for x0, y0, x1, y1 in boxes]

    def landmarks(self, frame: np.ndarray, box: FaceBox) -> np.ndarray:
        """``(68, 2)`` float32 iBUG 300-W points of the face in ``box``, in the frame's pixels."""
        return faces.landmarks68(frame, (box.x, box.y, box.x + box.w, box.y + box.h))


_fallback_logged = False


def make_detector(name: str, max_side: int, margin: float) -> FaceDetector:
    """The detector registered under ``prep.detector``; ``hog``/``cnn`` fall back to ``haar`` when the
    ``faces`` extra is missing (logged once per process)."""
    global _fallback_logged
    if name in faces.DETECTOR_KINDS:
        try:
            return DlibFaceDetector(name, max_side)
        except faces.FaceStackUnavailable as err:
            if not _fallback_logged:
                log.warning(
                    "prep.detector=%s needs the face stack (%s); using prep.detector=haar instead: no "
                    "landmarks, no several-faces/too-small/profile checks", name, err,
                )
                _fallback_logged = True
            name = "haar"
    if name == "haar":
        return HaarFaceDetector(max_side=max_side)
    if name == "center":
        return CenterFaceDetector(margin)
    raise ValueError(f"unknown prep.detector {name!r}; choose 'hog', 'cnn', 'haar' or 'center'")


# --- frame checks (dlib detectors only) -------------------------------------------------------------------

#: What a sampled frame can be, and the rejection stage a video takes when that is its main failure.
VERDICT_STAGES = {"none": "face", "several": "face_several", "small": "face_small", "profile": "face_profile"}
VERDICT_WORDS = {"none": "no face", "several": "several faces", "small": "face too small", "profile": "profile"}


def yaw_asymmetry(points: np.ndarray) -> float:
    """Signed head-turn proxy in [-1, 1] (beyond when the fit breaks) from 68 iBUG landmarks.

    Along the eye axis (so head roll does not matter): ``dl`` = nose tip (30) minus the image-left cheek
    contour (1), ``dr`` = the image-right cheek contour (15) minus the nose tip; returns
    ``(dl - dr) / (dl + dr)``. A frontal face gives about 0; as the head turns the nose tip moves toward
    one contour. On a cylinder head model with the nose tip 1.3 radii from the axis it reads 0.22 at
    10 degrees of yaw, 0.62 at 30, 0.82 at 40, 0.91 at 45 and 1 at 50 (tests/data/test_faces.py).
    """
    p = np.asarray(points, np.float64)
    axis = p[42:48].mean(0) - p[36:42].mean(0)  # image-left eye centre -> image-right eye centre
    axis /= max(float(np.linalg.norm(axis)), 1e-6)
    nose, left, right = p[30] @ axis, p[1] @ axis, p[15] @ axis
    return float((2 * nose - left - right) / max(right - left, 1e-6))


def frame_verdict(
    boxes: list[FaceBox], points: np.ndarray | None, size: int, margin: float,
    several_faces_ratio: float, max_upscale: float, max_yaw_asymmetry: float,
) -> str:
    """``"ok"`` or why a sampled frame has no usable face: ``none``, ``several``, ``small``, ``profile``.

    ``boxes`` largest first; ``points`` the largest face's 68 landmarks. Several: a second face whose side
    is at least ``several_faces_ratio`` of the largest (which one speaks is then unknown; 0 = off). Small:
    the crop (``1 + 2 * margin`` times the face side) would be enlarged more than ``max_upscale`` times to
    ``size`` (0 = off). Profile: ``|yaw_asymmetry| > max_yaw_asymmetry`` (0 = off).
    """
    if not boxes:
        return "none"
    first = max(boxes[0].w, boxes[0].h)
    if several_faces_ratio > 0 and len(boxes) > 1 and max(boxes[1].w, boxes[1].h) >= several_faces_ratio * first:
        return "several"
    if max_upscale > 0 and size > max_upscale * first * (1.0 + 2.0 * margin):
        return "small"
    if max_yaw_asymmetry > 0 and points is not None and abs(yaw_asymmetry(points)) > max_yaw_asymmetry:
        return "profile"
    return "ok"
