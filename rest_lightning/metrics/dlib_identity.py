"""Offline identity metric: dlib's 128-d face embedding, beside ArcFace CSIM (issue 17).

dlib's ``face_recognition_model_v1`` (a ResNet, ``dlib_face_recognition_resnet_model_v1.dat`` from the
``faces`` extra) embeds a face found by its 5-point shape predictor. dlib publishes its calibration: two
faces are the same person when the **Euclidean** distance of their embeddings is below 0.6, which scores
99.38% on the LFW benchmark (dlib.net, "High Quality Face Recognition with Deep Metric Learning",
2017-02-12; dlib-models README). Unlike ArcFace it needs no weight file outside the package index.

Per video, the reference face is compared with each scored frame:

* ``identity_dist``: mean Euclidean distance (lower is better; in dlib's units, 0.6 = its threshold);
* ``identity_match``: fraction of frames under dlib's threshold (higher is better).

Over a set, both are means over videos. Faces are located by boxes (pixels ``[x0, y0, x1, y1]``): a
detector's (``rest_lightning.faces.detect_faces``), or, for face crops such as rest-prep's, the nominal box
:func:`nominal_face_box` (the central ``face_fraction`` of the crop), which skips detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from rest_lightning import faces
from rest_lightning.metrics.preprocess import check_images, check_video
from rest_lightning.metrics.result import MetricResult, make_results

DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's threshold: 99.38% on LFW (dlib.net blog 2017-02-12)


@dataclass
class DlibIdentityConfig:
    face_fraction: float = 0.667  # rest-prep margin 0.25: the face box is 1 / (1 + 2 * 0.25) of the crop side
    frames_per_video: int | None = None  # None: every frame; k: k frames evenly spaced (validation cost)
    threshold: float = DLIB_SAME_PERSON_DISTANCE

    def __post_init__(self) -> None:
        if not 0 < self.face_fraction <= 1:
            raise ValueError(f"DlibIdentityConfig.face_fraction must be in (0, 1], got {self.face_fraction}")
        if self.frames_per_video is not None and self.frames_per_video < 1:
            raise ValueError(f"DlibIdentityConfig.frames_per_video must be >= 1 or None, got {self.frames_per_video}")


def nominal_face_box(height: int, width: int, fraction: float) -> np.ndarray:
    """``[x0, y0, x1, y1]`` of the centred square covering ``fraction`` of the shorter side of a face crop."""
    side = min(height, width) * fraction
    cx, cy = width / 2, height / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float64)


def to_uint8_rgb(images: Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` RGB in [-1, 1] -> ``(N, H, W, 3)`` uint8 (rounded, as a saved frame would be)."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def embed_faces(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """dlib descriptors ``(N, 128)`` float64 of ``images`` ``(N, H, W, 3)`` uint8 RGB, one face per image in
    ``boxes`` ``(N, 4)``."""
    return np.stack([faces.face_descriptor(image, box) for image, box in zip(images, boxes, strict=True)]).astype(np.float64)


def frame_indices(frames: int, count: int | None) -> list[int]:
    """Every frame (``count`` None or >= frames), else ``count`` evenly spaced, first and last included."""
    if count is None or count >= frames:
        return list(range(frames))
    return sorted({round(i * (frames - 1) / max(count - 1, 1)) for i in range(count)})


class DlibIdentity(Metric):
    """``identity_dist`` (lower is better) and ``identity_match`` (higher is better): dlib embedding distance
    between each video's reference face and its frames.

    ``update(video, reference, video_boxes=None, reference_boxes=None)``: video ``(B, 3, T, H, W)`` and
    reference ``(B, 3, H', W')`` RGB in [-1, 1]; boxes ``(B, T, 4)`` and ``(B, 4)`` pixels, or None for the
    nominal box of a face crop. Runs on the CPU (dlib): about 0.1 s per face on one core.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, config: DlibIdentityConfig | None = None) -> None:
        super().__init__()
        self.config = config or DlibIdentityConfig()
        faces.face_models_dir()  # refuse now, with the install hint, rather than at the first update
        self.add_state("distance_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("match_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _boxes(self, images: np.ndarray, boxes: Tensor | np.ndarray | None) -> np.ndarray:
        if boxes is None:
            box = nominal_face_box(images.shape[1], images.shape[2], self.config.face_fraction)
            return np.tile(box, (len(images), 1))
        return np.asarray(boxes, np.float64).reshape(len(images), 4)

    def frame_distances(
        self, video: Tensor, reference: Tensor, video_boxes: Tensor | np.ndarray | None = None,
        reference_boxes: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """Euclidean distance of every scored frame to its video's reference: ``(B, K)`` float64, K the
        frames kept by ``frames_per_video``."""
        check_video(video, "DlibIdentity.update video")
        check_images(reference, "DlibIdentity.update reference")
        b, _, t = video.shape[:3]
        if reference.shape[0] != b:
            raise ValueError(f"DlibIdentity: reference must have B={b} images, got {tuple(reference.shape)}")
        keep = frame_indices(t, self.config.frames_per_video)
        refs = to_uint8_rgb(reference)
        ref_embeddings = embed_faces(refs, self._boxes(refs, reference_boxes))  # (B, 128)
        out = []
        for i in range(b):
            frames = to_uint8_rgb(video[i, :, keep].transpose(0, 1))  # (K, H, W, 3)
            boxes = None if video_boxes is None else np.asarray(video_boxes, np.float64)[i][keep]
            embeddings = embed_faces(frames, self._boxes(frames, boxes))  # (K, 128)
            out.append(np.linalg.norm(embeddings - ref_embeddings[i], axis=1))
        return torch.from_numpy(np.stack(out))

    def update(self, video: Tensor, reference: Tensor, video_boxes: Tensor | np.ndarray | None = None,
               reference_boxes: Tensor | np.ndarray | None = None) -> None:
        distances = self.frame_distances(video, reference, video_boxes, reference_boxes)
        self.distance_sum += distances.mean(dim=1).sum().item()
        self.match_sum += (distances < self.config.threshold).double().mean(dim=1).sum().item()
        self.num_videos += distances.shape[0]

    def compute(self) -> dict[str, Tensor]:
        if float(self.num_videos) < 1:
            raise ValueError("DlibIdentity.compute: no videos were scored; call update first")
        return {"identity_dist": self.distance_sum / self.num_videos, "identity_match": self.match_sum / self.num_videos}

    def results(self) -> dict[str, MetricResult]:
        return make_results(self.compute(), {"identity_dist": False, "identity_match": True}, uncalibrated=False)
