"""rest-prep as array tasks plus a merge (cluster.array=N) gives a one-machine run's output, survives a kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from data_prep.array import merge_parts, part_dir, run_task, slice_bounds
from data_prep.config import SPLITS, PrepConfig
from data_prep.run import run_prep
from rest_lightning.cli.prep import main as prep_main
from rest_lightning.data.shard_index import CorpusIndex

_KILL_TASK = """
import os, signal, sys
from data_prep import shards
from data_prep.array import run_task
from data_prep.config import PrepConfig
write, count = shards.SplitWriter.write, [0]
def write_then_die(self, sample):
    write(self, sample)
    count[0] += 1
    if count[0] == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
shards.SplitWriter.write = write_then_die
cfg = PrepConfig(input=sys.argv[1], output=sys.argv[2], **eval(sys.argv[4]))
run_task(cfg, int(sys.argv[5]), int(sys.argv[6]))
"""


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory, prep_kwargs):
    """A one-machine run to compare with, lossless: libx264's lossy output differs from run to run."""
    cfg = PrepConfig(input=str(corpus[0].parent.parent), output=str(tmp_path_factory.mktemp("one")),
                     **{**prep_kwargs, "h264_crf": 0})
    return cfg, run_prep(cfg)


def samples(root: Path) -> dict[str, list[tuple]]:
    """Per split, every sample in manifest order: its key and its members' bytes."""
    out = {}
    for split in SPLITS:
        index = CorpusIndex.from_manifest(root, split)
        out[split] = [tuple(sorted(index.read(i).items())) for i in range(index.total)]
    return out


def test_slices_are_contiguous_and_cover_every_input_once():
    for n in (0, 1, 5, 6, 7, 100):
        for count in (1, 2, 3, 7):
            bounds = [slice_bounds(n, i, count) for i in range(count)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    with pytest.raises(ValueError, match="tasks 0..2"):
        slice_bounds(6, 3, 3)


def test_three_tasks_and_the_merge_equal_a_one_machine_run(prepared, tmp_path):
    one_cfg, one = prepared
    cfg = replace(one_cfg, output=str(tmp_path / "out"))
    parts = [run_task(cfg, i, 3) for i in range(3)]
    assert [p.videos_processed for p in parts] == [2, 2, 2]
    merged = merge_parts(cfg, 3)

    out, ref = Path(cfg.output), Path(one_cfg.output)
    got, want = samples(out), samples(ref)
    assert got == want  # the same samples, byte for byte, in the same order in every split
    assert sum(len(v) for v in got.values()) == merged.clips_total == one.clips_total > 0
    m, r = (json.loads((root / "manifest.json").read_text()) for root in (out, ref))
    for split in SPLITS:
        assert (m["splits"][split]["clips"], m["splits"][split]["speaker_names"]) == (
            r["splits"][split]["clips"], r["splits"][split]["speaker_names"])
        for entry in m["splits"][split]["shards"]:  # the usual layout, linked, not copied
            assert entry["path"].startswith(f"{split}/shard-")
            assert (out / entry["path"]).stat().st_nlink == 2
    assert m["array"] == {"tasks": 3, "parts": "parts/"} and m["videos"] == r["videos"]

    again = merge_parts(cfg, 3)  # idempotent
    assert samples(out) == want and again.clips_total == merged.clips_total


def test_a_task_killed_mid_shard_blocks_the_merge_until_rerun(prepared, tmp_path):
    one_cfg, _ = prepared
    cfg = replace(one_cfg, output=str(tmp_path / "out"))
    run_task(cfg, 0, 3)
    run_task(cfg, 2, 3)
    # task 1's two videos give 8 clips in shards of 3: dying after the 7th leaves two published shards
    # (the first video complete in them) and an open one
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_TASK, cfg.input, cfg.output, "7", repr({k: v for k, v in asdict(one_cfg).items() if k not in ("input", "output")}), "1", "3"],
        capture_output=True, cwd=Path(__file__).parents[2],
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    part = part_dir(cfg.output, 1)
    assert any(p.name.endswith(".partial") for p in part.rglob("*"))
    with pytest.raises(ValueError, match=r"array tasks not finished: 1 \(1 inputs left\)"):
        merge_parts(cfg, 3)
    assert not (Path(cfg.output) / "manifest.json").exists()

    resumed = run_task(cfg, 1, 3)
    assert (resumed.videos_resumed, resumed.videos_processed) == (1, 1)
    merge_parts(cfg, 3)
    assert samples(Path(cfg.output)) == samples(Path(one_cfg.output))
    with pytest.raises(ValueError, match="written as task 1 of 3"):
        run_task(cfg, 1, 2)  # another array size on the same output is refused, not mixed


def test_cli_runs_the_array_here_and_refuses_what_cannot_run(prepared, tmp_path, capsys):
    one_cfg, _ = prepared
    base = [f"input={one_cfg.input}", "prep.size=64", "prep.latent_frames=2", "prep.shard_max_count=3",
            "prep.val_fraction=0.34", "prep.test_fraction=0.34", "prep.progress=false", "prep.workers=0",
            "prep.h264_crf=0"]
    out = tmp_path / "out"
    assert prep_main([*base, f"output={out}", "cluster.array=2"]) == 0
    assert "merged from 2 array tasks" in capsys.readouterr().out
    assert samples(out) == samples(Path(one_cfg.output))

    for bad, message in (
        (["cluster.array=2", "step=task"], "step=task needs task=I"),
        (["cluster.array=2", "step=task", "task=2"], "tasks 0..1"),
        (["cluster.array=0"], "cluster.array=0 must be >= 1"),
        (["step=sideways"], "step='sideways' is not one of"),
        (["cluster.array=3", "step=merge"], "array tasks not finished: 0 (2 inputs left), 1 (2 inputs left)"),
    ):
        assert prep_main([*base, f"output={tmp_path / 'bad'}", *bad]) == 2, bad
        assert message in capsys.readouterr().err, bad
    assert prep_main(["mode=synth", f"output={tmp_path / 's'}", "cluster.array=2"]) == 2
    assert "cluster.array and step are for mode=prep" in capsys.readouterr().err
    # a one-machine output is not merged into
    assert prep_main([*base, f"output={one_cfg.output}", "cluster.array=2", "step=merge"]) == 2
    assert "holds a one-machine rest-prep run" in capsys.readouterr().err


def test_a_running_task_is_neither_started_twice_nor_merged(prepared, tmp_path):
    import fcntl

    one_cfg, _ = prepared
    cfg = replace(one_cfg, output=str(tmp_path / "out"))
    for i in range(2):
        run_task(cfg, i, 2)
    with open(part_dir(cfg.output, 1) / ".lock", "w") as held:  # as task 1's process holds it while it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="array task 1 is running already"):
            run_task(cfg, 1, 2)
        with pytest.raises(ValueError, match="array task 1 is running already"):
            merge_parts(cfg, 2)
    assert merge_parts(cfg, 2).clips_total > 0
