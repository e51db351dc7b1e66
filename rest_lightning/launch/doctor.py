"""``rest-doctor``: the SLURM / torch.distributed preflight (DESIGN §7).

Run it where training will run, the same way (``srun rest-doctor`` inside the job, or alone for one
process). Each process reports its SLURM and torch.distributed environment, checks that the allocation
and the rank layout agree (world size = nodes x tasks per node, every node the same count, the rendezvous
address resolves, one GPU per task), then joins a process group with a short timeout and runs an
all-reduce and a barrier: gloo on CPU, nccl on GPU. What is wrong is said in words, with the setting
that fixes it, instead of a rank waiting 30 minutes for a peer that never comes. With no SLURM and no
torchrun variables it checks a world of one process (the backend and the collectives still run).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from rest_lightning.config import ConfigError
from rest_lightning.launch.slurm import SlurmAllocation

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gloo", "nccl")
# Variables worth seeing when a multi-node job misbehaves.
_ENV_PREFIXES = ("SLURM_", "MASTER_", "NCCL_", "GLOO_", "TORCH_DISTRIBUTED", "TORCHELASTIC_")
_ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
              "CUDA_VISIBLE_DEVICES", "SLURMD_NODENAME")


@dataclass
class DoctorConfig:
    """Root schema of ``conf/doctor.yaml`` (``rest-doctor``)."""

    backend: str = "auto"  # auto (nccl with CUDA, else gloo) | gloo | nccl
    # design choice: long enough for a rendezvous across a busy cluster, short enough to fail fast
    timeout_s: float = 60.0
    num_nodes: int | None = None  # expected nodes (trainer.num_nodes); None: whatever SLURM allocated
    devices: int | None = None  # expected processes per node (trainer.devices); None: as allocated


def doctor_schema() -> type:
    """Root schema of conf/doctor.yaml (typed keys, checked at compose time)."""
    return DoctorConfig


class DoctorFailed(RuntimeError):
    """The preflight found problems (already listed in the report)."""


@dataclass(frozen=True)
class RankLayout:
    """Where this process sits, as the launcher (SLURM, torchrun or none) says."""

    source: str  # "slurm" | "torchrun" | "single"
    world_size: int
    global_rank: int
    local_rank: int
    node_rank: int
    main_address: str
    main_port: int


@dataclass
class DoctorReport:
    rank: int
    world_size: int
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        prefix = f"[rank {self.rank}] " if self.world_size > 1 else ""
        verdict = ["OK: no problems found"] if self.ok else [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(prefix + line for line in [*self.lines, *verdict])


def doctor_config(cfg: DictConfig) -> DoctorConfig:
    """Type-check the composed ``conf/doctor.yaml`` against :class:`DoctorConfig`."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DoctorConfig), cfg))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}" if key else str(err).splitlines()[0]) from None
    if typed.backend not in BACKENDS:
        raise ConfigError(f"backend={typed.backend!r} is not one of {', '.join(BACKENDS)}")
    if typed.timeout_s <= 0:
        raise ConfigError(f"timeout_s={typed.timeout_s} must be > 0")
    for key in ("num_nodes", "devices"):
        value = getattr(typed, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1 (or null: as allocated)")
    return typed


def run_doctor(cfg: DictConfig) -> DoctorReport:
    """Check this process's distributed setup; the returned report lists what is wrong, in words."""
    config = doctor_config(cfg)
    env = dict(os.environ)
    layout = detect_layout(env)
    report = DoctorReport(layout.global_rank, layout.world_size)
    report.lines += describe_environment(env, layout)
    report.problems += check_layout(env, layout, config)
    if report.problems:
        report.lines.append("collectives skipped: fix the problems below first (they would hang or fail)")
        return report
    report.problems += run_collectives(layout, config, report.lines)
    return report


def detect_layout(env: Mapping[str, str]) -> RankLayout:
    """The rank layout Lightning will use: its ``SLURMEnvironment`` numbers inside a SLURM step, torchrun's
    variables under torchrun, else a single process."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and SLURMEnvironment.detect():
        slurm = SLURMEnvironment(auto_requeue=False)
        # main_address/main_port are what Lightning derives (first node of the list, port from the job id)
        return RankLayout("slurm", slurm.world_size(), slurm.global_rank(), slurm.local_rank(),
                          slurm.node_rank(), slurm.main_address, slurm.main_port)
    if "WORLD_SIZE" in env and "RANK" in env:
        return RankLayout("torchrun", int(env["WORLD_SIZE"]), int(env["RANK"]), int(env.get("LOCAL_RANK", "0")),
                          int(env.get("GROUP_RANK", env.get("NODE_RANK", "0"))), env.get("MASTER_ADDR", "127.0.0.1"),
                          int(env.get("MASTER_PORT", "29500")))
    return RankLayout("single", 1, 0, 0, 0, "127.0.0.1", 0)


def describe_environment(env: Mapping[str, str], layout: RankLayout) -> list[str]:
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lines = [
        f"host {socket.gethostname()} (SLURM node {env.get('SLURMD_NODENAME', '-')}), python "
        f"{platform.python_version()}, torch {torch.__version__}, CUDA devices visible: {cuda}",
        f"launcher: {layout.source}; rank {layout.global_rank} of {layout.world_size}, node rank "
        f"{layout.node_rank}, local rank {layout.local_rank}"
        + (f"; rendezvous {layout.main_address}:{layout.main_port}" if layout.world_size > 1 else ""),
    ]
    names = sorted(k for k in env if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES)
    lines += [f"  {k}={env[k]}" for k in names]
    return lines


def check_layout(env: Mapping[str, str], layout: RankLayout, config: DoctorConfig) -> list[str]:
    """Problems visible without talking to other processes: allocation vs expectations vs layout."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    problems: list[str] = []
    if "SLURM_JOB_ID" in env:
        alloc = SlurmAllocation.from_env(env)
        where = f"SLURM job {alloc.job_id}"
        if not alloc.in_step and alloc.world_size > 1:
            problems.append(
                f"running in the batch script of {where}, not under srun, so only one of its "
                f"{alloc.world_size} tasks exists: run `srun rest-doctor` (and `srun rest-train`)"
            )
        elif alloc.in_step and not SLURMEnvironment.detect():
            problems.append(
                f"{where} is named {alloc.job_name!r}: Lightning ignores SLURM for jobs named bash or "
                "interactive, so every task would train alone; give the job another name (sbatch --job-name)"
            )
        if len(set(alloc.tasks_per_node)) > 1:
            problems.append(
                f"{where} runs uneven tasks per node {list(alloc.tasks_per_node)}: Lightning needs the same "
                "number (one per device) on every node; submit with --ntasks-per-node"
            )
        if alloc.in_step and sum(alloc.tasks_per_node) != alloc.world_size:
            problems.append(
                f"{where}: SLURM_NTASKS={alloc.world_size} but the tasks per node add up to "
                f"{sum(alloc.tasks_per_node)}"
            )
        if config.num_nodes is not None and config.num_nodes != alloc.nodes:
            problems.append(
                f"expected {config.num_nodes} node(s) (num_nodes) but {where} has {alloc.nodes}: "
                f"submit with --nodes={config.num_nodes} (cluster.nodes), or set trainer.num_nodes={alloc.nodes}"
            )
        per_node = alloc.tasks_per_node[0] if alloc.tasks_per_node else 1
        if config.devices is not None and config.devices != per_node:
            problems.append(
                f"expected {config.devices} process(es) per node (devices) but {where} runs {per_node} task(s) "
                f"per node: submit with --ntasks-per-node={config.devices}, or set trainer.devices={per_node}"
            )
    elif config.num_nodes not in (None, 1) or (layout.world_size == 1 and config.devices not in (None, 1)):
        problems.append(
            f"expected num_nodes={config.num_nodes}, devices={config.devices} but this is not a SLURM job "
            f"step and the world has {layout.world_size} process(es): run it with srun inside the job"
        )
    if layout.world_size > 1:
        try:
            socket.getaddrinfo(layout.main_address, layout.main_port)
        except OSError as err:
            problems.append(
                f"the rendezvous address {layout.main_address!r} (MASTER_ADDR) does not resolve on this node "
                f"({err.strerror or err}): every rank would retry for 30 minutes. Make the first node name of "
                "the job resolvable (DNS or /etc/hosts), or export MASTER_ADDR=<its IP> in cluster.setup"
            )
    backend = pick_backend(config.backend)
    if backend == "nccl":
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            problems.append("backend=nccl needs CUDA GPUs and this process sees none: use backend=gloo on CPU nodes")
        elif layout.local_rank >= visible:
            problems.append(
                f"local rank {layout.local_rank} has no GPU of its own: this process sees {visible} "
                f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '-')}); ask SLURM for one GPU per task "
                "(cluster.gpus_per_node = tasks per node)"
            )
    return problems


def pick_backend(backend: str) -> str:
    """``auto`` -> nccl when CUDA is available, else gloo."""
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "gloo"


def run_collectives(layout: RankLayout, config: DoctorConfig, lines: list[str]) -> list[str]:
    """Join a process group, all-reduce, gather the layout and barrier, each bounded by ``timeout_s``."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return ["a torch.distributed process group is already initialised in this process; run rest-doctor "
                "as its own command"]
    backend = pick_backend(config.backend)
    timeout = _dt.timedelta(seconds=config.timeout_s)
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", layout.local_rank)
        torch.cuda.set_device(device)
    problems: list[str] = []
    t0 = time.perf_counter()
    stage = f"joining the {backend} process group at {layout.main_address}:{layout.main_port}"
    try:
        if layout.world_size == 1:
            # A one-process group still runs the backend and the collectives; no port to bind.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            dist.init_process_group(backend, init_method=f"tcp://{layout.main_address}:{layout.main_port}",
                                    rank=layout.global_rank, world_size=layout.world_size, timeout=timeout)
        lines.append(f"process group: {backend}, world size {dist.get_world_size()}, joined in "
                     f"{time.perf_counter() - t0:.2f} s")
        stage = "the all-reduce"
        t1 = time.perf_counter()
        value = torch.tensor([float(layout.global_rank + 1)], device=device)
        dist.all_reduce(value)
        expected = layout.world_size * (layout.world_size + 1) / 2
        lines.append(f"all-reduce: sum of (rank + 1) = {value.item():g} (expected {expected:g}) in "
                     f"{time.perf_counter() - t1:.3f} s")
        if value.item() != expected:
            problems.append(f"the all-reduce returned {value.item():g}, expected {expected:g}: ranks disagree "
                            "on the world size or some rank joined twice")
        stage = "gathering the rank layout"
        mine = (layout.global_rank, layout.node_rank, layout.local_rank, socket.gethostname(),
                os.environ.get("SLURMD_NODENAME", ""))
        everyone: list[tuple] = [None] * layout.world_size  # type: ignore[list-item]
        dist.all_gather_object(everyone, mine)
        if layout.global_rank == 0:
            lines += describe_ranks(everyone)
            problems += check_ranks(everyone)
        stage = "the barrier"
        t2 = time.perf_counter()
        if backend == "gloo":
            dist.monitored_barrier(timeout=timeout)  # names the rank that did not arrive
        else:
            dist.barrier(device_ids=[layout.local_rank])
        lines.append(f"barrier: passed in {time.perf_counter() - t2:.3f} s")
    except Exception as err:  # torch raises RuntimeError / DistBackendError / DistStoreError subclasses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        problems.append(
            f"{stage} failed after {time.perf_counter() - t0:.1f} s (timeout {config.timeout_s:g} s): {first}. "
            f"Check that all {layout.world_size} processes were started (srun), that "
            f"{layout.main_address}:{layout.main_port} is reachable from every node and the port is free, and "
            "that every node runs the same rest-doctor"
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return problems


def describe_ranks(everyone: list[tuple]) -> list[str]:
    """One line per node: ``node 0 (n1): global ranks [0, 1], local ranks [0, 1]``."""
    by_node: dict[int, list[tuple]] = {}
    for entry in everyone:
        by_node.setdefault(entry[1], []).append(entry)
    lines = [f"rank layout: {len(everyone)} processes on {len(by_node)} node(s)"]
    for node, entries in sorted(by_node.items()):
        names = sorted({e[4] or e[3] for e in entries})
        lines.append(f"  node {node} ({', '.join(names)}): global ranks {sorted(e[0] for e in entries)}, "
                     f"local ranks {sorted(e[2] for e in entries)}")
    return lines


def check_ranks(everyone: list[tuple]) -> list[str]:
    """Global ranks 0..W-1 once each; node ranks 0..N-1; on every node local ranks 0..n-1 and one host name."""
    problems: list[str] = []
    world = len(everyone)
    ranks = sorted(e[0] for e in everyone)
    if ranks != list(range(world)):
        problems.append(f"global ranks are {ranks}, expected 0..{world - 1} once each")
    by_node: dict[int, list[tuple]] = {}
    for entry in everyone:
        by_node.setdefault(entry[1], []).append(entry)
    if sorted(by_node) != list(range(len(by_node))):
        problems.append(f"node ranks are {sorted(by_node)}, expected 0..{len(by_node) - 1}")
    sizes = {node: len(entries) for node, entries in by_node.items()}
    if len(set(sizes.values())) > 1:
        problems.append(f"processes per node differ {sizes}: Lightning needs the same number on every node")
    for node, entries in sorted(by_node.items()):
        local = sorted(e[2] for e in entries)
        if local != list(range(len(entries))):
            problems.append(f"node {node} has local ranks {local}, expected 0..{len(entries) - 1}")
        names = {e[4] or e[3] for e in entries}
        if len(names) > 1:
            problems.append(f"node rank {node} is claimed by several hosts {sorted(names)}")
    return problems
