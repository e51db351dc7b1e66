"""Face boxes -> one smoothed square crop box per frame, and the crop itself."""

from __future__ import annotations

import cv2
import numpy as np

from data_prep.detect import FaceBox


def smooth_boxes(
    detections: dict[int, FaceBox | None], frames: int, margin: float, window: int
) -> np.ndarray:
    """Square crop boxes ``(frames, 3)`` float ``[cx, cy, side]`` from sparse detections.

    Missing detections are linearly interpolated (held constant past the ends); centre and side are
    then smoothed by a centred moving average of ``window`` frames (edge-padded), so the crop does not
    jitter with the detector. ``side = max(w, h) * (1 + 2 * margin)``.
    """
    found = sorted((j, box) for j, box in detections.items() if box is not None)
    if not found:
        raise ValueError("smooth_boxes needs at least one detection")
    idx = np.array([j for j, _ in found], dtype=np.float64)
    values = np.array(
        [[b.x + b.w / 2, b.y + b.h / 2, max(b.w, b.h) * (1.0 + 2.0 * margin)] for _, b in found]
    )
    grid = np.arange(frames, dtype=np.float64)
    boxes = np.stack([np.interp(grid, idx, values[:, c]) for c in range(3)], axis=1)  # (frames, 3)
    if window > 1:
        pad = window // 2
        padded = np.pad(boxes, ((pad, window - 1 - pad), (0, 0)), mode="edge")
        kernel = np.ones(window) / window
        boxes = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(3)], axis=1)
    return boxes


def integer_box(box: np.ndarray) -> tuple[int, int, int]:
    """``[cx, cy, side]`` -> ``(x, y, side)`` integer pixels (top-left corner)."""
    side = max(int(round(box[2])), 1)
    return int(round(box[0] - side / 2)), int(round(box[1] - side / 2)), side


def crop_square(frame: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Crop ``(x, y, side)`` from ``(H, W, 3)`` uint8 (edge-replicated where it leaves the frame)
    and resize to ``(size, size, 3)`` (area filter when shrinking, cubic when enlarging)."""
    x, y, side = box
    h, w = frame.shape[:2]
    top, left = max(0, -y), max(0, -x)
    bottom, right = max(0, y + side - h), max(0, x + side - w)
    if top or left or bottom or right:
        frame = cv2.copyMakeBorder(frame, top, bottom, left, right, cv2.BORDER_REPLICATE)
        x, y = x + left, y + top
    patch = frame[y : y + side, x : x + side]
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)
