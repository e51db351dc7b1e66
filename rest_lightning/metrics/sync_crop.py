"""The SyncNet face crop as syncnet_python builds it from a face track (``run_pipeline.py``, ``crop_video``).

syncnet_python (joonson/syncnet_python@1fbfc08, metrics.md §4.3) scores a 224x224 crop around an S3FD face
track, not the whole frame. Per frame, with the track's box ``[x0, y0, x1, y1]``:

1. ``s = max(h, w) / 2`` (half the box's longer side), ``(x, y)`` = box centre; ``s``, ``x`` and ``y`` are
   each median-filtered over the track with ``scipy.signal.medfilt(kernel_size=13)`` (zero padded);
2. the frame is padded on every side by ``bsi = int(s * (1 + 2 * cs))`` pixels of value 110
   (``cs = crop_scale = 0.4``);
3. the crop is rows ``[int(y' - s), int(y' + s * (1 + 2 cs)))`` and columns
   ``[int(x' - s (1 + cs)), int(x' + s (1 + cs)))`` of the padded frame (``x' = x + bsi``, ``y' = y + bsi``):
   a 2.8 s square (1.4x the box side), its top edge s above the box centre, so the face sits high and the
   mouth and chin are in;
4. ``cv2.resize(face, (224, 224))`` (bilinear).

:func:`syncnet_crops` does exactly this, but reads only the window from the unpadded frame (the pad value
fills what lies outside), so it never allocates the padded frame; ``tests/metrics/test_sync_crop.py``
checks it equals a line-by-line transcription of the numpy code above. :func:`interpolate_track` fills
frames without a detection the way syncnet_python's tracker does (``interp1d`` over the detected frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import signal

from rest_lightning.metrics.nets.syncnet import SYNCNET_FACE_SIZE


@dataclass(frozen=True)
class SyncCropConfig:
    crop_scale: float = 0.4  # run_pipeline.py --crop_scale 0.40
    smooth_kernel: int = 13  # run_pipeline.py crop_video: signal.medfilt(..., kernel_size=13)
    pad_value: int = 110  # run_pipeline.py crop_video: np.pad(..., constant_values=(110, 110))
    size: int = SYNCNET_FACE_SIZE  # cv2.resize(face, (224, 224))

    def __post_init__(self) -> None:
        if self.crop_scale < 0 or self.smooth_kernel < 1 or self.smooth_kernel % 2 == 0 or self.size < 1:
            raise ValueError(
                "SyncCropConfig: crop_scale >= 0, an odd smooth_kernel >= 1 (medfilt) and size >= 1, got "
                f"{self.crop_scale}, {self.smooth_kernel}, {self.size}"
            )
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"SyncCropConfig: pad_value must be a uint8 value, got {self.pad_value}")


@dataclass(frozen=True)
class CropWindow:
    """One frame's crop in the coordinates of the *unpadded* frame: rows ``[top, bottom)``, columns
    ``[left, right)``; parts outside the frame are ``pad_value``."""

    top: int
    bottom: int
    left: int
    right: int


def smoothed_track(boxes: np.ndarray, config: SyncCropConfig = SyncCropConfig()) -> np.ndarray:
    """Per-frame ``(s, x, y)`` of a face track: half the longer box side and the box centre, each
    median-filtered over time like ``crop_video``.

    Args:
        boxes: ``(T, 4)`` ``[x0, y0, x1, y1]`` pixels, one box per frame of the track.

    Returns:
        ``(T, 3)`` float64 columns ``s, x, y``.
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(f"face track boxes must be (T, 4) [x0, y0, x1, y1] with T >= 1, got {boxes.shape}")
    if len(boxes) <= config.smooth_kernel // 2:
        # medfilt zero-pads: with T <= kernel // 2 the median of the end windows is a padding zero (s = 0).
        raise ValueError(
            f"SyncNet crop: a face track of {len(boxes)} frames is too short for medfilt(kernel_size="
            f"{config.smooth_kernel}); it needs more than {config.smooth_kernel // 2} (syncnet_python: 100)"
        )
    half_side = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    columns = [signal.medfilt(v, kernel_size=config.smooth_kernel) for v in (half_side, centre_x, centre_y)]
    return np.stack(columns, axis=1)


def crop_window(half_side: float, centre_x: float, centre_y: float, frame_shape: tuple[int, int],
                config: SyncCropConfig = SyncCropConfig()) -> CropWindow:
    """The crop of one frame (``frame_shape`` = (H, W)), with crop_video's float order and ``int()``
    truncation; the slice ends are clipped to the padded frame as numpy slicing clips them."""
    cs, bs = config.crop_scale, half_side
    bsi = int(bs * (1 + 2 * cs))  # the pad width
    my, mx = centre_y + bsi, centre_x + bsi  # centre in the padded frame
    top, bottom = int(my - bs), int(my + bs * (1 + 2 * cs))
    left, right = int(mx - bs * (1 + cs)), int(mx + bs * (1 + cs))
    if top < 0 or left < 0:
        # Negative starts would wrap around in the reference's slicing: the box centre is off the frame.
        raise ValueError(f"SyncNet crop: box centre ({centre_x:.1f}, {centre_y:.1f}) with s={bs:.1f} lies off the frame")
    height, width = frame_shape[0] + 2 * bsi, frame_shape[1] + 2 * bsi
    bottom, right = min(bottom, height), min(right, width)
    if bottom <= top or right <= left:
        raise ValueError(f"SyncNet crop: empty window for s={bs}, centre ({centre_x}, {centre_y})")
    return CropWindow(top - bsi, bottom - bsi, left - bsi, right - bsi)


def cut_window(frame: np.ndarray, window: CropWindow, pad_value: int) -> np.ndarray:
    """``frame[top:bottom, left:right]`` of ``(H, W, C)`` uint8, filled with ``pad_value`` off the frame."""
    h, w = frame.shape[:2]
    out = np.full((window.bottom - window.top, window.right - window.left, frame.shape[2]), pad_value, frame.dtype)
    rows = slice(max(window.top, 0), min(window.bottom, h))
    cols = slice(max(window.left, 0), min(window.right, w))
    if rows.stop > rows.start and cols.stop > cols.start:
        out[rows.start - window.top : rows.stop - window.top, cols.start - window.left : cols.stop - window.left] = (
            frame[rows, cols]
        )
    return out


def syncnet_crops(frames: np.ndarray, boxes: np.ndarray, config: SyncCropConfig = SyncCropConfig()) -> np.ndarray:
    """SyncNet crops of a face track.

    Args:
        frames: ``(T, H, W, 3)`` uint8 (any channel order; it is kept).
        boxes: ``(T, 4)`` ``[x0, y0, x1, y1]`` face box of every frame (see :func:`interpolate_track`).

    Returns:
        ``(T, size, size, 3)`` uint8.
    """
    if frames.ndim != 4 or frames.dtype != np.uint8 or len(frames) != len(boxes):
        raise ValueError(
            f"syncnet_crops needs (T, H, W, C) uint8 frames and (T, 4) boxes, got {frames.dtype} {frames.shape} "
            f"and {np.shape(boxes)}"
        )
    track = smoothed_track(boxes, config)
    crops = []
    for frame, (half_side, centre_x, centre_y) in zip(frames, track, strict=True):
        window = crop_window(half_side, centre_x, centre_y, frame.shape[:2], config)
        crops.append(cv2.resize(cut_window(frame, window, config.pad_value), (config.size, config.size)))
    return np.stack(crops)


def interpolate_track(boxes: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Fill the boxes of frames without a detection: linear in time between detected frames (syncnet_python
    ``track_shot``: ``interp1d`` per coordinate), the nearest detection before the first / after the last.

    Args:
        boxes: ``(T, 4)``; rows where ``detected`` is False are ignored.
        detected: ``(T,)`` bool, at least one True.

    Returns:
        ``(T, 4)`` float64.
    """
    boxes, detected = np.asarray(boxes, np.float64), np.asarray(detected, bool)
    if not detected.any():
        raise ValueError("interpolate_track: no frame has a detected face")
    frames = np.arange(len(boxes))
    return np.stack([np.interp(frames, frames[detected], boxes[detected, k]) for k in range(4)], axis=1)
