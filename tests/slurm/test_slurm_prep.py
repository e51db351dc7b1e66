"""rest-prep as a real SLURM array job on the local cluster: one task killed mid-run, the merge cancelled
with it, the same command submitted again, the merged output equal to a one-machine run's."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from data_prep.array import part_dir
from data_prep.config import PrepConfig
from data_prep.run import run_prep
from data_prep.shards import STATE_FILE
from tests.data.test_prep_array import samples

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 180
PREP = dict(size=32, latent_frames=2, shard_max_count=1, h264_crf=0, val_fraction=0.34, test_fraction=0.0,
            progress=False, workers=0, seed=0)
# Task 1's first start runs this in place of rest-prep: 2 s after every sample, so the test can kill it
# mid-run (after its first video is journaled, before its second is).
SLOW_PREP = """#!/bin/bash
exec {python} -c '
import sys, time
from data_prep import shards
write = shards.SplitWriter.write
def slow_write(self, sample):
    write(self, sample)
    time.sleep(2.0)
shards.SplitWriter.write = slow_write
from rest_lightning.cli.prep import main
sys.exit(main(sys.argv[1:]))
' "$@"
"""


def journaled_videos(part: Path) -> int:
    path = part / STATE_FILE
    return sum('"event": "video"' in line for line in path.read_text().splitlines()) if path.exists() else 0


def test_array_prep_with_a_killed_task_then_resubmitted_equals_one_run(slurm_cluster, tiny_shards, tmp_path):
    raw, out = tiny_shards.parent / "raw", tmp_path / "out"
    reference = tmp_path / "one"
    run_prep(PrepConfig(input=str(raw), output=str(reference), **PREP))

    slow_bin = tmp_path / "slow-bin"
    slow_bin.mkdir()
    (slow_bin / "rest-prep").write_text(SLOW_PREP.format(python=sys.executable))
    (slow_bin / "rest-prep").chmod(0o755)
    once = tmp_path / "slowed-once"  # mkdir is atomic: only the first start of task 1 takes the slow rest-prep
    setup = f'if [ "$SLURM_ARRAY_TASK_ID" = 1 ] && mkdir {once} 2>/dev/null; then export PATH={slow_bin}:$PATH; fi'
    command = ["rest-prep", f"input={raw}", f"output={out}", "cluster=slurm", "cluster.array=3",
               "cluster.cpus_per_task=1", "cluster.time=00:10:00", "cluster.mem=1000", f"cluster.setup=['{setup}']",
               *(f"prep.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in PREP.items())]

    def submit() -> dict[str, str]:
        proc = slurm_cluster.run(*command, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "slurm" / "jobs.json").read_text())

    t0 = time.monotonic()
    first = submit()
    part = part_dir(out, 1)
    while journaled_videos(part) < 1:
        assert time.monotonic() - t0 < JOB_TIMEOUT_S, "task 1 journaled no video"
        time.sleep(0.2)
    assert slurm_cluster.run("scancel", "--signal=KILL", f"{first['array']}_1").returncode == 0
    for job in (first["array"], first["merge"]):
        slurm_cluster.wait_gone(job, JOB_TIMEOUT_S)
    killed_at = journaled_videos(part)
    merge = slurm_cluster.job_fields(first["merge"])
    print(f"\nfirst submission: task 1 killed after {killed_at} of 2 videos, {time.monotonic() - t0:.1f} s")
    assert killed_at == 1, "the kill must land mid-task"
    assert merge["JobState"] == "CANCELLED", merge  # --kill-on-invalid-dep: not pending forever
    assert not (out / "manifest.json").exists()

    t1 = time.monotonic()
    second = submit()  # the same command again
    for job in (second["array"], second["merge"]):
        slurm_cluster.wait_gone(job, JOB_TIMEOUT_S)
    print(f"second submission: tasks and merge done in {time.monotonic() - t1:.1f} s")
    merge = slurm_cluster.job_fields(second["merge"])
    logs = {i: (out / "slurm" / f"{second['array']}_{i}.out").read_text() for i in range(3)}
    assert (merge["JobState"], merge["ExitCode"]) == ("COMPLETED", "0:0"), merge
    assert "(1 done earlier, 1 now)" in logs[1], logs[1][-2000:]
    assert all("(2 done earlier, 0 now)" in logs[i] for i in (0, 2)), logs
    merged = (out / "slurm" / f"{second['merge']}.out").read_text()
    assert "merged from 3 array tasks" in merged, merged[-2000:]
    assert samples(out) == samples(reference)
