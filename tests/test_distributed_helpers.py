"""``rest_lightning.distributed``: rank 0's random choices reach every rank, and the same call works in a
single process (STYLE rule 9). Two real gloo ranks on the CPU; the ASD student's exit step goes through it."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rest_lightning.distributed import broadcast_from_rank_zero, is_distributed

DRAWS = 8


def test_single_process_returns_the_values_unchanged():
    assert not is_distributed()
    values = torch.tensor([3, 1, 4])
    assert broadcast_from_rank_zero(values) is values


def _student_choices(rank: int) -> list[list]:
    """The ASD student's step choices, drawn from a generator that differs per rank (as in training,
    seeded by (seed, rank, step)), next to the raw exit-step draw the rank would have made alone."""
    from rest_lightning.diffusion.samplers import FewStepSampler
    from rest_lightning.distillation import ASDConfig, StudentObjective

    sampler = FewStepSampler()  # only what step_choices reads: no models
    objective = StudentObjective(None, 1, sampler, None, None, ASDConfig(context="curriculum", curriculum_steps=10),
                                 None, None, None)
    out = []
    for seed in range(DRAWS):
        own = int(torch.randint(len(sampler.timesteps), (1,), generator=torch.Generator().manual_seed(97 * rank + seed)))
        choices = objective.step_choices(6, 5, torch.Generator().manual_seed(97 * rank + seed))
        out.append([own, choices.exit_step, list(choices.ground_truth)])
    return out


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        values = torch.tensor([rank * 10 + 1, rank * 10 + 2], dtype=torch.long)
        shared = broadcast_from_rank_zero(values)
        result = {"helper": shared.tolist(), "dtype": str(shared.dtype), "student": _student_choices(rank)}
        with open(f"{folder}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        dist.barrier()  # leave the last collective together before tearing gloo down (see test_metric_distributed)
    finally:
        dist.destroy_process_group()
    # Leave without C++ static teardown: a gloo worker thread still joinable at interpreter exit aborts the
    # process ("terminate called without an active exception", SIGABRT in CI after both results were written).
    sys.stdout.flush()
    os._exit(0)


def test_two_ranks_get_rank_zeros_values_and_the_student_the_same_exit_step(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert rank0["helper"] == rank1["helper"] == [1, 2] and rank1["dtype"] == "torch.int64"
    student0, student1 = rank0["student"], rank1["student"]
    assert [d[1:] for d in student0] == [d[1:] for d in student1], "both ranks take the same exit step and context"
    assert [d[1] for d in student0] == [d[0] for d in student0], "... namely rank 0's own draws"
    assert [d[0] for d in student0] != [d[0] for d in student1], "the ranks' own draws differ (not vacuous)"
    assert any(any(d[2]) for d in student0) and not all(all(d[2]) for d in student0), "curriculum mixes sources"
