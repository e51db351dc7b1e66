"""dlib identity metric and dlib-landmark CSIM alignment on real faces available offline (issue 17).

Faces: scikit-image's ``astronaut`` (Eileen Collins) and matplotlib's ``grace_hopper`` sample photo, both
shipped inside installed wheels. Calibration is dlib's published one (same person below 0.6 Euclidean,
99.38% on LFW); no threshold here comes from a run of ours.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from rest_lightning import faces
from rest_lightning.metrics.dlib_identity import (
    DLIB_SAME_PERSON_DISTANCE,
    DlibIdentity,
    DlibIdentityConfig,
    frame_indices,
    nominal_face_box,
)
from rest_lightning.metrics.face_align import arcface_template, similarity_transform

pytestmark = pytest.mark.skipif(not faces.available(), reason="needs the faces extra (dlib, face_recognition_models)")

REST_PREP_MARGIN = 0.25  # data_prep PrepConfig.margin: crop side = (1 + 2 * margin) x the face box


def photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    hopper = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    return {"astronaut": skimage.data.astronaut(), "hopper": hopper}


def nearest_face(image: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """The detection closest to where the face is known to be (astronaut's suit patch is a second 'face')."""
    boxes = faces.detect_faces(image, "hog", 0)
    if len(boxes) == 0:
        boxes = faces.detect_faces(image, "hog", 1)
    assert len(boxes), "no face found"
    distance = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - centre[0], (boxes[:, 1] + boxes[:, 3]) / 2 - centre[1])
    return boxes[np.argmin(distance)]


def augmented(image: np.ndarray) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """Flip, crop, down/up-scale, brightness and blur of one photo, each with its face centre."""
    box = faces.detect_faces(image, "hog", 0)[0]
    h, w = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    dark = np.clip(image.astype(np.float32) * 0.7, 0, 255).astype(np.uint8)
    return [
        (image, (cx, cy)),
        (np.ascontiguousarray(image[:, ::-1]), (w - cx, cy)),
        (np.ascontiguousarray(image[h // 10 :, w // 12 : w - w // 12]), (cx - w // 12, cy - h // 10)),
        (cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA), (cx * 0.6, cy * 0.6)),
        (cv2.resize(image, None, fx=1.3, fy=1.3, interpolation=cv2.INTER_LINEAR), (cx * 1.3, cy * 1.3)),
        (dark, (cx, cy)),
        (cv2.GaussianBlur(image, (0, 0), 2), (cx, cy)),
    ]


def rest_prep_crop(image: np.ndarray, size: int) -> np.ndarray:
    """A rest-prep-style face crop: the detector box widened by the margin on each side, resized."""
    x0, y0, x1, y1 = faces.detect_faces(image, "hog", 0)[0]
    side = max(x1 - x0, y1 - y0) * (1 + 2 * REST_PREP_MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
    crop = image[max(top, 0) : top + int(side), max(left, 0) : left + int(side)]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def embeddings() -> dict[str, list[np.ndarray]]:
    return {
        name: [faces.face_descriptor(img, nearest_face(img, centre)) for img, centre in augmented(photo)]
        for name, photo in photos().items()
    }


def test_dlib_distance_separates_real_identities_under_augmentation(embeddings) -> None:
    same = [np.linalg.norm(a - b) for e in embeddings.values() for a, b in itertools.combinations(e, 2)]
    different = [np.linalg.norm(a - b) for a, b in itertools.product(embeddings["astronaut"], embeddings["hopper"])]
    # dlib's published operating point: the same person stays under 0.6 through flips, crops, scale, light, blur
    assert max(same) < DLIB_SAME_PERSON_DISTANCE
    # and every different-person pair is farther than every same-person pair
    assert min(different) > max(same)
    assert np.median(different) > DLIB_SAME_PERSON_DISTANCE


def tensor_video(frames: np.ndarray) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(1, 3, T, H, W)`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def test_dlib_identity_metric_on_rest_prep_crops_with_the_nominal_box() -> None:
    pics = photos()
    crops = {name: rest_prep_crop(p, 192) for name, p in pics.items()}
    # a 'video': the astronaut crop, flipped and darkened frames
    frames = np.stack([crops["astronaut"], crops["astronaut"][:, ::-1], (crops["astronaut"] * 0.8).astype(np.uint8)])
    video = tensor_video(np.ascontiguousarray(frames))
    same_ref = tensor_video(crops["astronaut"][None])[:, :, 0]
    other_ref = tensor_video(crops["hopper"][None])[:, :, 0]
    metric = DlibIdentity(DlibIdentityConfig(face_fraction=1 / (1 + 2 * REST_PREP_MARGIN)))
    same = metric.frame_distances(video, same_ref)
    other = metric.frame_distances(video, other_ref)
    assert same.shape == (1, 3) and (same < other).all()
    metric.update(torch.cat([video, video]), torch.cat([same_ref, other_ref]))
    result = {k: r.value for k, r in metric.results().items()}
    # one video all matches, one none: the set means are 0.5 and the mean of the two videos' distances
    assert result["identity_match"] == pytest.approx(0.5)
    assert result["identity_dist"] == pytest.approx(float((same.mean() + other.mean()) / 2))
    assert not any(r.uncalibrated for r in metric.results().values())


def test_dlib68_five_points_fit_the_arcface_template_better_than_the_template_on_the_crop() -> None:
    crop = rest_prep_crop(photos()["astronaut"], 256)
    fraction = 1 / (1 + 2 * REST_PREP_MARGIN)
    points = torch.from_numpy(faces.landmarks5(crop, nominal_face_box(256, 256, fraction))).double()
    template = arcface_template(112)
    placed = 128 + (template / 112 - 0.5) * 256 * fraction  # eval.scoring.template_landmarks(256, fraction)

    def residual(source: torch.Tensor) -> float:
        """Mean pixel error (112 crop) of the true points after the alignment fitted to ``source``."""
        matrix = similarity_transform(source, template)
        mapped = points @ matrix[:, :2].T + matrix[:, 2]
        return float((mapped - template).norm(dim=1).mean())

    # Aligning by the detected points leaves only the template's own shape misfit; placing the template
    # on the crop adds the face's offset in its crop.
    assert residual(points) < residual(placed)
    assert residual(points) < 0.1 * 112  # the fit itself: within a tenth of the crop


def test_frame_indices_spread_evenly_with_both_ends() -> None:
    assert frame_indices(17, 4) == [0, 5, 11, 16]
    assert frame_indices(3, 4) == [0, 1, 2]
    assert frame_indices(9, None) == list(range(9))
    assert frame_indices(9, 1) == [0]
