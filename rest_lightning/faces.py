"""The offline face stack (issue 17): dlib's face detectors, landmark predictors and face embedding.

Everything here is optional: ``pip install 'rest-lightning[faces]'`` brings ``dlib-bin`` and
``face_recognition_models`` (the model files, about 100 MB). Without them every loader raises
:class:`FaceStackUnavailable` (an ``ImportError``) with a one-line install hint; :func:`available` asks
without raising. Models load lazily, once per process, on first use.

``face_recognition_models``' own ``__init__`` imports ``pkg_resources``, which fails on Python 3.11
without setuptools: it is never imported; its folder is found with ``importlib.util.find_spec``.

Conventions: images are ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` uint8 grey); boxes are ``(N, 4)`` float32
``[x0, y0, x1, y1]`` in pixels of that image (dlib's rectangle, right/bottom exclusive); landmarks are
``(P, 2)`` float32 ``[x, y]`` pixels, in the iBUG 300-W order for 68 points (jaw 0-16, brows 17-26, nose
27-35, right eye 36-41 / left eye 42-47 of the subject, i.e. image-left / image-right, mouth 48-67).

Licences: dlib is Boost-licensed; the 68-point predictor is trained on iBUG 300-W, whose terms exclude
commercial use (dlib-models README); the terms of the other model files are in that README.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install 'rest-lightning[faces]' (dlib-bin, face_recognition_models)"
DETECTOR_KINDS = ("hog", "cnn")
MODEL_FILES = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",  # iBUG 300-W: non-commercial terms
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
    "embedding": "dlib_face_recognition_resnet_model_v1.dat",  # 128-d, 99.38% on LFW (dlib's figure)
}


class FaceStackUnavailable(ImportError):
    """The ``faces`` extra (dlib, face_recognition_models) is not installed or incomplete."""


def _dlib():
    try:
        import dlib
    except ImportError as err:
        raise FaceStackUnavailable(f"dlib is not importable ({err}); {INSTALL_HINT}") from None
    return dlib


@functools.cache
def face_models_dir() -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models`` (its package is not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FaceStackUnavailable(f"face_recognition_models is not installed; {INSTALL_HINT}")
    folder = Path(spec.origin).parent / "models"
    missing = [name for name in MODEL_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FaceStackUnavailable(f"{folder} lacks {', '.join(missing)}; reinstall: {INSTALL_HINT}")
    return folder


def model_path(name: str) -> Path:
    """Path of one model file by its key in :data:`MODEL_FILES` (``landmarks68``, ``landmarks5``, ``cnn``,
    ``embedding``)."""
    if name not in MODEL_FILES:
        raise ValueError(f"unknown face model {name!r}; choose one of {', '.join(MODEL_FILES)}")
    return face_models_dir() / MODEL_FILES[name]


def available() -> bool:
    """True when dlib imports and every model file is present (never raises)."""
    try:
        _dlib()
        face_models_dir()
    except FaceStackUnavailable:
        return False
    return True


@functools.cache
def hog_detector():
    """dlib's HOG + linear SVM frontal-face detector (weights inside dlib)."""
    return _dlib().get_frontal_face_detector()


@functools.cache
def cnn_detector():
    """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``); finds turned and small faces HOG
    misses, about 10x slower on CPU."""
    return _dlib().cnn_face_detection_model_v1(str(model_path("cnn")))


@functools.cache
def landmark_predictor(points: int = 68):
    """dlib's shape predictor with 68 (iBUG 300-W) or 5 (eye corners and nose base) points."""
    if points not in (5, 68):
        raise ValueError(f"dlib ships 5- and 68-point landmark predictors, got points={points}")
    return _dlib().shape_predictor(str(model_path(f"landmarks{points}")))


@functools.cache
def face_embedder():
    """dlib's ResNet face embedding (``face_recognition_model_v1``): 128-d descriptors, same person when
    the Euclidean distance is below 0.6 (dlib's threshold for its 99.38% LFW accuracy)."""
    return _dlib().face_recognition_model_v1(str(model_path("embedding")))


def _image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def _rect(box):
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return _dlib().rectangle(x0, y0, x1, y1)


def detect_faces(image: np.ndarray, kind: str = "hog", upsample: int = 0) -> np.ndarray:
    """Face boxes ``(N, 4)`` float32 ``[x0, y0, x1, y1]``, largest first.

    ``kind``: ``hog`` (fast; frontal faces of about 80 px and up at ``upsample=0``) or ``cnn`` (MMOD).
    ``upsample``: times the image is doubled first (finds faces half as large per step, 4x the time).
    """
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"unknown face detector {kind!r}; choose one of {', '.join(DETECTOR_KINDS)}")
    image = _image(image)
    if kind == "hog":
        rects = list(hog_detector()(image, upsample))
    else:
        rects = [d.rect for d in cnn_detector()(image, upsample)]
    boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float32).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[np.argsort(-area, kind="stable")]


def _shape(image: np.ndarray, box, points: int):
    return landmark_predictor(points)(_image(image), _rect(box))


def landmarks(image: np.ndarray, box, points: int = 68) -> np.ndarray:
    """``(points, 2)`` float32 landmarks of the face in ``box`` (``[x0, y0, x1, y1]``)."""
    shape = _shape(image, box, points)
    return np.array([[p.x, p.y] for p in shape.parts()], np.float32)


def landmarks68(image: np.ndarray, box) -> np.ndarray:
    """``(68, 2)`` float32 iBUG 300-W landmarks of the face in ``box``."""
    return landmarks(image, box, 68)


def landmarks5(image: np.ndarray, box) -> np.ndarray:
    """``(5, 2)`` float32 landmarks in the insightface / ArcFace order (image-left eye centre, image-right
    eye centre, nose tip, image-left and image-right mouth corners), derived from the 68 points as
    :func:`five_from_68` does (dlib's own 5-point model marks eye corners and the nose base, not these)."""
    return five_from_68(landmarks68(image, box))


def five_from_68(points68: np.ndarray) -> np.ndarray:
    """``(..., 68, 2)`` -> ``(..., 5, 2)``: eye centres (mean of 36-41 and 42-47), nose tip 30, mouth
    corners 48 and 54: the five points of insightface's ArcFace template, in its order."""
    p = np.asarray(points68, np.float32)
    if p.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) landmarks, got {p.shape}")
    eyes = [p[..., 36:42, :].mean(-2), p[..., 42:48, :].mean(-2)]
    return np.stack([*eyes, p[..., 30, :], p[..., 48, :], p[..., 54, :]], axis=-2)


def face_descriptor(image: np.ndarray, box, jitters: int = 0) -> np.ndarray:
    """128-d float32 dlib embedding of the face in ``box`` (aligned by the 5-point predictor, as dlib's
    own examples do). ``jitters``: extra random crops averaged (dlib: 100 gives ~0.1% on LFW, 100x time)."""
    image = _image(image)
    if image.ndim == 2:
        image = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
    shape = _shape(image, box, 5)
    return np.array(face_embedder().compute_face_descriptor(image, shape, jitters), np.float32)
