"""Random access into WebDataset tar shards through an index of member offsets: the ``index`` training
source (small local corpora) and the reader of validation and test (``data.cfg.source`` picks training's).

A shard is a plain tar whose members ``<key>.<ext>`` group into samples (the webdataset layout that
``webdataset.ShardWriter`` writes). Reading the tar headers once gives, per sample, where each
member's bytes are; a sample is then two seeks away. Random access is what makes the training stream
a pure function of (seed, rank, step) and the validation split exact per rank (see ``datasets``).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from rest_lightning.config import ConfigError
from rest_lightning.data.manifest import MANIFEST_FILE, is_url, read_manifest, split_entries


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    path: Path
    count: int  # samples the manifest says the shard holds


class ShardIndex:
    """Sample ``i`` of one shard -> ``{"__key__": key, ext: bytes, ...}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.samples: list[tuple[str, dict[str, tuple[int, int]]]] = []  # (key, {ext: (offset, size)})
        by_key: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(self.path, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = member.name.rsplit("/", 1)[-1]
                    key, _, ext = name.partition(".")  # webdataset: the key ends at the first dot
                    if key not in by_key:
                        by_key[key] = {}
                        self.samples.append((key, by_key[key]))
                    by_key[key][ext] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError):
            # A truncated or corrupt tail: keep the samples whose members were read before it.
            pass

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> dict[str, bytes | str]:
        key, members = self.samples[i]
        sample: dict[str, bytes | str] = {"__key__": key}
        with open(self.path, "rb") as f:
            for ext, (offset, size) in members.items():
                f.seek(offset)
                data = f.read(size)
                if len(data) != size:
                    raise ValueError(f"{self.path}: member {key}.{ext} is truncated")
                sample[ext] = data
        return sample


class CorpusIndex:
    """The samples of one split, numbered ``0 .. total-1`` in manifest order across its shards.

    Counts come from the manifest, so every rank agrees on ``total`` without opening a shard; a
    shard that turns out shorter (truncated, corrupt) makes its missing samples unreadable, which
    the caller turns into a skip (train) or a masked padding item (val/test).
    """

    def __init__(self, shards: list[ShardEntry]) -> None:
        self.shards = shards
        self._starts = []
        total = 0
        for shard in shards:
            self._starts.append(total)
            total += shard.count
        self.total = total
        self._open: dict[int, ShardIndex] = {}

    @classmethod
    def from_manifest(cls, root: str | Path, split: str) -> CorpusIndex:
        if is_url(str(root)):
            raise ConfigError(
                f"data.cfg.root={root} is a URL, but the random-access reader (data.cfg.source=index, and "
                "validation/test) reads local shards: use a local copy of the split or data.cfg.source=stream"
            )
        root = Path(root)
        entries = split_entries(read_manifest(root), split, str(root / MANIFEST_FILE))
        return cls([ShardEntry(root / e["path"], int(e["count"])) for e in entries])

    def locate(self, i: int) -> tuple[int, int]:
        """Global sample index -> (shard number, index inside the shard)."""
        if not 0 <= i < self.total:
            raise IndexError(f"sample {i} outside [0, {self.total})")
        lo, hi = 0, len(self._starts) - 1
        while lo < hi:  # last shard whose start <= i
            mid = (lo + hi + 1) // 2
            if self._starts[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        return lo, i - self._starts[lo]

    def read(self, i: int) -> dict[str, bytes | str]:
        """Sample ``i``; raises ``ValueError`` if its shard is missing, short or corrupt there."""
        shard, local = self.locate(i)
        if shard not in self._open:
            path = self.shards[shard].path
            if not path.exists():
                raise ValueError(f"shard {path} is missing")
            self._open[shard] = ShardIndex(path)
        index = self._open[shard]
        if local >= len(index):
            raise ValueError(f"{index.path} holds {len(index)} readable samples, sample {local} is missing")
        return index.read(local)
