"""Crash-safe shard output: ``webdataset.ShardWriter`` + a journal, so a rerun resumes exactly.

A shard is written as ``shard-NNNNNN.tar.partial``; when ``ShardWriter`` closes it, the file is
fsynced, a ``shard`` record (its sample keys) is appended to ``prep_state.jsonl`` and only then the
file is renamed to ``.tar``. A kill at any point therefore leaves either a ``.partial`` (deleted on
resume, its videos redone) or a journaled shard (kept; a journaled ``.partial`` is a finished shard
whose rename was cut short, so the rename is completed). Readers list shards from ``manifest.json``
and never see a ``.partial``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

log = logging.getLogger(__name__)

STATE_FILE = "prep_state.jsonl"
PARTIAL_SUFFIX = ".partial"
SHARD_PATTERN = "shard-%06d.tar"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ShardInfo:
    split: str
    name: str  # file name inside {output}/{split}/
    count: int
    bytes: int
    keys: list[str] = field(default_factory=list)


@dataclass
class PrepState:
    """What earlier runs finished, read back from the journal."""

    shards: list[ShardInfo] = field(default_factory=list)
    videos: dict[str, dict] = field(default_factory=dict)  # input path -> last "video" record

    @property
    def written_keys(self) -> set[str]:
        return {k for s in self.shards for k in s.keys}

    def next_index(self, split: str) -> int:
        indices = [int(_SHARD_RE.match(s.name).group(1)) for s in self.shards if s.split == split]
        return max(indices, default=-1) + 1


class Journal:
    """Append-only JSON-lines log with fsync after every record (a torn last line is ignored)."""

    def __init__(self, output: Path) -> None:
        self.path = output / STATE_FILE

    def load(self) -> PrepState:
        state = PrepState()
        if not self.path.exists():
            return state
        raw = self.path.read_bytes()
        good = raw[: raw.rfind(b"\n") + 1]  # drop a line torn by a kill mid-write
        if len(good) != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(len(good))
        for line in good.decode("utf-8").splitlines():
            record = json.loads(line)
            if record["event"] == "shard":
                state.shards.append(
                    ShardInfo(
                        record["split"], record["name"], record["count"], record["bytes"], record["keys"]
                    )
                )
            elif record["event"] == "video":
                state.videos[record["input"]] = record
        return state

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=True, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="ascii") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def recover(output: Path, state: PrepState) -> None:
    """Make the files on disk agree with the journal: finish journaled renames, drop the rest."""
    journaled = {(s.split, s.name) for s in state.shards}
    for info in state.shards:
        final = output / info.split / info.name
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if not final.exists() and partial.exists():
            os.replace(partial, final)
        elif not final.exists():
            raise ValueError(
                f"{final} is recorded in {STATE_FILE} but missing: restore it or start with an empty output"
            )
    for split_dir in (p for p in output.iterdir() if p.is_dir()):
        for path in split_dir.iterdir():
            if path.name.endswith(PARTIAL_SUFFIX) or (
                _SHARD_RE.match(path.name) and (split_dir.name, path.name) not in journaled
            ):
                log.info("removing unfinished shard %s left by an interrupted run", path)
                path.unlink()


class SplitWriter:
    """Writes one split's samples into journaled shards via ``webdataset.ShardWriter``."""

    def __init__(
        self,
        output: Path,
        split: str,
        journal: Journal,
        start_index: int,
        max_count: int,
        max_bytes: int,
        on_publish: Callable[[ShardInfo], None] | None = None,
    ) -> None:
        self.output = output
        self.on_publish = on_publish
        self.split = split
        self.journal = journal
        (output / split).mkdir(parents=True, exist_ok=True)
        self._keys: list[str] = []
        self.published: list[ShardInfo] = []
        self._writer = wds.ShardWriter(
            str(output / split / (SHARD_PATTERN + PARTIAL_SUFFIX)),
            maxcount=max_count,
            maxsize=max_bytes,
            post=self._publish,
            start_shard=start_index,
            verbose=0,
            encoder=False,  # samples arrive as bytes already (schema codecs)
            mtime=0.0,  # reproducible tar headers
        )

    def write(self, sample: dict) -> None:
        # ShardWriter rolls to a new shard *before* writing when the current one is full, calling
        # _publish for the full one; so the key is recorded only after that roll.
        if self._writer.count >= self._writer.maxcount or self._writer.size >= self._writer.maxsize:
            self._writer.next_stream()
        self._writer.write(sample)
        self._keys.append(sample["__key__"])

    def close(self) -> list[ShardInfo]:
        self._writer.close()
        return self.published

    def _publish(self, partial_name: str) -> None:
        partial = Path(partial_name)
        if not self._keys:  # ShardWriter opens a stream eagerly; an empty one is not a shard
            partial.unlink(missing_ok=True)
            return
        _fsync_file(str(partial))
        info = ShardInfo(
            self.split,
            partial.name[: -len(PARTIAL_SUFFIX)],
            len(self._keys),
            partial.stat().st_size,
            self._keys,
        )
        self.journal.append({"event": "shard", **info.__dict__})
        os.replace(partial, partial.with_name(info.name))
        self.published.append(info)
        self._keys = []
        if self.on_publish is not None:
            self.on_publish(info)
