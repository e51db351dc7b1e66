"""The ``stream`` training source: WebDataset shards read front to back from any URL, resumable at a
(shard, offset) position. The unit of determinism is the shard, not the sample.

A rank's stream is split into ``L`` *lanes*, one per DataLoader worker (one when loading in the main
process). Batch ``g`` of epoch ``e`` (``t = g - e * epoch_steps``) is the next batch of lane ``t mod L``, so the
DataLoader's round-robin over its workers yields the batches in step order.

Lane ``l`` of rank ``r`` reads, in epoch ``e``, the shards in the order :class:`ShardOrder` gives for
``(seed, r, l, e)``: a fresh permutation of the split's shards for every pass through them (resampling without
replacement, so a short epoch still covers the corpus evenly across lanes and ranks). Each shard is opened
with webdataset (``gopen``: a local path, ``http(s)://`` through ``curl``, ``pipe:CMD``) and streamed
sequentially through a shuffle buffer (``webdataset.shuffle``) whose RNG is seeded by ``(seed, r, l, e, j)``
for the ``j``-th shard of the order. The buffer starts empty at every shard, so the lane's position after any
batch is ``(j, offset)``: ``offset`` samples of its ``j``-th shard already emitted. Re-opening that shard,
re-running its buffer and dropping the first ``offset`` samples undecoded reproduces the rest of the stream:
a resume costs at most one partial shard read, whatever the corpus size. Each batch carries its lane's
position (``ClipBatch.position``); :class:`PositionTracker` keeps them in the main process and the
DataModule saves them in the checkpoint.

Failures: a sample that does not decode is skipped and counted (``ClipBatch.skipped``); a shard that cannot
be opened, breaks off mid-read (connection dropped, truncated tar) or holds fewer samples than the manifest
says is abandoned with a warning naming its URL, counted (``ClipBatch.failed_shards``), and the lane goes
on with its next shard (the samples it already emitted stay used).
"""

from __future__ import annotations

import logging
import random
import re
import tarfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from rest_lightning.data.batch import ClipBatch, StreamPosition, collate_clips
from rest_lightning.data.datasets import DecodedFrames, WindowSpec, decode_item
from rest_lightning.data.manifest import ShardSource

log = logging.getLogger(__name__)

# Errors a shard read can end with: gopen/curl/pipe (OSError), tarfile (TarError, EOFError), webdataset's
# own checks and an unknown URL scheme (ValueError).
SHARD_ERRORS = (OSError, tarfile.TarError, EOFError, ValueError)
_SHUFFLE_STREAM = 1  # keeps the buffer's seed apart from the window-offset seeds of the same shard


class ShardOrder:
    """The ``j``-th shard (index into the split) that lane ``lane`` of ``rank`` reads in ``epoch``: pass
    ``c = j // n`` through the shards is the permutation drawn from ``(seed, rank, lane, epoch, c)``."""

    def __init__(self, n_shards: int, seed: int, rank: int, lane: int, epoch: int) -> None:
        self.n_shards = n_shards
        self.key = (seed, rank, lane, epoch)
        self._cycle = -1
        self._permutation = np.empty(0, dtype=np.int64)

    def __getitem__(self, j: int) -> int:
        cycle, index = divmod(j, self.n_shards)
        if cycle != self._cycle:
            self._permutation = np.random.default_rng([*self.key, cycle]).permutation(self.n_shards)
            self._cycle = cycle
        return int(self._permutation[index])


def read_shard(url: str) -> Iterator[dict]:
    """The samples of one tar shard, in file order (``{"__key__": ..., ext: bytes}``); raises one of
    ``SHARD_ERRORS`` if the shard cannot be opened or breaks off. Closes the stream however it ends."""
    stream = wds.gopen(url)
    try:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    finally:
        try:
            stream.close()
        except OSError as err:  # a pipe/curl that exits non-zero: the reader already saw its data end
            log.debug("closing %s: %s", url, err)


@dataclass(frozen=True)
class LaneStart:
    """Where a lane begins a pass: ``offset`` samples into the ``shard``-th shard of its order."""

    shard: int = 0
    offset: int = 0


def _reason(err: BaseException) -> str:
    """The cause of a shard error in one short line: webdataset appends the stream object and URL to an
    exception's args (``"... @ <Pipe ...>"``), which the warning names already."""
    first = str(err.args[0]) if err.args else type(err).__name__
    status = re.search(r": exit (\d+) \(read\)", first)  # webdataset's Pipe: curl / the pipe: command failed
    if status:
        return f"the reading command (curl for http, or the pipe:) exited with status {status.group(1)}"
    return first.split(" @ ", 1)[0][:300]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class TrainShardStream(IterableDataset):
    """Training batches ``g`` in ``[first_step, end_step)`` of one rank, read as lanes of shards (see the
    module docstring). ``lanes`` must equal the DataLoader's worker count (1 without workers)."""

    def __init__(
        self,
        shards: list[ShardSource],
        window: WindowSpec,
        batch_size: int,
        seed: int,
        rank: int,
        epoch_steps: int,
        lanes: int,
        shuffle_buffer: int,
        max_skips: int = 100,  # design choice: a batch that needs more skips means a broken split
        cache_bytes: int = 0,
    ) -> None:
        if sum(s.count for s in shards) == 0:
            raise ValueError("the training split holds no samples: check data.cfg.root and the prep manifest")
        self.shards = shards
        self.window = window
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.epoch_steps = epoch_steps
        self.lanes = lanes
        self.shuffle_buffer = shuffle_buffer
        self.max_skips = max_skips
        self.decoded = DecodedFrames(cache_bytes)
        self.next_step = 0
        self.first_step = 0
        self.end_step = epoch_steps
        self.epoch = 0
        self.starts = [LaneStart()] * lanes  # of the current pass
        self._resume: tuple[int, list[LaneStart]] | None = None  # (epoch, per-lane starts) to continue from

    def start_at(self, step: int, epoch: int | None = None, starts: list[LaneStart] | None = None) -> None:
        """Continue at global batch ``step`` (on resume); ``starts`` are the lanes' positions saved in
        ``epoch`` (used only if ``step`` falls in that epoch: a saved epoch that ended restarts nothing)."""
        self.next_step = step
        self._resume = (epoch, list(starts)) if starts is not None else None

    def advance(self) -> None:
        """Set the range of the next pass: from ``next_step`` to the next epoch boundary (``with_epoch``
        per rank), the lanes starting where the saved positions say, else at the epoch's beginning."""
        self.first_step = self.next_step
        self.epoch = self.first_step // self.epoch_steps
        self.end_step = (self.epoch + 1) * self.epoch_steps
        self.next_step = self.end_step
        if self._resume is not None and self._resume[0] == self.epoch:
            self.starts = self._resume[1]
        else:
            if self.first_step % self.epoch_steps and self._resume is None:
                log.warning("continuing mid-epoch at batch %d without saved stream positions: the lanes restart "
                            "epoch %d's shard order (not an exact resume)", self.first_step, self.epoch)
            self.starts = [LaneStart()] * self.lanes
        self._resume = None

    def __len__(self) -> int:
        # The whole epoch, as the index reader's: Lightning counts the batches it already processed in it.
        return self.epoch_steps

    def _seed(self, lane: int, j: int, *rest: int) -> list[int]:
        return [self.seed, self.rank, lane, self.epoch, j, *rest]

    def _shuffled(self, url: str, lane: int, j: int) -> Iterator[dict]:
        """Shard ``url`` (the ``j``-th of ``lane``'s order) through its own seeded shuffle buffer."""
        samples = read_shard(url)
        if self.shuffle_buffer <= 1:
            return samples
        state = np.random.SeedSequence(self._seed(lane, j, _SHUFFLE_STREAM)).generate_state(2)
        rng = random.Random(int(state[0]) << 32 | int(state[1]))
        # initial == bufsize: the buffer fills before it emits, the same whatever the reader's speed.
        return wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(samples)

    def lane_batches(self, lane: int, start: LaneStart) -> Iterator[ClipBatch]:
        """Lane ``lane``'s batches of the current epoch from ``start`` on, without end; each carries the
        position after it (``step`` filled in by the caller)."""
        order = ShardOrder(len(self.shards), self.seed, self.rank, lane, self.epoch)
        j, skip = start.shard, start.offset
        items, skipped, failed, barren = [], 0, 0, 0  # barren: shards in a row that gave no sample
        while True:
            source = self.shards[order[j]]
            emitted = 0
            try:
                with closing(self._shuffled(source.url, lane, j)) as samples:
                    for sample in samples:
                        emitted += 1
                        if emitted <= skip:  # resume: already consumed before the checkpoint, not decoded
                            continue
                        barren = 0
                        rng = np.random.default_rng(self._seed(lane, j, emitted - 1))
                        try:
                            items.append(decode_item(sample, self.window, rng, self.decoded))
                        except ValueError as err:
                            skipped += 1
                            log.warning("skipping corrupt training sample of %s: %s", source.url, err)
                            if skipped > self.max_skips:
                                raise RuntimeError(f"more than {self.max_skips} corrupt samples in one batch; "
                                                   f"last in {source.url}") from err
                            continue
                        if len(items) == self.batch_size:
                            yield collate_clips(items, skipped, failed, StreamPosition(lane, -1, j, emitted))
                            items, skipped, failed = [], 0, 0
                if emitted < source.count:
                    raise EOFError(f"it ended after {emitted} of the {source.count} samples the manifest lists")
            except SHARD_ERRORS as err:
                failed += 1
                barren += emitted <= skip
                log.warning("abandoning training shard %s after %d samples: %s", source.url, emitted, _reason(err))
                if barren >= len(self.shards):
                    raise RuntimeError(f"none of the {len(self.shards)} training shards could be read in a row; "
                                       f"last: {source.url}: {_reason(err)}") from err
            j, skip = j + 1, 0

    def __iter__(self) -> Iterator[ClipBatch]:
        worker, workers = _worker()
        if workers != self.lanes:
            raise RuntimeError(f"the stream has {self.lanes} lanes but runs in {workers} loader workers")
        lane = (self.first_step - self.epoch * self.epoch_steps + worker) % self.lanes
        steps = range(self.first_step + worker, self.end_step, workers)
        # zip draws the step first: once the pass is over, no extra batch is read.
        for step, batch in zip(steps, self.lane_batches(lane, self.starts[lane]), strict=False):
            batch.position.step = step
            yield batch


class PositionTracker:
    """Main-process record of the lanes' positions: the start of the current pass plus the position each
    yielded batch reports, so that the positions after any number of processed batches can be saved, even
    though the loader (and Lightning's prefetch) has already handed out batches beyond it."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.epoch = 0
        self.starts = [LaneStart()] * lanes
        self.reported: list[StreamPosition] = []  # this pass, in the order the loader yielded them

    def start_pass(self, epoch: int, starts: list[LaneStart]) -> None:
        self.epoch, self.starts, self.reported = epoch, list(starts), []

    def report(self, position: StreamPosition) -> None:
        self.reported.append(position)

    def positions(self, done: int) -> tuple[int, list[LaneStart]]:
        """(epoch, per-lane start) for continuing after ``done`` batches of the run were processed."""
        starts = list(self.starts)
        for p in self.reported:
            if p.step < done:
                starts[p.lane] = LaneStart(p.shard, p.offset)
        return self.epoch, starts
