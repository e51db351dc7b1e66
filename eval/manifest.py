"""Test-set manifests: the one format ``rest-eval`` reads, and the two ways to build one.

A manifest is a JSON file::

    {"format": "rest-eval-testset", "version": 1, "name": "hdtf_test", "fps": 25, "sample_rate": 16000,
     "items": [{"id": "WDA_Barack__000003", "video": "clips/WDA_Barack__000003.mp4",
                "audio": "clips/WDA_Barack__000003.wav", "ref": "clips/WDA_Barack__000003.png",
                "ref_frame": 0, "speaker": "WDA_Barack"}, ...]}

Paths are relative to the manifest's folder (or absolute). ``video`` is the ground truth (a face crop at
any frame rate: it is read at ``fps``); ``audio`` null means the video's own audio track; ``ref`` null
means frame ``ref_frame`` of the video. ``id`` names the generated video of the item (``<id>.mp4``)
in every system's folder, so a baseline's videos are scored by putting them under those names.

* :func:`build_manifest_from_shards`: a rest-prep output split -> one mp4/wav/png per clip + manifest
  (the clip's own reference image, taken from another part of its video by rest-prep).
* :func:`build_manifest_from_videos`: a folder of talking-head videos -> manifest (audio from each
  video's track, reference = its first frame). ``python -m eval.build_manifest`` runs either.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MANIFEST_FORMAT = "rest-eval-testset"
MANIFEST_VERSION = 1
MANIFEST_NAME = "testset.json"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class ManifestError(ValueError):
    """A manifest or test-set folder that cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class TestItem:
    """One test clip (see the module doc for the fields)."""

    __test__ = False  # not a pytest class

    id: str
    video: str
    audio: str | None = None
    ref: str | None = None
    ref_frame: int = 0
    speaker: str = ""


@dataclass(frozen=True)
class TestSet:
    __test__ = False

    name: str
    fps: int
    sample_rate: int
    items: tuple[TestItem, ...]
    root: Path  # the manifest's folder; relative item paths start here
    path: Path

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.root / path


@dataclass
class Clip:
    """A test item's media at the protocol's time base.

    ``video``: ``(T, H, W, 3)`` uint8 RGB; ``audio``: ``(T * spf,)`` float32 in [-1, 1] (frame ``j`` covers
    samples ``[j * spf, (j + 1) * spf)``); ``ref``: ``(H', W', 3)`` uint8 RGB.
    """

    video: np.ndarray
    audio: np.ndarray
    ref: np.ndarray


def safe_id(text: str) -> str:
    """An item id usable as a file name on every system: letters, digits, ``-`` and ``_``."""
    return _UNSAFE.sub("_", text)


def write_manifest(path: Path, name: str, fps: int, sample_rate: int, items: list[TestItem]) -> Path:
    ids = [item.id for item in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ManifestError(f"{path}: item ids must be unique, repeated: {duplicates[:5]}")
    payload = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": name,
        "fps": fps,
        "sample_rate": sample_rate,
        "items": [asdict(item) for item in items],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_manifest(path: str | Path) -> TestSet:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ManifestError(f"test-set manifest {path} does not exist")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not JSON: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT:
        raise ManifestError(
            f"{path} is not a rest-eval test-set manifest (format {MANIFEST_FORMAT!r}); build one with "
            "`python -m eval.build_manifest`"
        )
    if payload.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {payload.get('version')} (this reader knows {MANIFEST_VERSION})")
    known = set(TestItem.__dataclass_fields__)
    items = []
    for raw in payload["items"]:
        unknown = set(raw) - known
        if unknown or "id" not in raw or "video" not in raw:
            raise ManifestError(f"{path}: item {raw} needs 'id' and 'video' and no unknown keys {sorted(unknown)}")
        items.append(TestItem(**raw))
    if not items:
        raise ManifestError(f"{path} lists no items")
    return TestSet(
        name=str(payload["name"]), fps=int(payload["fps"]), sample_rate=int(payload["sample_rate"]),
        items=tuple(items), root=path.parent, path=path,
    )


# --- building manifests ------------------------------------------------------------------------------


def is_prep_output(folder: Path) -> bool:
    """A rest-prep output folder: a ``manifest.json`` with ``splits``."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return "splits" in json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False


def build_manifest_from_shards(root: str | Path, split: str, out_dir: str | Path, name: str | None = None) -> Path:
    """Write every clip of ``split`` of a rest-prep output as ``clips/<key>.{mp4,wav,png}`` under
    ``out_dir`` and the manifest beside them; returns the manifest path. Clips already written are kept."""
    from rest_lightning.data.schema import AUDIO_KEY, META_KEY, REF_KEY, VIDEO_KEY, ClipRecord
    from rest_lightning.data.shard_index import CorpusIndex

    root, out_dir = Path(root), Path(out_dir)
    try:
        index = CorpusIndex.from_manifest(root, split)
    except ValueError as err:
        raise ManifestError(str(err)) from None
    if index.total == 0:
        raise ManifestError(f"split {split!r} of {root} holds no clips")
    clips = out_dir / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    items, fps, sample_rate = [], None, None
    for i in range(index.total):
        sample = index.read(i)
        record = ClipRecord.from_json(sample[META_KEY])
        fps, sample_rate = record.fps, record.sample_rate
        key = safe_id(str(sample["__key__"]))
        for ext, member in (("mp4", VIDEO_KEY), ("wav", AUDIO_KEY), ("png", REF_KEY)):
            target = clips / f"{key}.{ext}"
            if not target.exists():
                tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
                tmp.write_bytes(sample[member])
                tmp.replace(target)
        items.append(TestItem(
            id=key, video=f"clips/{key}.mp4", audio=f"clips/{key}.wav", ref=f"clips/{key}.png",
            ref_frame=0, speaker=record.speaker,
        ))
    return write_manifest(out_dir / MANIFEST_NAME, name or f"{root.name}_{split}", fps, sample_rate, items)


def build_manifest_from_videos(
    folder: str | Path, out: str | Path, name: str | None = None, fps: int = 25, sample_rate: int = 16000
) -> Path:
    """A manifest of every video under ``folder`` (recursively, sorted): audio from each video's own
    track, reference = its frame 0; ids from the path relative to ``folder``. Returns ``out``."""
    folder, out = Path(folder).resolve(), Path(out).resolve()
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise ManifestError(f"{folder} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    items = []
    for video in videos:
        relative = video.relative_to(folder)
        speaker = relative.parts[0] if len(relative.parts) > 1 else ""
        location = os.path.relpath(video, out.parent)
        items.append(TestItem(id=safe_id(str(relative.with_suffix(""))), video=location, speaker=speaker))
    return write_manifest(out, name or folder.name, fps, sample_rate, items)


# --- reading media ---------------------------------------------------------------------------------


def read_video_frames(path: Path, fps: int) -> np.ndarray:
    """All frames of a video at ``fps`` (nearest source frame per output time): ``(T, H, W, 3)`` uint8."""
    import av

    from data_prep.media import resample_video
    from rest_lightning.data.codecs import frame_to_rgb

    if not path.is_file():
        raise ManifestError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ManifestError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [frame_to_rgb(frame) for _, frame in resample_video(container.decode(stream), fps)]
    except av.FFmpegError as err:
        raise ManifestError(f"{path} cannot be decoded: {err}") from None
    if not frames:
        raise ManifestError(f"{path} holds no decodable frames")
    return np.stack(frames)


def _read_audio_file(path: Path, sample_rate: int) -> np.ndarray:
    from rest_lightning.streaming.media import MediaError, iter_audio_file

    try:
        pieces = list(iter_audio_file(path, sample_rate, sample_rate))
    except MediaError as err:
        raise ManifestError(str(err)) from None
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def load_clip(testset: TestSet, item: TestItem, fps: int, sample_rate: int) -> Clip:
    """The item's frames, audio (trimmed or zero-padded to whole frames) and reference image."""
    from data_prep.media import MediaError as PrepMediaError
    from data_prep.media import probe_and_decode_audio
    from rest_lightning.streaming.media import MediaError, read_image

    video_path = testset.resolve(item.video)
    spf = sample_rate // fps
    if item.audio is None:
        try:
            probe = probe_and_decode_audio(str(video_path), fps, sample_rate)
        except PrepMediaError as err:
            raise ManifestError(f"{video_path}: {err}") from None
        audio = probe.audio.astype(np.float32) / np.float32(32768)
        video = read_video_frames(video_path, fps)[: probe.frames]
    else:
        video = read_video_frames(video_path, fps)
        audio = _read_audio_file(testset.resolve(item.audio), sample_rate)
    frames = min(len(video), len(audio) // spf) if item.audio is None else len(video)
    video = video[:frames]
    audio = np.pad(audio[: frames * spf], (0, max(0, frames * spf - len(audio))))
    if item.ref is not None:
        try:
            ref = read_image(testset.resolve(item.ref))
        except MediaError as err:
            raise ManifestError(str(err)) from None
    else:
        if not 0 <= item.ref_frame < len(video):
            raise ManifestError(f"item {item.id}: ref_frame {item.ref_frame} is outside its {len(video)} frames")
        ref = video[item.ref_frame]
    return Clip(video=video, audio=audio.astype(np.float32), ref=ref)
