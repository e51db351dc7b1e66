"""Metric states synced over 2 real gloo processes equal the single-process values.

The merge tests elsewhere simulate ranks with ``merge_state``; this one runs torchmetrics' own
all-gather path (float64 ``sum`` states and a ``cat`` list state) across two CPU processes. The
workers run from a script in a subprocess, so nothing depends on how pytest imports test modules.
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
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def data():
        gen = torch.Generator().manual_seed(0)
        real, fake = torch.randn(24, 3, generator=gen), torch.randn(24, 3, generator=gen) * 2 + 1
        ref = torch.rand(4, 3, 4, 4, generator=gen) * 2 - 1
        video = (ref[:, :, None] + 0.5 * torch.randn(4, 3, 2, 4, 4, generator=gen)).clamp(-1, 1)
        return real, fake, video, ref

    def values(rank, world):
        # Imported here, not at the top: the parent process only spawns and needs no torchmetrics.
        from torch import nn
        from rest_lightning.metrics import CSIM, FrechetMetric

        class IdentityFrechet(FrechetMetric):
            def extract_features(self, inputs):
                return inputs

        real, fake, video, ref = data()
        frechet = IdentityFrechet(num_features=3)
        frechet.update(real[rank::world], real=True)
        frechet.update(fake[rank::world], real=False)
        csim = CSIM(network=nn.Flatten())
        csim.update(video[rank::world], ref[rank::world])
        return {"frechet": float(frechet.compute()), "csim": float(csim.compute())}

    def worker(rank, init_file, out_file):
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
        result = values(rank, 2)
        # Both ranks leave their last collective together: a rank that tears gloo down while its peer
        # is still inside one aborts ("terminate called without an active exception", seen under load).
        dist.barrier()
        dist.destroy_process_group()
        if rank == 0:
            # The single-process reference, computed here to spare a third interpreter start.
            with open(out_file, "w") as handle:
                json.dump({"distributed": result, "single": values(0, 1)}, handle)
        # Leave without C++ static teardown: under load a gloo worker thread could still be joinable
        # when the interpreter exits, which aborts the process ("terminate called without an active
        # exception", seen twice in CI after all results were computed). Nothing is left to flush.
        sys.stdout.flush()
        os._exit(0)

    if __name__ == "__main__":
        init_file, out_file = sys.argv[1:3]
        mp.spawn(worker, args=(init_file, out_file), nprocs=2, join=True)
    """
)


def test_two_gloo_ranks_equal_single_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "values.json"
    # A minimal environment: nothing earlier tests in this process may have set (distributed, Lightning,
    # thread or device variables) reaches the workers.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR", "LANG") if key in os.environ}
    env |= {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "rendezvous"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    values = json.loads(out.read_text())
    got, expected = values["distributed"], values["single"]
    assert got["frechet"] == pytest.approx(expected["frechet"], rel=1e-12)
    assert got["csim"] == pytest.approx(expected["csim"], rel=1e-12)
