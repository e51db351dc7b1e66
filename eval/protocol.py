"""Versioned evaluation protocols (``eval/protocols/<name>.yaml``): the choices that change a number.

A protocol fixes the face crop and size, the frame range, FID/FVD preprocessing and covariance, the
Sync-C/D offset search, how CSIM finds landmarks, and the names of the reference weight files. The
runner stamps every result with the protocol's name and :attr:`EvalProtocol.content_hash` (a hash of
the parsed values, so comments and key order do not change it), which tells two runs apart whose
files share a name but not their content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rest_lightning.metrics.fvd import UINT8_ROUNDINGS, UInt8Rounding
from rest_lightning.metrics.image_quality import SSIM_VARIANTS, SSIMVariant

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
HASH_CHARS = 16  # hex digits of sha256 kept in results (64 bits: no accidental collisions among protocols)

SHA256_HEX_CHARS = 64

CropMode = Literal["as_is", "center_square"]
LandmarkMode = Literal["template", "dlib68"]
CSIMReference = Literal["ref", "first_frame"]
SyncCropMode = Literal["protocol", "syncnet"]
FaceDetector = Literal["hog", "cnn"]
CROP_MODES = ("as_is", "center_square")
LANDMARK_MODES = ("template", "dlib68")
CSIM_REFERENCES = ("ref", "first_frame")
SYNC_CROP_MODES = ("protocol", "syncnet")
FACE_DETECTORS = ("hog", "cnn")


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class CropSpec:
    mode: CropMode = "as_is"
    size: int = 512


@dataclass(frozen=True)
class FrameSpec:
    start: int = 0
    max_frames: int | None = None


@dataclass(frozen=True)
class FIDSpec:
    ddof: int = 1
    frame_stride: int = 1
    image_size: int = 299


@dataclass(frozen=True)
class FVDSpec:
    clip_frames: int = 16
    clip_start: int = 0
    ddof: int = 0
    frame_size: int = 224
    uint8_rounding: UInt8Rounding = "input"  # rest_lightning.metrics.fvd: StyleGAN-V rounds before the resize only


@dataclass(frozen=True)
class SSIMSpec:
    variant: SSIMVariant = "wang_valid"  # rest_lightning.metrics.image_quality: skimage / Wang et al.


@dataclass(frozen=True)
class SyncSpec:
    vshift: int = 15
    crop: SyncCropMode = "protocol"  # protocol: the protocol frame resized to 224 (v1) | syncnet: crop_video's crop
    crop_scale: float = 0.4  # syncnet_python run_pipeline.py --crop_scale (crop: syncnet)
    smooth_kernel: int = 13  # syncnet_python crop_video medfilt kernel (crop: syncnet)


@dataclass(frozen=True)
class CSIMSpec:
    landmarks: LandmarkMode = "template"
    template_fraction: float = 0.667
    reference: CSIMReference = "ref"
    clip_negative: bool = False


@dataclass(frozen=True)
class FaceSpec:
    """The face track the Sync crop, CSIM landmarks and dlib identity use (protocol v2; dlib, ``faces`` extra)."""

    detector: FaceDetector = "hog"
    upsample: int = 0  # dlib: times the frame is doubled before detection


@dataclass(frozen=True)
class IdentitySpec:
    dlib: bool = False  # the dlib 128-d embedding distance to the reference (identity_dist, identity_match)


@dataclass(frozen=True)
class DriftSpec:
    frames_per_chunk: int = 8


@dataclass(frozen=True)
class EvalProtocol:
    """One parsed protocol file (see ``eval/protocols/hdtf_v1.yaml`` for every key's meaning)."""

    name: str
    version: int
    dataset: str
    description: str = ""
    fps: int = 25
    sample_rate: int = 16000
    crop: CropSpec = field(default_factory=CropSpec)
    frames: FrameSpec = field(default_factory=FrameSpec)
    fid: FIDSpec = field(default_factory=FIDSpec)
    fvd: FVDSpec = field(default_factory=FVDSpec)
    ssim: SSIMSpec = field(default_factory=SSIMSpec)
    sync: SyncSpec = field(default_factory=SyncSpec)
    csim: CSIMSpec = field(default_factory=CSIMSpec)
    face: FaceSpec = field(default_factory=FaceSpec)
    identity: IdentitySpec = field(default_factory=IdentitySpec)
    drift: DriftSpec = field(default_factory=DriftSpec)
    weights: dict[str, str] = field(default_factory=dict)
    weight_sha256: dict[str, tuple[str, ...]] = field(default_factory=dict)  # accepted digests per weights key
    source: str = ""  # the file it was read from (not hashed)

    def __post_init__(self) -> None:
        problems = []
        if self.crop.mode not in CROP_MODES:
            problems.append(f"crop.mode={self.crop.mode!r} is not one of {', '.join(CROP_MODES)}")
        if self.crop.size < 2 or self.crop.size % 2:
            problems.append(f"crop.size={self.crop.size} must be an even number >= 2")
        if self.frames.start < 0 or (self.frames.max_frames is not None and self.frames.max_frames < 1):
            problems.append(f"frames.start must be >= 0 and frames.max_frames >= 1 or null, got {self.frames}")
        if self.fid.ddof not in (0, 1) or self.fvd.ddof not in (0, 1):
            problems.append(f"fid.ddof / fvd.ddof must be 0 (biased) or 1 (unbiased), got {self.fid.ddof}, {self.fvd.ddof}")
        if self.fvd.uint8_rounding not in UINT8_ROUNDINGS:
            problems.append(f"fvd.uint8_rounding={self.fvd.uint8_rounding!r} is not one of {', '.join(UINT8_ROUNDINGS)}")
        if self.ssim.variant not in SSIM_VARIANTS:
            problems.append(f"ssim.variant={self.ssim.variant!r} is not one of {', '.join(SSIM_VARIANTS)}")
        for key, digests in self.weight_sha256.items():
            bad = [d for d in digests if len(d) != SHA256_HEX_CHARS or any(ch not in "0123456789abcdef" for ch in d)]
            if bad or not digests:
                problems.append(f"weight_sha256.{key} must list 64-hex-digit sha256 digests, got {list(digests)}")
        if self.fid.frame_stride < 1:
            problems.append(f"fid.frame_stride must be >= 1, got {self.fid.frame_stride}")
        if self.csim.landmarks not in LANDMARK_MODES:
            problems.append(f"csim.landmarks={self.csim.landmarks!r} is not one of {', '.join(LANDMARK_MODES)}")
        if self.csim.reference not in CSIM_REFERENCES:
            problems.append(f"csim.reference={self.csim.reference!r} is not one of {', '.join(CSIM_REFERENCES)}")
        if not 0 < self.csim.template_fraction <= 1:
            problems.append(f"csim.template_fraction must be in (0, 1], got {self.csim.template_fraction}")
        if self.sync.crop not in SYNC_CROP_MODES:
            problems.append(f"sync.crop={self.sync.crop!r} is not one of {', '.join(SYNC_CROP_MODES)}")
        if self.sync.crop_scale < 0 or self.sync.smooth_kernel < 1 or self.sync.smooth_kernel % 2 == 0:
            problems.append(f"sync.crop_scale must be >= 0 and sync.smooth_kernel odd >= 1, got {self.sync}")
        if self.face.detector not in FACE_DETECTORS or self.face.upsample < 0:
            problems.append(f"face.detector must be one of {', '.join(FACE_DETECTORS)}, upsample >= 0, got {self.face}")
        if self.drift.frames_per_chunk < 1:
            problems.append(f"drift.frames_per_chunk must be >= 1, got {self.drift.frames_per_chunk}")
        if problems:
            raise ProtocolError(f"protocol {self.source or self.name}: " + "; ".join(problems))

    @property
    def needs_faces(self) -> bool:
        """Whether scoring runs the dlib face stack (a face track per video)."""
        return self.sync.crop == "syncnet" or self.csim.landmarks == "dlib68" or self.identity.dlib

    def as_dict(self) -> dict[str, Any]:
        """The protocol's values (what is hashed), without ``source``."""
        values = dataclasses.asdict(self)
        values.pop("source")
        return values

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:HASH_CHARS]

    @property
    def min_frames(self) -> int:
        """Frames every scored video needs: FVD's clip (SyncNet's 6 frames is always less)."""
        return self.fvd.clip_start + self.fvd.clip_frames


_SECTIONS = {
    "crop": CropSpec,
    "frames": FrameSpec,
    "fid": FIDSpec,
    "fvd": FVDSpec,
    "ssim": SSIMSpec,
    "sync": SyncSpec,
    "csim": CSIMSpec,
    "face": FaceSpec,
    "identity": IdentitySpec,
    "drift": DriftSpec,
}


def available_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def protocol_path(name_or_path: str) -> Path:
    """A shipped protocol by name (``hdtf_v1``) or a YAML file by path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    shipped = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ProtocolError(
        f"protocol={name_or_path!r} is neither a shipped protocol ({', '.join(available_protocols())}) "
        "nor a .yaml file"
    )


def load_protocol(name_or_path: str) -> EvalProtocol:
    """Parse a protocol strictly: an unknown or misspelled key is an error, not a silent default."""
    path = protocol_path(name_or_path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: a protocol is a YAML mapping, got {type(raw).__name__}")
    top = {f.name for f in dataclasses.fields(EvalProtocol)} - {"source"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ProtocolError(f"{path}: unknown keys {unknown} (allowed: {sorted(top)})")
    for key in ("name", "version", "dataset"):
        if key not in raw:
            raise ProtocolError(f"{path}: the key {key!r} is required")
    values = dict(raw)
    for key, cls in _SECTIONS.items():
        section = values.get(key) or {}
        allowed = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(section) - allowed)
        if bad:
            raise ProtocolError(f"{path}: unknown keys {key}.{bad} (allowed: {sorted(allowed)})")
        values[key] = cls(**section)
    values["weights"] = {str(k): str(v) for k, v in (values.get("weights") or {}).items()}
    digests = values.get("weight_sha256") or {}
    if not isinstance(digests, dict):
        raise ProtocolError(f"{path}: weight_sha256 maps a weights key to a list of sha256 digests")
    values["weight_sha256"] = {
        str(k): tuple(str(d).lower() for d in (v if isinstance(v, list) else [v])) for k, v in digests.items()
    }
    values["description"] = str(values.get("description") or "").strip()
    protocol = EvalProtocol(**values, source=str(path))
    if path.parent == PROTOCOL_DIR and protocol.name != path.stem:
        raise ProtocolError(f"{path}: name={protocol.name!r} must equal the file name {path.stem!r}")
    return protocol
