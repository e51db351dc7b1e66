"""SynthTalk validation metrics synced over 2 real gloo processes equal one process on the union of the data.

``SynthTalkLipSync`` keeps ``cat`` list states (per-clip mouth and loudness series, lengths, speaker ids) and
pools per speaker only at compute, so the sync must bring every rank's clips, with their speakers, to
every rank; ``SynthTalkIdentity`` keeps float64 sums. Checked through ``SynthTalkValidation`` (what the
stages call, including its cross-rank clip count) on an uneven split, and on a split where one rank
scored nothing (its empty states must still join the all-gather with the right dtypes). The workers run
from a script in a subprocess, as in ``tests/metrics/test_metric_distributed.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    SPLITS = {"uneven": ([0, 2, 3, 5], [1, 4]), "one_rank_empty": ([0, 1, 2, 3, 4, 5], [])}

    def data():
        # 3 speakers x 2 clips of 17 frames at 32 px (the demo's clips), rendered with their audio; the
        # reference is frame 0 of another video of the same speaker. Deterministic: both ranks agree.
        from rest_lightning.data.synthetic import make_identity, synthesize_video

        unit = lambda frames: torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1
        videos, audios, refs, speakers = [], [], [], []
        for clip in range(6):
            identity = make_identity(clip % 3, 0)
            video = synthesize_video(identity, seconds=17 / 25, size=32, seed=clip)
            other = synthesize_video(identity, seconds=1 / 25, size=32, seed=100 + clip)
            videos.append(unit(video.frames))
            audios.append(torch.from_numpy(video.audio).float())
            refs.append(unit(other.frames)[:, 0])
            speakers.append(identity.speaker)
        return torch.stack(videos), torch.stack(audios), torch.stack(refs), speakers

    def values(rows):
        from rest_lightning.stages.val_metrics import SynthTalkValidation

        video, audio, ref, speakers = data()
        metrics = SynthTalkValidation()
        if rows:
            # The "real" clips: the same clips darkened, so they score differently from the fake ones.
            metrics.update(video[rows], audio[rows], ref[rows], [speakers[i] for i in rows],
                           real=video[rows] * 0.8)
        return metrics.compute_and_reset(torch.device("cpu"))

    def worker(rank, init_file, out_file):
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
        torch.set_num_threads(1)
        result = {name: values(split[rank]) for name, split in SPLITS.items()}
        # Both ranks leave their last collective together: a rank that tears gloo down while its peer
        # is still inside one aborts ("terminate called without an active exception", seen under load).
        dist.barrier()
        dist.destroy_process_group()
        with open(f"{out_file}.rank{rank}", "w") as handle:
            json.dump(result, handle)
        if rank == 0:
            # The single-process reference on the union of the data (no process group is up any more).
            single = {name: values(sorted(split[0] + split[1])) for name, split in SPLITS.items()}
            single["rank0_alone"] = values(SPLITS["uneven"][0])  # what an unsynced rank 0 would log
            with open(out_file, "w") as handle:
                json.dump(single, handle)
        # Leave without C++ static teardown (see test_metric_distributed.py): nothing is left to flush.
        sys.stdout.flush()
        os._exit(0)

    if __name__ == "__main__":
        init_file, out_file = sys.argv[1:3]
        mp.spawn(worker, args=(init_file, out_file), nprocs=2, join=True)
    """
)

KEYS = (
    "val/synthtalk_sync_r",
    "val/synthtalk_sync_offset",
    "val/synthtalk_mouth_std",
    "val/synthtalk_identity",
    "val/synthtalk_sync_r_real",
    "val/synthtalk_sync_offset_real",
    "val/synthtalk_mouth_std_real",
    "val/synthtalk_identity_real",
)


def test_two_gloo_ranks_equal_one_process_on_the_union(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "values.json"
    # A minimal environment: nothing earlier tests in this process may have set (distributed, Lightning,
    # thread or device variables) reaches the workers.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR", "LANG") if key in os.environ}
    env |= {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "rendezvous"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    single = json.loads(out.read_text())
    alone = single.pop("rank0_alone")
    # Not vacuous: rank 0 alone lacks speaker spk001 (both its clips are on rank 1), and scores otherwise.
    assert alone["val/synthtalk_sync_r"] != pytest.approx(single["uneven"]["val/synthtalk_sync_r"], rel=1e-6)
    assert alone["val/synthtalk_identity"] != pytest.approx(single["uneven"]["val/synthtalk_identity"], rel=1e-6)
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2)]
    for split, expected in single.items():
        assert set(expected) == set(KEYS), (split, sorted(expected))
        for rank, got in enumerate(ranks):
            assert set(got[split]) == set(KEYS), (split, rank)
            for key in KEYS:
                # Summation order differs (rank 0's clips come first after the gather): float64 round-off.
                assert got[split][key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), (split, rank, key)
