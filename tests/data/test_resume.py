"""An interrupted prep (kill -9 mid-shard) resumes without duplicates or a truncated shard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from data_prep.config import PrepConfig
from data_prep.run import run_prep
from rest_lightning.data.shard_index import CorpusIndex

_KILLER = """
import os, signal, sys
from data_prep import shards
from data_prep.config import PrepConfig
from data_prep.run import run_prep
write, count = shards.SplitWriter.write, [0]
def write_then_die(self, sample):
    write(self, sample)
    count[0] += 1
    if count[0] == int(sys.argv[3]):  # mid-shard: after a sample of a still-open shard
        os.kill(os.getpid(), signal.SIGKILL)
shards.SplitWriter.write = write_then_die
run_prep(PrepConfig(input=sys.argv[1], output=sys.argv[2], size=64, latent_frames=2, shard_max_count=3,
                    val_fraction=0.0, test_fraction=0.0, progress=False, workers=0))
"""


def _keys(root: Path) -> list[str]:
    index = CorpusIndex.from_manifest(root, "train")
    return [index.read(i)["__key__"] for i in range(index.total)]


def test_kill9_mid_shard_then_resume_gives_the_uninterrupted_output(corpus, tmp_path):
    src = str(corpus[0].parent.parent)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLER, src, str(tmp_path / "out"), "8"],
        capture_output=True,
        cwd=Path(__file__).parents[2],
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    leftovers = sorted(p.name for p in (tmp_path / "out" / "train").iterdir())
    assert any(n.endswith(".partial") for n in leftovers)  # the open shard was cut
    assert not (tmp_path / "out" / "manifest.json").exists()

    cfg = dict(
        size=64,
        latent_frames=2,
        shard_max_count=3,
        val_fraction=0.0,
        test_fraction=0.0,
        progress=False,
        workers=0,
    )
    resumed = run_prep(PrepConfig(input=src, output=str(tmp_path / "out"), **cfg))
    assert resumed.videos_resumed >= 1  # videos whose clips were all in closed shards were skipped
    fresh = run_prep(PrepConfig(input=src, output=str(tmp_path / "fresh"), **cfg))
    keys = _keys(tmp_path / "out")
    assert len(keys) == len(set(keys)) == fresh.clips_total == resumed.clips_total
    assert set(keys) == set(_keys(tmp_path / "fresh"))
    train = tmp_path / "out" / "train"
    assert not any(p.name.endswith(".partial") for p in train.iterdir())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(tmp_path / "out" / shard["path"]) as tar:  # complete, readable to the end
            assert len(tar.getmembers()) == 4 * shard["count"]
