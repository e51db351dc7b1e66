"""Per-video scores: everything the set-level metrics and their bootstrap need, from one video.

A :class:`VideoRecord` holds a video's FID frame features, its FVD clip feature, its Sync-C/D and AV
offset, its per-frame CSIM, its per-frame dlib identity distance (protocol ``identity.dlib``) and (for
generated videos) per-frame LPIPS/PSNR/SSIM against the ground truth.

Protocols that need faces (``EvalProtocol.needs_faces``: version 2) track the face of every frame with
dlib (``rest_lightning.faces``, the ``faces`` extra): the largest detection per frame, frames without one
filled by interpolation as syncnet_python's tracker does, the rest-prep nominal box (the central
``csim.template_fraction``) when no frame has a face. That track gives the SyncNet crop
(``sync.crop: syncnet``, ``rest_lightning.metrics.sync_crop``), the 68 landmarks whose 5 points align
CSIM (``csim.landmarks: dlib68``) and the dlib identity's faces.

Set-level numbers are means over videos or Fréchet distances over the pooled features
(``eval.aggregate``), so resampling videos (bootstrap) needs only these records. Records are cached
as ``<out>/scores/<system>/<id>.pt`` with the protocol hash and the networks' fingerprint: a rerun, or
another rank, reuses them; anything else changed makes them stale and they are recomputed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from eval.manifest import Clip, ManifestError
from eval.networks import MetricSuite
from eval.protocol import EvalProtocol
from rest_lightning import faces
from rest_lightning.metrics.dlib_identity import DlibIdentity, DlibIdentityConfig, nominal_face_box
from rest_lightning.metrics.face_align import ARCFACE_TEMPLATE_112, align_faces
from rest_lightning.metrics.preprocess import video_to_frames
from rest_lightning.metrics.sync_crop import SyncCropConfig, interpolate_track, syncnet_crops

log = logging.getLogger(__name__)

ARCFACE_SIZE = 112  # ArcFace input side
PAIRED_BATCH = 16  # frames per LPIPS forward (AlexNet activations of 512x512 frames are large)
RECORD_VERSION = 1


@dataclass
class VideoRecord:
    """Scores of one video (module doc). Tensors are float64 on the CPU except the features (float32)."""

    item_id: str
    frames: int
    fid_features: Tensor  # (T', D_fid)
    fvd_features: Tensor  # (1, D_fvd)
    sync_offset: int
    sync_confidence: float
    sync_distance: float
    csim_frames: Tensor  # (T,)
    lpips_frames: Tensor | None  # (T,) vs ground truth; None for ground-truth videos
    psnr_frames: Tensor | None
    ssim_frames: Tensor | None
    identity_frames: Tensor | None = None  # (T,) dlib embedding distance to the reference (identity.dlib)
    face_detected: float | None = None  # fraction of frames with a detected face (protocols with a face track)

    def to_payload(self, stamp: str) -> dict:
        payload = {
            "stamp": stamp,
            "item_id": self.item_id,
            "frames": self.frames,
            "fid_features": self.fid_features,
            "fvd_features": self.fvd_features,
            "sync": torch.tensor([self.sync_offset, self.sync_confidence, self.sync_distance], dtype=torch.float64),
            "csim_frames": self.csim_frames,
        }
        for name in ("lpips_frames", "psnr_frames", "ssim_frames", "identity_frames"):
            value = getattr(self, name)
            if value is not None:
                payload[name] = value
        if self.face_detected is not None:
            payload["face_detected"] = torch.tensor(self.face_detected, dtype=torch.float64)
        return payload

    @classmethod
    def from_payload(cls, payload: dict) -> VideoRecord:
        sync = payload["sync"]
        return cls(
            item_id=payload["item_id"], frames=int(payload["frames"]),
            fid_features=payload["fid_features"], fvd_features=payload["fvd_features"],
            sync_offset=int(sync[0]), sync_confidence=float(sync[1]), sync_distance=float(sync[2]),
            csim_frames=payload["csim_frames"], lpips_frames=payload.get("lpips_frames"),
            psnr_frames=payload.get("psnr_frames"), ssim_frames=payload.get("ssim_frames"),
            identity_frames=payload.get("identity_frames"),
            face_detected=float(payload["face_detected"]) if "face_detected" in payload else None,
        )


def cache_stamp(protocol: EvalProtocol, suite: MetricSuite, source: Path | None) -> str:
    """What a cached record must match: record format, protocol hash, networks and (for a video file)
    its size and modification time."""
    stamp = {"version": RECORD_VERSION, "protocol": protocol.content_hash, "suite": suite.fingerprint()}
    if source is not None:
        stat = source.stat()
        stamp["source"] = [stat.st_size, stat.st_mtime_ns]
    return json.dumps(stamp, sort_keys=True)


def load_cached(path: Path, stamp: str) -> VideoRecord | None:
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("stamp") != stamp:
        return None
    return VideoRecord.from_payload(payload)


def save_record(path: Path, record: VideoRecord, stamp: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    torch.save(record.to_payload(stamp), tmp)
    tmp.replace(path)


# --- preprocessing ---------------------------------------------------------------------------------


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)``: area averaging when shrinking (no aliasing), bilinear
    when enlarging (a generator's low-resolution output brought to the protocol size)."""
    if image.shape[:2] == (size, size):
        return image
    shrinking = min(image.shape[:2]) > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def center_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def protocol_frames(frames: np.ndarray, protocol: EvalProtocol) -> np.ndarray:
    """The protocol's frame range, cropped and resized: ``(T, S, S, 3)`` uint8."""
    start, count = protocol.frames.start, protocol.frames.max_frames
    frames = frames[start : None if count is None else start + count]
    out = []
    for frame in frames:
        if protocol.crop.mode == "center_square":
            frame = center_square(frame)
        out.append(resize_square(frame, protocol.crop.size))
    return np.stack(out) if out else np.zeros((0, protocol.crop.size, protocol.crop.size, 3), np.uint8)


def protocol_image(image: np.ndarray, protocol: EvalProtocol) -> np.ndarray:
    if protocol.crop.mode == "center_square":
        image = center_square(image)
    return resize_square(image, protocol.crop.size)


def to_video_tensor(frames: np.ndarray, device: torch.device) -> Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(3, T, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(3, 0, 1, 2).float() / 127.5 - 1


def template_landmarks(size: int, fraction: float) -> Tensor:
    """The ArcFace 5 points placed on an already-aligned ``size`` x ``size`` face crop: the 112 template
    scaled to the central ``fraction`` of the crop (``csim.landmarks: template``). ``(5, 2)`` pixels."""
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    return size / 2 + (template / ARCFACE_SIZE - 0.5) * size * fraction


def aligned_faces(images: Tensor, protocol: EvalProtocol, landmarks: Tensor | None = None) -> Tensor:
    """``(N, 3, S, S)`` face crops -> ``(N, 3, 112, 112)`` ArcFace-aligned faces: by ``landmarks``
    ``(N, 5, 2)`` (``csim.landmarks: dlib68``) or the template placed on the crop (``template``)."""
    if landmarks is None:
        points = template_landmarks(images.shape[-1], protocol.csim.template_fraction)
        landmarks = points[None].expand(images.shape[0], 5, 2)
    return align_faces(images.float(), landmarks, ARCFACE_SIZE)


# --- face track (protocols with needs_faces) ----------------------------------------------------------


@dataclass
class FaceTrack:
    """Per-frame face boxes ``(T, 4)`` ``[x0, y0, x1, y1]`` and whether each was detected ``(T,)``."""

    boxes: np.ndarray
    detected: np.ndarray


def face_track(frames: np.ndarray, protocol: EvalProtocol) -> FaceTrack:
    """The largest dlib face of each frame ``(T, H, W, 3)`` uint8; gaps interpolated (module doc)."""
    boxes = np.zeros((len(frames), 4))
    detected = np.zeros(len(frames), bool)
    for t, frame in enumerate(frames):
        found = faces.detect_faces(frame, protocol.face.detector, protocol.face.upsample)
        if len(found):
            boxes[t], detected[t] = found[0], True
    if detected.any():
        return FaceTrack(interpolate_track(boxes, detected), detected)
    h, w = frames.shape[1:3]
    log.warning("no face found in any of %d frames (%dx%d): using the nominal face box of the crop", len(frames), h, w)
    return FaceTrack(np.tile(nominal_face_box(h, w, protocol.csim.template_fraction), (len(frames), 1)), detected)


def five_points(frames: np.ndarray, boxes: np.ndarray) -> Tensor:
    """ArcFace 5 points ``(T, 5, 2)`` from dlib's 68 landmarks in each frame's box."""
    points = [faces.landmarks5(frame, box) for frame, box in zip(frames, boxes, strict=True)]
    return torch.from_numpy(np.stack(points)).to(torch.float64)


def sync_video(frames: np.ndarray, track: FaceTrack | None, protocol: EvalProtocol, device: torch.device) -> Tensor:
    """What SyncNet scores, ``(3, T, H', W')`` in [-1, 1]: the protocol frames (``sync.crop: protocol``;
    ``LipSync`` resizes them to 224) or syncnet_python's crops of the face track (``syncnet``)."""
    if protocol.sync.crop == "protocol":
        return to_video_tensor(frames, device)
    assert track is not None, "sync.crop: syncnet needs the face track (EvalProtocol.needs_faces)"
    config = SyncCropConfig(crop_scale=protocol.sync.crop_scale, smooth_kernel=protocol.sync.smooth_kernel)
    return to_video_tensor(syncnet_crops(frames, track.boxes, config), device)


# --- scoring ------------------------------------------------------------------------------------------


@dataclass
class ScoringInput:
    """A test item at the protocol's frames: ground truth ``(T, S, S, 3)``, audio ``(T * spf,)``, ref."""

    item_id: str
    truth: np.ndarray
    audio: np.ndarray
    ref: np.ndarray


def scoring_input(item_id: str, clip: Clip, protocol: EvalProtocol) -> ScoringInput:
    spf = protocol.sample_rate // protocol.fps
    truth = protocol_frames(clip.video, protocol)
    start = protocol.frames.start
    audio = clip.audio[start * spf : (start + len(truth)) * spf]
    return ScoringInput(item_id, truth, audio, protocol_image(clip.ref, protocol))


def _per_frame(metric, preds: Tensor, target: Tensor) -> Tensor:
    with torch.no_grad():
        values = [metric.per_frame(p, t) for p, t in zip(preds.split(PAIRED_BATCH), target.split(PAIRED_BATCH), strict=True)]
    return torch.cat(values).to(torch.float64).cpu()


def score_video(
    suite: MetricSuite, protocol: EvalProtocol, data: ScoringInput, frames: np.ndarray | None, device: torch.device
) -> VideoRecord:
    """Score ``frames`` (a generated video at the protocol's frames, ``(T, S, S, 3)`` uint8) against the
    item, or the ground truth itself when ``frames`` is None (the real-video row)."""
    truth = data.truth
    if frames is None:
        video_np, paired = truth, False
    else:
        count = min(len(frames), len(truth))
        video_np, truth, paired = frames[:count], truth[:count], True
    count = len(video_np)
    if count < protocol.min_frames:
        raise ManifestError(
            f"item {data.item_id}: {count} frames after the protocol's frame range; protocol {protocol.name} "
            f"needs at least {protocol.min_frames} (FVD clip_start + clip_frames)"
        )
    spf = protocol.sample_rate // protocol.fps
    video = to_video_tensor(video_np, device)  # (3, T, S, S)
    frames_2d = video_to_frames(video[None])  # (T, 3, S, S)
    ref_np = data.ref if protocol.csim.reference == "ref" else data.truth[0]  # (S, S, 3) uint8
    track = ref_track = None
    if protocol.needs_faces:
        track, ref_track = face_track(video_np, protocol), face_track(ref_np[None], protocol)
    with torch.no_grad():
        fid_features = suite.fid.extract_features(frames_2d[:: protocol.fid.frame_stride]).float().cpu()
        fvd_features = suite.fvd.extract_features(video[None]).float().cpu()
        audio = torch.from_numpy(data.audio[: count * spf]).to(device)
        sync = suite.lipsync.score_video(sync_video(video_np, track, protocol, device), audio)
        reference = to_video_tensor(ref_np[None], device)[:, 0][None]  # (1, 3, S, S)
        points = ref_points = None
        if protocol.csim.landmarks == "dlib68":
            points, ref_points = five_points(video_np, track.boxes), five_points(ref_np[None], ref_track.boxes)
        face_crops = aligned_faces(frames_2d, protocol, points)  # (T, 3, 112, 112)
        ref_face = aligned_faces(reference, protocol, ref_points)  # (1, 3, 112, 112)
        csim = suite.csim.frame_similarities(face_crops.transpose(0, 1)[None], ref_face)[0].cpu()
    identity = None
    if protocol.identity.dlib:
        identity_metric = DlibIdentity(DlibIdentityConfig(face_fraction=protocol.csim.template_fraction))
        identity = identity_metric.frame_distances(video[None], reference, track.boxes[None], ref_track.boxes)[0]
    lpips = psnr = ssim = None
    if paired:
        target = video_to_frames(to_video_tensor(truth, device)[None])
        lpips = _per_frame(suite.lpips, frames_2d, target)
        psnr = _per_frame(suite.psnr, frames_2d, target)
        ssim = _per_frame(suite.ssim, frames_2d, target)
    return VideoRecord(
        item_id=data.item_id, frames=count, fid_features=fid_features, fvd_features=fvd_features,
        sync_offset=sync.offset, sync_confidence=sync.confidence, sync_distance=sync.min_distance,
        csim_frames=csim.to(torch.float64), lpips_frames=lpips, psnr_frames=psnr, ssim_frames=ssim,
        identity_frames=identity, face_detected=None if track is None else float(track.detected.mean()),
    )
