"""The probe's record comparison, without a cluster: a resumed job whose records differ from the uninterrupted
job's is reported with the state that was not restored, and only then."""

from __future__ import annotations

import pytest
from slurm_probe import first_divergence, probe_records

STATE = "weights=w{n} ema=e{n} optim=o{n} sched=s{n}"


def uninterrupted(batches: int) -> str:
    """Both ranks' lines of a job that trains ``batches`` batches: batch b goes from state b to state b + 1."""
    lines = [f"PROBE_BEGIN rank={r} batch=0 " + STATE.format(n=0) for r in (0, 1)]
    for b in range(batches):
        lines += [f"PROBE_STEP rank={r} batch={b} data=d{r}{b} rng=r{r}{b} " + STATE.format(n=b + 1) for r in (0, 1)]
    return "\n".join(lines) + "\nsome other output\n"


def requeued(batches: int, resume_at: int, done_before: int, edit: tuple[str, str, str] = ("", "", "")) -> str:
    """The same job signalled after ``done_before`` batches, resumed from the checkpoint of ``resume_at``
    (<= done_before: a batch may finish after the save); ``edit`` replaces text in the resumed start's lines."""
    full = uninterrupted(batches).splitlines()
    first = [line for line in full if "PROBE_BEGIN" in line or ("PROBE_STEP" in line and _batch(line) < done_before)]
    resumed = [f"PROBE_BEGIN rank={r} batch={resume_at} " + STATE.format(n=resume_at) for r in (0, 1)]
    resumed += [line for line in full if "PROBE_STEP" in line and _batch(line) >= resume_at]
    old, new, where = edit
    resumed = [line.replace(old, new) if where in line else line for line in resumed]
    return "\n".join(["=== batch start: restart 0", *first, "=== batch start: restart 1", *resumed])


def _batch(line: str) -> int:
    return int(line.split("batch=")[1].split()[0])


def test_an_exact_resume_has_no_divergence():
    reference = probe_records(uninterrupted(6))
    assert len(reference) == 2 + 12 and reference[0] == {"kind": "BEGIN", "rank": "0", "batch": "0", "weights": "w0",
                                                          "ema": "e0", "optim": "o0", "sched": "s0"}
    assert first_divergence(probe_records(requeued(6, resume_at=3, done_before=4)), reference) is None


@pytest.mark.parametrize(("edit", "named"), [
    (("optim=o3", "optim=o0", "PROBE_BEGIN rank=1"), "rank 1 resumed at batch 3: optimizer differs"),
    (("ema=e3", "ema=e0", "PROBE_BEGIN rank=0"), "rank 0 resumed at batch 3: EMA differs"),
    (("sched=s3", "sched=s0", "PROBE_BEGIN rank=0"), "rank 0 resumed at batch 3: LR scheduler differs"),
    (("weights=w3", "weights=w2", "PROBE_BEGIN rank=0"), "rank 0 resumed at batch 3: weights differs"),
    (("data=d03", "data=d04", "batch=3"), "rank 0 batch 3: loader differs"),
    (("rng=r13", "rng=r10", "batch=3"), "rank 1 batch 3: RNG differs"),
    (("weights=w5", "weights=w9", "batch=4"), "rank 0 batch 4: weights differs"),
])
def test_the_first_state_that_differs_is_named(edit, named):
    reference = probe_records(uninterrupted(6))
    found = first_divergence(probe_records(requeued(6, resume_at=3, done_before=3, edit=edit)), reference)
    assert found is not None and found.startswith(named), found


def test_batches_the_resumed_start_never_trained_are_reported():
    text = requeued(6, resume_at=3, done_before=3)
    ended_early = "\n".join(line for line in text.splitlines() if not ("PROBE_STEP" in line and "batch=5 " in line))
    found = first_divergence(probe_records(ended_early), probe_records(uninterrupted(6)))
    assert found is not None and found.startswith("batches never trained after the resume (rank, batch): "
                                                  "[('0', 5), ('1', 5)]"), found
