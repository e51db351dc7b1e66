"""Collectives that also run single-process (STYLE rule 9: a random choice all ranks must share is
broadcast from rank 0 by a function that works without ``torch.distributed`` initialised).

Why it matters: under FSDP / ZeRO-3 every forward gathers weights collectively, so ranks that run a
different number of forwards (say, a different ASD exit step) deadlock; under DDP they would build
different graphs. Self-Forcing's ``generate_and_sync_list`` broadcasts its exit steps for the same reason.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group is up (``torch.distributed`` available and initialised)."""
    return dist.is_available() and dist.is_initialized()


def broadcast_from_rank_zero(values: Tensor) -> Tensor:
    """Every rank gets rank 0's ``values`` (any shape, any dtype); single-process it is returned as is.

    The result has ``values``' device and dtype. NCCL only moves CUDA tensors, so a CPU tensor travels
    through the current CUDA device when the group's backend is NCCL.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return values
    transport = values
    if dist.get_backend() == dist.Backend.NCCL and values.device.type != "cuda":
        transport = values.to(torch.device("cuda", torch.cuda.current_device()))
    transport = transport.contiguous().clone()
    dist.broadcast(transport, src=0)
    return transport.to(values.device)
