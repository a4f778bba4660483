"""Data-parallel training with PyTorch's own engine: torch.distributed, launched by torchrun.

`setup()` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...)
and joins the process group: NCCL when each process has a GPU, gloo on CPU. Without torchrun it
returns a one-process `Dist` and every helper below is a no-op, so the training loop has one
path for one process, several GPUs and several machines.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # global rank
    world: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (= GPU index)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and scores validation."""
        return self.rank == 0


ONE_PROCESS = Dist()  # the default everywhere: no torchrun, no process group


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str = "auto", timeout_minutes: float = 60) -> tuple[Dist, str]:
    """Join the process group torchrun describes; returns (Dist, the device this process uses).

    `device` "auto"/"cuda" under torchrun becomes cuda:LOCAL_RANK. The timeout bounds how long
    ranks wait for each other (rank 0 alone builds a missing shapes world, for instance).
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return ONE_PROCESS, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda:"):
        raise ValueError("under torchrun each process takes cuda:LOCAL_RANK; pass --device cuda or auto")
    use_cuda = resolve_device(device).type == "cuda"  # --device cuda without a GPU: resolve_device says so
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun's restarts reuse the agent's store: without a per-attempt prefix, a restarted
        # rank can read a dead rank's address left by the failed attempt (seen with gloo: refused
        # connections, then the restart fails too).
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout, rank=rank, world_size=world,
                                store=dist.PrefixStore(f"captioner/attempt_{attempt}", store))
    d = Dist(rank=rank, world=world, local_rank=local_rank)
    log.info("process %d of %d (local rank %d, backend %s, device %s)", rank, world, local_rank,
             dist.get_backend(), device)
    return d, device


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce_sum(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place, returned for convenience)."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(d: Dist, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (picklable Python objects)."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
