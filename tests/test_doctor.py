"""`rest-doctor` in one process: the environment report, the collectives, and problems said in words."""

from __future__ import annotations

import pytest

from rest_lightning.cli.doctor import main
from rest_lightning.launch.doctor import check_ranks

DIST_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)


def test_single_process_runs_the_all_reduce_and_barrier(capsys):
    assert main(["timeout_s=20"]) == 0
    out = capsys.readouterr().out
    assert "launcher: single; rank 0 of 1" in out
    assert "process group: gloo, world size 1" in out
    assert "all-reduce: sum of (rank + 1) = 1 (expected 1)" in out
    assert "barrier: passed" in out
    assert out.rstrip().endswith("OK: no problems found")


def test_an_allocation_that_disagrees_is_explained_and_collectives_are_skipped(monkeypatch, capsys):
    env = {  # srun -N2 -n3: uneven tasks, and a rendezvous host that does not resolve
        "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "2",
        "SLURM_NTASKS": "3", "SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "n[1-2]",
        "MASTER_ADDR": "no-such-node.invalid", "MASTER_PORT": "29999",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert main(["num_nodes=4", "devices=2", "timeout_s=5"]) == 2
    captured = capsys.readouterr()
    assert "uneven tasks per node [2, 1]" in captured.out
    assert "expected 4 node(s) (num_nodes) but SLURM job 7 has 2" in captured.out
    assert "'no-such-node.invalid' (MASTER_ADDR) does not resolve" in captured.out
    assert "collectives skipped" in captured.out and "process group:" not in captured.out
    assert "problem(s) on rank 0" in captured.err


def test_rank_layout_problems_are_named():
    # (global rank, node rank, local rank, host, SLURM node): node 0 holds local rank 0 twice
    problems = check_ranks([(0, 0, 0, "h", "n1"), (1, 0, 0, "h", "n1"), (2, 1, 0, "h", "n2")])
    assert "node 0 has local ranks [0, 0], expected 0..1" in problems
    assert any(p.startswith("processes per node differ") for p in problems)
    assert check_ranks([(0, 0, 0, "h", "n1"), (1, 1, 0, "h", "n2")]) == []


def test_a_mistyped_key_names_it(capsys):
    assert main(["timeout_s=soon"]) == 2
    assert "timeout_s" in capsys.readouterr().err
