"""The SyncNet crop equals syncnet_python's ``crop_video`` (run_pipeline.py@1fbfc08), transcribed below."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import signal

from rest_lightning.metrics.sync_crop import SyncCropConfig, crop_window, interpolate_track, syncnet_crops


def reference_crop_video(frames: np.ndarray, boxes: np.ndarray, crop_scale: float = 0.40) -> np.ndarray:
    """syncnet_python ``crop_video`` line by line, minus file I/O (frames in memory, crops returned)."""
    dets = {"x": [], "y": [], "s": []}
    for det in boxes:
        dets["s"].append(max((det[3] - det[1]), (det[2] - det[0])) / 2)
        dets["y"].append((det[1] + det[3]) / 2)
        dets["x"].append((det[0] + det[2]) / 2)
    dets["s"] = signal.medfilt(dets["s"], kernel_size=13)
    dets["x"] = signal.medfilt(dets["x"], kernel_size=13)
    dets["y"] = signal.medfilt(dets["y"], kernel_size=13)
    out = []
    for fidx, image in enumerate(frames):
        cs = crop_scale
        bs = dets["s"][fidx]
        bsi = int(bs * (1 + 2 * cs))
        frame = np.pad(image, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
        my = dets["y"][fidx] + bsi
        mx = dets["x"][fidx] + bsi
        face = frame[int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))]
        out.append(cv2.resize(face, (224, 224)))
    return np.stack(out)


def random_track(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """A jittering face box track inside the frame, with fractional coordinates and odd sizes."""
    side = rng.uniform(0.2, 0.6) * min(height, width) + rng.normal(0, 3, frames)
    cx = rng.uniform(0.3, 0.7) * width + rng.normal(0, 4, frames)
    cy = rng.uniform(0.3, 0.7) * height + rng.normal(0, 4, frames)
    aspect = rng.uniform(0.8, 1.2)
    return np.stack([cx - side / 2, cy - side * aspect / 2, cx + side / 2, cy + side * aspect / 2], axis=1)


@pytest.mark.parametrize(("frames", "height", "width", "seed"), [(20, 96, 128, 0), (40, 160, 120, 1), (13, 64, 64, 2)])
def test_syncnet_crops_equal_the_transcribed_reference(frames, height, width, seed) -> None:
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    boxes = random_track(rng, frames, height, width)
    ours = syncnet_crops(video, boxes)
    assert ours.shape == (frames, 224, 224, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, reference_crop_video(video, boxes))


def test_syncnet_crop_geometry_is_1_4_box_shifted_mouthward_and_padded_with_110() -> None:
    # A 100-px box centred at (200, 150) of a 300x400 frame: s = 50, bsi = int(90) = 90.
    window = crop_window(50.0, 200.0, 150.0, (300, 400))
    assert (window.bottom - window.top, window.right - window.left) == (140, 140)  # 2.8 s = 1.4x the box side
    assert (window.top, window.bottom) == (100, 240)  # s above the centre, 1.8 s below: toward the mouth
    assert (window.left, window.right) == (130, 270)  # 1.4 s either side
    # The frame's lower edge at y = 300: a box near it puts pad value 110 into the crop's bottom rows.
    frame = np.zeros((1, 300, 400, 3), np.uint8)
    box = np.array([[150.0, 200.0, 250.0, 300.0]])  # centre y 250: the crop runs to 250 + 90 = 340 > 300
    crop = syncnet_crops(frame, box, SyncCropConfig(smooth_kernel=1))
    bottom_rows = crop[0, -int(224 * 40 / 140) + 2 :]  # the last 40 of 140 source rows, away from the blend
    assert (bottom_rows == 110).all() and (crop[0, :100] == 0).all()


def test_median_filter_smooths_a_one_frame_box_jump_like_the_reference() -> None:
    frames, size = 25, 128
    video = np.random.default_rng(3).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    boxes = np.tile([32.0, 32.0, 96.0, 96.0], (frames, 1))
    jumped = boxes.copy()
    jumped[12] += 20  # one outlier detection mid-track: medfilt(13) removes it
    np.testing.assert_array_equal(syncnet_crops(video, jumped), syncnet_crops(video, boxes))
    np.testing.assert_array_equal(syncnet_crops(video, jumped), reference_crop_video(video, jumped))


def test_interpolate_track_is_linear_between_detections_and_nearest_outside() -> None:
    boxes = np.array([[0, 0, 0, 0], [10, 20, 30, 40], [0, 0, 0, 0], [20, 30, 40, 50], [0, 0, 0, 0]], float)
    detected = np.array([False, True, False, True, False])
    filled = interpolate_track(boxes, detected)
    np.testing.assert_array_equal(filled[0], boxes[1])
    np.testing.assert_array_equal(filled[2], [15, 25, 35, 45])
    np.testing.assert_array_equal(filled[4], boxes[3])
    with pytest.raises(ValueError, match="no frame"):
        interpolate_track(boxes, np.zeros(5, bool))


def test_a_track_shorter_than_half_the_median_kernel_is_refused() -> None:
    # medfilt(13) of 6 values gives 0 at the ends (zero padding): s = 0 would be an empty crop
    with pytest.raises(ValueError, match="too short"):
        syncnet_crops(np.zeros((6, 64, 64, 3), np.uint8), np.tile([16.0, 16.0, 48.0, 48.0], (6, 1)))
