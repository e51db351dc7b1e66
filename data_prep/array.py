"""``rest-prep`` as N array tasks plus a merge (``cluster.array=N``; on SLURM one array job and one merge job).

Task ``i`` of ``N`` prepares a fixed, contiguous slice of the inputs (:func:`data_prep.run.plan_tasks` order,
splits assigned over all inputs) into ``<output>/parts/task-NNNNN/``: a complete rest-prep output of its
own, journaled and resumable exactly as a one-machine run (a killed task rerun skips what it finished).
The merge checks that every input was prepared by exactly one task and no sample key appears twice,
hard-links the parts' shards into the usual ``<output>/{split}/shard-NNNNNN.tar`` layout (copies where the
file system refuses links) and writes one ``manifest.json`` last. Concatenating contiguous slices keeps
each split's samples in the order a one-machine run writes them; only the shard boundaries differ.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from data_prep.config import SPLITS, PrepConfig
from data_prep.run import MANIFEST_FILE, PrepSummary, _write_outputs, plan_tasks, run_prep
from data_prep.shards import _SHARD_RE, SHARD_PATTERN, STATE_FILE, Journal, PrepState, ShardInfo

log = logging.getLogger(__name__)

PARTS_DIR = "parts"
ARRAY_FILE = "array.json"  # in each part: which task of how many wrote it
LOCK_FILE = ".lock"


def part_dir(output: str | Path, index: int) -> Path:
    return Path(output) / PARTS_DIR / f"task-{index:05d}"


def slice_bounds(n_inputs: int, index: int, count: int) -> tuple[int, int]:
    """Inputs ``[lo, hi)`` of task ``index`` of ``count``: contiguous, sizes differing by at most one."""
    if not 0 <= index < count:
        raise ValueError(f"array task {index} does not exist: cluster.array={count} has tasks 0..{count - 1}")
    return index * n_inputs // count, (index + 1) * n_inputs // count


@contextmanager
def _task_lock(part: Path, index: int) -> Iterator[None]:
    """One process per part: a second start of the same task (a resubmission while it still runs) is refused."""
    part.mkdir(parents=True, exist_ok=True)
    with open(part / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"array task {index} is running already ({part / LOCK_FILE} is locked)") from None
        yield


def run_task(cfg: PrepConfig, index: int, count: int) -> PrepSummary:
    """Prepare task ``index``'s slice of the inputs into its part folder (resumes an interrupted one)."""
    tasks = plan_tasks(cfg)
    lo, hi = slice_bounds(len(tasks), index, count)
    part = part_dir(cfg.output, index)
    marker = {"index": index, "count": count, "inputs": hi - lo, "first": lo}
    if (part / ARRAY_FILE).exists():
        earlier = json.loads((part / ARRAY_FILE).read_text())
        if earlier != marker:
            raise ValueError(
                f"{part} was written as task {earlier['index']} of {earlier['count']} over {earlier['inputs']} "
                f"inputs, not task {index} of {count} over {hi - lo}: keep cluster.array and the input as they "
                "were, or start with an empty output"
            )
    with _task_lock(part, index):
        (part / ARRAY_FILE).write_text(json.dumps(marker) + "\n")
        log.info("array task %d of %d: inputs %d..%d of %d -> %s", index, count, lo, hi - 1, len(tasks), part)
        return run_prep(replace(cfg, output=str(part)), tasks[lo:hi])


def merge_parts(cfg: PrepConfig, count: int) -> PrepSummary:
    """Check the ``count`` parts cover every input exactly once, link their shards, write the manifest.

    Raises:
        ValueError: a task has not finished (the message names them and how to rerun), an input or a
            sample key appears in two parts, or the output holds a one-machine run.
    """
    start = time.perf_counter()
    output = Path(cfg.output)
    if (output / STATE_FILE).exists():
        raise ValueError(f"{output} holds a one-machine rest-prep run ({STATE_FILE}): merge into another output")
    tasks = plan_tasks(cfg)
    unfinished: dict[int, int] = {}
    parts: list[tuple[Path, PrepState]] = []
    for index in range(count):
        lo, hi = slice_bounds(len(tasks), index, count)
        part = part_dir(output, index)
        if part.is_dir():
            with _task_lock(part, index):  # a task still running is refused, not read mid-write
                state = Journal(part).load()
        else:
            state = PrepState()
        expected = {t.path for t in tasks[lo:hi]}
        for path in state.videos:
            if path not in expected:
                raise ValueError(
                    f"{path} was prepared by task {index}, whose slice does not hold it "
                    f"(the input or cluster.array changed since): start with an empty output"
                )
        missing = expected - state.videos.keys()
        if missing or not (part / MANIFEST_FILE).exists():
            unfinished[index] = len(missing)
        parts.append((part, state))
    if unfinished:
        names = ", ".join(f"{i} ({n} inputs left)" for i, n in sorted(unfinished.items()))
        raise ValueError(
            f"array tasks not finished: {names}; rerun the same command (finished tasks are skipped) or "
            "one task by itself with step=task task=I"
        )
    seen: dict[str, int] = {}
    for index, (_, state) in enumerate(parts):
        for shard in state.shards:
            for key in shard.keys:
                if key in seen:
                    raise ValueError(f"sample {key} is in the shards of tasks {seen[key]} and {index}")
                seen[key] = index

    merged = PrepState()
    next_index = dict.fromkeys(SPLITS, 0)
    for part, state in parts:
        for shard in sorted(state.shards, key=lambda s: (s.split, s.name)):
            name = SHARD_PATTERN % next_index[shard.split]
            next_index[shard.split] += 1
            _link(part / shard.split / shard.name, output / shard.split / name)
            merged.shards.append(ShardInfo(shard.split, name, shard.count, shard.bytes, shard.keys))
        merged.videos.update(state.videos)
    _remove_stale(output, merged)

    summary = PrepSummary(videos_total=len(tasks), videos_resumed=len(tasks))
    summary.source_seconds = sum(v.get("seconds", 0.0) for v in merged.videos.values())
    summary.elapsed_s = time.perf_counter() - start
    _write_outputs(output, cfg, merged, summary, extra={"array": {"tasks": count, "parts": f"{PARTS_DIR}/"}})
    return summary


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content atomically: a hard link, or a copy where links are refused."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(dst.name + ".merging")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _remove_stale(output: Path, merged: PrepState) -> None:
    """Shards an earlier merge left that this one does not list (readers trust the manifest anyway)."""
    listed = {(s.split, s.name) for s in merged.shards}
    for split in SPLITS:
        folder = output / split
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if (_SHARD_RE.match(path.name) and (split, path.name) not in listed) or path.name.endswith(".merging"):
                path.unlink()
