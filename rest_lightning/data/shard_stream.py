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

Several corpora (``data.cfg.sources``): each lane reads every corpus as above, with its own shard orders,
shuffle buffers and position ``(j_c, offset_c)``, and mixes them per sample as webdataset's ``RandomMix``
does: the lane's ``k``-th sample comes from corpus ``c`` with probability ``w_c / sum(w)``. :class:`CorpusMix`
draws that choice from ``(seed, rank, lane, epoch, k)``, so the lane's position is its corpora's
``(j_c, offset_c)`` plus ``k``, the draws made this epoch, and a resume is exact again. Corpus ``c >= 1`` and the
mixture seed their orders, buffers and windows with :func:`corpus_seed`; corpus 0 keeps the run seed, so a
single corpus streams as it did before mixtures existed.

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
from contextlib import ExitStack, closing
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
_MIX_STREAM = 0  # corpus_seed stream of the mixture's draws (corpus c >= 1 uses stream c, corpus 0 the run seed)


def corpus_seed(seed: int, stream: int) -> int:
    """The seed word of corpus ``stream`` (>= 1) of a mixture, or of its draws (``_MIX_STREAM``): numpy's
    ``SeedSequence`` of ``(seed, stream)``, so no two corpora share a shard order, buffer or window seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


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


class CorpusMix:
    """The corpus of the ``k``-th sample lane ``lane`` of ``rank`` draws in ``epoch``: corpus ``c`` with probability
    ``weights[c] / sum(weights)``, independently for every sample, as webdataset's ``RandomMix`` draws; but where
    ``RandomMix`` uses the process-global ``random``, draw ``k`` comes from a generator seeded by ``(seed, rank,
    lane, epoch, k)``, so it is a pure function of the lane's position (any access order, any resume)."""

    def __init__(self, weights: list[float], seed: int, rank: int, lane: int, epoch: int) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        self.cumulative = np.cumsum(weights) / weights.sum()
        self.key = (seed, rank, lane, epoch)

    def __getitem__(self, k: int) -> int:
        last = len(self.cumulative) - 1
        if last == 0:
            return 0
        u = np.random.default_rng([*self.key, k]).random()
        # side="right": u in [cumulative[c - 1], cumulative[c]) picks c; min() guards a sum rounded below 1.
        return min(int(np.searchsorted(self.cumulative, u, side="right")), last)


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
    """Where a lane begins a pass: ``offsets[c]`` samples into the ``shards[c]``-th shard of corpus ``c``'s order,
    ``draws`` samples already drawn by the lane's mixture this epoch (one entry each for a single corpus)."""

    shards: tuple[int, ...]
    offsets: tuple[int, ...]
    draws: int = 0

    @classmethod
    def beginning(cls, corpora: int) -> LaneStart:
        return cls((0,) * corpora, (0,) * corpora)


@dataclass(frozen=True)
class _Drawn:
    """A raw sample of one corpus: the ``emitted``-th of the ``shard``-th shard of its order, at ``url``;
    ``failed``: shards of that corpus abandoned since its previous sample."""

    sample: dict
    url: str
    shard: int
    emitted: int
    failed: int


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
    module docstring) from the ``corpora`` (each a split's shard list) mixed by ``weights`` (default equal).
    ``lanes`` must equal the DataLoader's worker count (1 without workers)."""

    def __init__(
        self,
        corpora: list[list[ShardSource]],
        window: WindowSpec,
        batch_size: int,
        seed: int,
        rank: int,
        epoch_steps: int,
        lanes: int,
        shuffle_buffer: int,
        weights: list[float] | None = None,
        max_skips: int = 100,  # design choice: a batch that needs more skips means a broken split
        cache_bytes: int = 0,
    ) -> None:
        weights = [1.0] * len(corpora) if weights is None else list(weights)
        if len(weights) != len(corpora) or not all(w > 0 for w in weights):
            raise ValueError(f"{len(corpora)} corpora need as many positive weights, got {weights}")
        for c, shards in enumerate(corpora):
            if sum(s.count for s in shards) == 0:
                where = "data.cfg.root" if len(corpora) == 1 else f"data.cfg.sources[{c}].root"
                raise ValueError(f"the training split holds no samples: check {where} and the prep manifest")
        self.corpora = corpora
        self.weights = weights
        self.seeds = [seed] + [corpus_seed(seed, c) for c in range(1, len(corpora))]
        self.mix_seed = corpus_seed(seed, _MIX_STREAM)
        self.window = window
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.epoch_steps = epoch_steps
        self.lanes = lanes
        self.shuffle_buffer = shuffle_buffer
        self.max_skips = max_skips
        # One cache per corpus, sharing the budget: sample keys are unique within a corpus only.
        self.decoded = [DecodedFrames(cache_bytes // len(corpora)) for _ in corpora]
        self.next_step = 0
        self.first_step = 0
        self.end_step = epoch_steps
        self.epoch = 0
        self.starts = [LaneStart.beginning(len(corpora))] * lanes  # of the current pass
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
            self.starts = [LaneStart.beginning(len(self.corpora))] * self.lanes
        self._resume = None

    def __len__(self) -> int:
        # The whole epoch, as the index reader's: Lightning counts the batches it already processed in it.
        return self.epoch_steps

    def _seed(self, corpus: int, lane: int, j: int, *rest: int) -> list[int]:
        return [self.seeds[corpus], self.rank, lane, self.epoch, j, *rest]

    def _shuffled(self, url: str, corpus: int, lane: int, j: int) -> Iterator[dict]:
        """Shard ``url`` (the ``j``-th of ``lane``'s order of ``corpus``) through its own seeded shuffle buffer."""
        samples = read_shard(url)
        if self.shuffle_buffer <= 1:
            return samples
        state = np.random.SeedSequence(self._seed(corpus, lane, j, _SHUFFLE_STREAM)).generate_state(2)
        rng = random.Random(int(state[0]) << 32 | int(state[1]))
        # initial == bufsize: the buffer fills before it emits, the same whatever the reader's speed.
        return wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(samples)

    def corpus_samples(self, corpus: int, lane: int, shard: int, offset: int) -> Iterator[_Drawn]:
        """Corpus ``corpus``'s raw samples for ``lane`` in the current epoch, from ``offset`` samples into the
        ``shard``-th shard of its order on, without end (the order cycles); nothing is opened before the first
        ``next``. A shard that fails is abandoned with a warning and counted in the next sample's ``failed``."""
        shards = self.corpora[corpus]
        order = ShardOrder(len(shards), self.seeds[corpus], self.rank, lane, self.epoch)
        j, skip = shard, offset
        failed, barren = 0, 0  # barren: shards in a row that gave no sample
        while True:
            source = shards[order[j]]
            emitted = 0
            try:
                with closing(self._shuffled(source.url, corpus, lane, j)) as samples:
                    for sample in samples:
                        emitted += 1
                        if emitted <= skip:  # resume: already consumed before the checkpoint, not decoded
                            continue
                        barren = 0
                        yield _Drawn(sample, source.url, j, emitted, failed)
                        failed = 0
                if emitted < source.count:
                    raise EOFError(f"it ended after {emitted} of the {source.count} samples the manifest lists")
            except SHARD_ERRORS as err:
                failed += 1
                barren += emitted <= skip
                log.warning("abandoning training shard %s after %d samples: %s", source.url, emitted, _reason(err))
                if barren >= len(shards):
                    raise RuntimeError(f"none of the {len(shards)} training shards could be read in a row; "
                                       f"last: {source.url}: {_reason(err)}") from err
            j, skip = j + 1, 0

    def lane_batches(self, lane: int, start: LaneStart) -> Iterator[ClipBatch]:
        """Lane ``lane``'s batches of the current epoch from ``start`` on, without end; each carries the
        position after it (``step`` filled in by the caller) and the corpus of each clip."""
        mix = CorpusMix(self.weights, self.mix_seed, self.rank, lane, self.epoch)
        shards, offsets, draws = list(start.shards), list(start.offsets), start.draws
        items, corpus_of, skipped, failed = [], [], 0, 0
        with ExitStack() as stack:  # closes every corpus' open shard when the pass ends
            readers = [stack.enter_context(closing(self.corpus_samples(c, lane, shards[c], offsets[c])))
                       for c in range(len(self.corpora))]
            while True:
                c = mix[draws]
                draws += 1
                drawn = next(readers[c])
                shards[c], offsets[c] = drawn.shard, drawn.emitted
                failed += drawn.failed
                rng = np.random.default_rng(self._seed(c, lane, drawn.shard, drawn.emitted - 1))
                try:
                    items.append(decode_item(drawn.sample, self.window, rng, self.decoded[c]))
                except ValueError as err:
                    skipped += 1
                    log.warning("skipping corrupt training sample of %s: %s", drawn.url, err)
                    if skipped > self.max_skips:
                        raise RuntimeError(f"more than {self.max_skips} corrupt samples in one batch; "
                                           f"last in {drawn.url}") from err
                    continue
                corpus_of.append(c)
                if len(items) == self.batch_size:
                    position = StreamPosition(lane, -1, tuple(shards), tuple(offsets), draws)
                    yield collate_clips(items, skipped, failed, position, corpus_of)
                    items, corpus_of, skipped, failed = [], [], 0, 0

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

    def __init__(self, lanes: int, corpora: int = 1) -> None:
        self.lanes = lanes
        self.epoch = 0
        self.starts = [LaneStart.beginning(corpora)] * lanes
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
                starts[p.lane] = LaneStart(p.shards, p.offsets, p.draws)
        return self.epoch, starts
