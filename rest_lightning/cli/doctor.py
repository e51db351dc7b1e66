"""``rest-doctor [key=value ...]``: the SLURM / torch.distributed preflight (``conf/doctor.yaml``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig

from rest_lightning.cli.common import run_cli
from rest_lightning.launch.doctor import DoctorFailed

SUMMARY = ("Check the distributed setup where training will run (`srun rest-doctor` inside a SLURM job, or "
           "alone for one process): prints the SLURM / torch.distributed environment, checks world size and rank "
           "layout, runs an all-reduce and a barrier with a short timeout (gloo on CPU, nccl on GPU) and says "
           "what is wrong. Keys: backend=auto|gloo|nccl timeout_s=60 num_nodes=N devices=G (expected layout). "
           "Exit status 2 when a problem is found.")


def _doctor(cfg: DictConfig) -> None:
    from rest_lightning.launch.doctor import run_doctor

    report = run_doctor(cfg)
    print(report.text(), flush=True)
    if not report.ok:
        raise DoctorFailed(f"{len(report.problems)} problem(s) on rank {report.rank} (listed above)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-doctor", "doctor", SUMMARY, _doctor, argv, extra_errors=(DoctorFailed,))


if __name__ == "__main__":
    sys.exit(main())
