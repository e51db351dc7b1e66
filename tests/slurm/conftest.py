"""The local SLURM cluster for tests marked ``slurm`` (brought up once per session by ``cluster.sh``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLUSTER_SH = HERE / "cluster.sh"
UP_TIMEOUT_S = 300  # includes a first apt-get install of the Debian packages (about 4 s from a warm mirror)
POLL_S = 0.5


@dataclass(frozen=True)
class SlurmCluster:
    env: dict[str, str]  # for subprocesses: the venv's bin on PATH (srun finds rest-train), tests/slurm importable

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def submit(self, *overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``rest-train cluster=slurm ...`` from the repository root, as a user runs it."""
        proc = subprocess.run(["rest-train", "cluster=slurm", *overrides], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def wait_gone(self, job_id: str, timeout: float) -> float:
        """Wait until the job leaves the queue (requeues included); returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.run("squeue", "-h", "-j", job_id).stdout.strip():
                return time.monotonic() - t0
            time.sleep(POLL_S)
        self.run("scancel", job_id)  # ours, by id
        raise AssertionError(f"SLURM job {job_id} still queued after {timeout} s")

    def job_fields(self, job_id: str) -> dict[str, str]:
        text = self.run("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S+)", text))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get, munge, slurmd); CI runs as root")
    was_up = subprocess.run(["squeue", "-h"], capture_output=True, timeout=10).returncode == 0 \
        if _which("squeue") else False
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"the local SLURM cluster did not come up within {UP_TIMEOUT_S} s")
    if proc.returncode != 0:
        pytest.skip(f"the local SLURM cluster could not come up: {(proc.stdout + proc.stderr)[-1500:]}")
    print(f"\nslurm cluster up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.pop("SLURM_JOB_ID", None)  # a test session inside an allocation must still submit
    yield SlurmCluster(env)
    if not was_up:  # leave a cluster someone else started running
        subprocess.run(["bash", str(CLUSTER_SH), "down"], capture_output=True, timeout=120)


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None
