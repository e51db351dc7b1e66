"""``run_prep(PrepConfig) -> PrepSummary``: the whole prep, parallel and resumable (DESIGN §6)."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from data_prep.config import SPLITS, PrepConfig
from data_prep.process import VideoResult, VideoTask, process_video, video_id_for
from data_prep.shards import Journal, PrepState, ShardInfo, SplitWriter, recover
from rest_lightning.data.schema import SCHEMA_VERSION, sample_key

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
REJECTED_FILE = "rejected.jsonl"
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")


@dataclass
class PrepSummary:
    """What a run did (this run) and what the output holds (all runs)."""

    videos_total: int = 0  # inputs considered
    videos_processed: int = 0  # processed by this run (written or rejected)
    videos_resumed: int = 0  # skipped because an earlier run finished them
    rejected: int = 0  # videos, all runs
    rejected_clips: int = 0  # clips of accepted videos dropped by the lip-sync filter, all runs
    clips_written: int = 0  # by this run
    clips_total: int = 0  # in the output, all runs
    shards_total: int = 0
    source_seconds: float = 0.0  # seconds of source video processed by this run
    elapsed_s: float = 0.0
    clips_per_split: dict[str, int] = field(default_factory=dict)
    # Videos per rejection stage, and, under "lipsync", clips the lip-sync filter dropped (all runs).
    rejected_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False when the output holds no clip at all (the CLI exits non-zero then)."""
        return self.clips_total > 0


def _tool_version() -> str:
    try:
        return metadata.version("rest-lightning")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def list_inputs(cfg: PrepConfig) -> list[tuple[str, str]]:
    """``(path, speaker)`` for every input, sorted by path bytes (deterministic, any file name).

    Folder input: speaker = first folder below the root (``root/spk/x.mp4``) or, for files at the
    root, the video itself. Manifest: ``.txt`` one path a line, or ``.jsonl`` with ``path`` and
    optional ``speaker``; relative paths are relative to the manifest.
    """
    src = Path(cfg.input)
    found: list[tuple[str, str]] = []
    if src.is_dir():
        root = os.fsencode(src)
        for dirpath, _, files in os.walk(root):
            for name in files:
                if os.path.splitext(name)[1].lower().decode("ascii", "replace") in VIDEO_EXTENSIONS:
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, root)
                    parts = rel.split(os.sep.encode())
                    speaker = os.fsdecode(parts[0]) if len(parts) > 1 else ""
                    found.append((os.fsdecode(full), speaker))
    elif src.is_file():
        for line in src.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            line = line.strip()
            if not line:
                continue
            if src.suffix == ".jsonl":
                entry = json.loads(line)
                path, speaker = entry["path"], str(entry.get("speaker", ""))
            else:
                path, speaker = line, ""
            found.append((str(src.parent / path) if not os.path.isabs(path) else path, speaker))
    else:
        raise ValueError(f"input={cfg.input!r} is neither a folder nor a manifest file: fix input=")
    found.sort(key=lambda item: os.fsencode(item[0]))
    return found[: cfg.limit_videos] if cfg.limit_videos else found


def assign_splits(groups: list[str], cfg: PrepConfig) -> dict[str, str]:
    """Group (speaker or video id) -> split. Groups are ordered by a seeded hash; the first
    ``round(val_fraction * n)`` go to val, the next to test (at least one each when the fraction is
    positive and there are 3+ groups), the rest to train. No group spans two splits."""
    unique = sorted(
        set(groups),
        key=lambda g: hashlib.sha1(f"{cfg.seed}:{g}".encode("utf-8", "surrogateescape")).hexdigest(),
    )
    n = len(unique)

    def count(fraction: float) -> int:
        k = round(fraction * n)
        return max(k, 1) if fraction > 0 and n >= 3 else k

    n_val, n_test = count(cfg.val_fraction), count(cfg.test_fraction)
    return {
        g: ("val" if i < n_val else "test" if i < n_val + n_test else "train") for i, g in enumerate(unique)
    }


def plan_tasks(cfg: PrepConfig) -> list[VideoTask]:
    """Every input of ``cfg`` with its video id, speaker and split, in the order a run processes them."""
    inputs = list_inputs(cfg)
    root = os.fsencode(cfg.input) if Path(cfg.input).is_dir() else os.fsencode(str(Path(cfg.input).parent))
    tasks = []
    for path, speaker in inputs:
        rel = os.fsdecode(os.path.relpath(os.fsencode(path), root))
        video_id = video_id_for(rel)
        tasks.append((path, video_id, speaker or video_id))
    groups = [spk if cfg.split_by == "speaker" else vid for _, vid, spk in tasks]
    split_of = assign_splits(groups, cfg)
    return [VideoTask(p, vid, spk, split_of[g]) for (p, vid, spk), g in zip(tasks, groups, strict=True)]


class _Progress:
    """Tracks which videos have all their clips inside published shards."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.pending: dict[str, set[str]] = {}  # input -> keys not yet in a published shard
        self.records: dict[str, dict] = {}

    def expect(self, record: dict, keys: list[str]) -> None:
        self.records[record["input"]] = record
        self.pending[record["input"]] = set(keys)
        self._flush(record["input"])

    def published(self, info: ShardInfo) -> None:
        keys = set(info.keys)
        for path in list(self.pending):
            self.pending[path] -= keys
            self._flush(path)

    def _flush(self, path: str) -> None:
        if not self.pending[path]:
            self.journal.append(self.records[path])
            del self.pending[path]


def run_prep(cfg: PrepConfig, tasks: list[VideoTask] | None = None) -> PrepSummary:
    """Prepare ``cfg.input`` into shards under ``cfg.output``; resumes an interrupted run.

    ``tasks``: only these inputs (an array task's slice of :func:`plan_tasks`; their splits were assigned
    over all inputs, so a speaker never spans two splits whichever task holds it).
    """
    start = time.perf_counter()
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    journal = Journal(output)
    state = journal.load()
    recover(output, state)
    tasks = plan_tasks(cfg) if tasks is None else tasks
    todo = [t for t in tasks if t.path not in state.videos]
    summary = PrepSummary(videos_total=len(tasks), videos_resumed=len(tasks) - len(todo))
    written = state.written_keys
    progress = _Progress(journal)
    writers: dict[str, SplitWriter] = {}

    def writer(split: str) -> SplitWriter:
        if split not in writers:
            writers[split] = SplitWriter(
                output,
                split,
                journal,
                state.next_index(split),
                cfg.shard_max_count,
                cfg.shard_max_bytes,
                on_publish=progress.published,
            )
        return writers[split]

    work = partial(_work, cfg=cfg, written=frozenset(written))
    bar = tqdm(
        total=len(tasks),
        initial=summary.videos_resumed,
        unit="video",
        disable=not cfg.progress,
        desc="rest-prep",
        dynamic_ncols=True,
    )
    try:
        for result in _map(work, todo, cfg.workers):
            summary.videos_processed += 1
            record = {
                "event": "video",
                "input": result.task.path,
                "video_id": result.task.video_id,
                "speaker": result.task.speaker,
                "split": result.task.split,
            }
            if result.rejected:
                record.update(status="rejected", stage=result.rejected_stage, reason=result.rejected_reason)
                progress.expect(record, [])
            else:
                keys = [s["__key__"] for s in result.samples]
                record.update(
                    status="done", clips=len(keys), seconds=result.seconds, face_hit_rate=result.face_hit_rate
                )
                if result.clips_rejected:
                    record["clips_rejected"] = result.clips_rejected
                progress.expect(record, keys)
                for sample in result.samples:
                    writer(result.task.split).write(sample)
                summary.clips_written += len(keys)
                summary.source_seconds += result.seconds
            bar.update(1)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    summary.elapsed_s = time.perf_counter() - start
    _write_outputs(output, cfg, journal.load(), summary)
    return summary


def _work(task: VideoTask, cfg: PrepConfig, written: frozenset[str]) -> VideoResult:
    # Keys already in published shards (a video cut by a kill mid-way) are not written twice.
    skip = frozenset(k for k in written if k.startswith(sample_key(task.video_id, 0)[:-6]))
    return process_video(task, cfg, skip)


def _map(fn, tasks: list[VideoTask], workers: int):
    if workers <= 1:
        yield from map(fn, tasks)
        return
    # spawn: PyAV/FFmpeg threads do not survive fork safely; ordered imap keeps shards deterministic.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(fn, tasks, chunksize=1)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + PARTIAL_TMP)
    tmp.write_text(text, encoding="ascii")
    os.replace(tmp, path)


PARTIAL_TMP = ".tmp"


def _write_outputs(
    output: Path, cfg: PrepConfig, state: PrepState, summary: PrepSummary, extra: dict | None = None
) -> None:
    clip_seconds = cfg.clip_frames / cfg.fps
    splits = {}
    for split in SPLITS:
        shards = [s for s in state.shards if s.split == split]
        clips = sum(s.count for s in shards)
        videos = [v for v in state.videos.values() if v["split"] == split and v["status"] == "done"]
        splits[split] = {
            "shards": [{"path": f"{split}/{s.name}", "count": s.count, "bytes": s.bytes} for s in shards],
            "clips": clips,
            "videos": len(videos),
            "speakers": len({v["speaker"] for v in videos}),
            # The names, so that a held-out split can be checked against train from the manifest alone.
            "speaker_names": sorted({v["speaker"] for v in videos}),
            "hours": clips * clip_seconds / 3600.0,
        }
        summary.clips_per_split[split] = clips
    rejected = [v for v in state.videos.values() if v["status"] == "rejected"]
    for v in rejected:
        summary.rejected_by_stage[v["stage"]] = summary.rejected_by_stage.get(v["stage"], 0) + 1
    summary.rejected = len(rejected)
    clips_rejected = [
        {"input": v["input"], **c} for v in state.videos.values() if v["status"] == "done"
        for c in v.get("clips_rejected", [])
    ]
    for c in clips_rejected:
        summary.rejected_by_stage[c["stage"]] = summary.rejected_by_stage.get(c["stage"], 0) + 1
    summary.rejected_clips = len(clips_rejected)
    summary.clips_total = sum(s.count for s in state.shards)
    summary.shards_total = len(state.shards)
    manifest = {
        "tool": "rest-prep",
        "tool_version": _tool_version(),
        "schema_version": SCHEMA_VERSION,
        "media": {
            "fps": cfg.fps,
            "sample_rate": cfg.sample_rate,
            "samples_per_frame": cfg.media.samples_per_frame,
            "clip_frames": cfg.clip_frames,
            "latent_frames": cfg.latent_frames,
            "size": cfg.size,
        },
        "splits": splits,
        "clips": summary.clips_total,
        "hours": summary.clips_total * clip_seconds / 3600.0,
        "videos": sum(1 for v in state.videos.values() if v["status"] == "done"),
        "rejected": summary.rejected,
        "rejected_clips": summary.rejected_clips,
        "rejected_by_stage": summary.rejected_by_stage,
        "config": asdict(cfg),
        **(extra or {}),
    }
    _atomic_write(output / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=True))
    lines = [
        json.dumps({"input": v["input"], "stage": v["stage"], "reason": v["reason"]}, ensure_ascii=True)
        for v in rejected
    ] + [json.dumps(c, ensure_ascii=True) for c in clips_rejected]  # a clip line has "clip", "key", scores
    _atomic_write(output / REJECTED_FILE, "".join(line + "\n" for line in lines))
