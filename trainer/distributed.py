"""The process group of a run: one process (plain `recital train`) or many started by torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a run that sees WORLD_SIZE > 1 joins
the group (NCCL on GPUs, gloo on CPU). Rank 0 alone writes files and reports progress; every rank computes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from core.errors import DeviceError


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    owns_group: bool  # this run created the process group and destroys it at the end

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (float64, so counts and seconds stay exact)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._reduce_device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value) -> list:
        """Every process's picklable `value`, in rank order."""
        if self.size == 1:
            return [value]
        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    @property
    def _reduce_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str | None) -> World:
    """This process's place in the run, joining the torchrun group if there is one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.device(device)
    if where.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was asked for but no GPU is available")
        if where.index is None:
            where = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(where)
    owns = False
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", rank=rank, world_size=size)
        owns = True
    if size > 1:
        rank, size = dist.get_rank(), dist.get_world_size()
    return World(rank, size, where, owns)


def leave(code: int) -> NoReturn:
    """End a process of a multi-process run with `code`, skipping the interpreter's shutdown.

    gloo's worker threads outlive destroy_process_group (DistributedDataParallel keeps the group alive), and a
    worker still freeing a finished collective's tensors needs the GIL: if Python is shutting down at that moment,
    the thread is killed inside a destructor and the process aborts (SIGABRT, "terminate called without an active
    exception") after a run that wrote everything. Every file of the run is closed by now; only the streams
    need flushing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
