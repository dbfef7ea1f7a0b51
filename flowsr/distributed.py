"""Several processes for ``flowsr upscale`` and ``flowsr eval`` under ``torchrun``.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m flowsr upscale|eval ...`` starts N x M processes
with RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in their environment. Each takes every
WORLD_SIZE-th input (a disjoint share), runs on its own GPU or on its share of the node's CPU cores,
and sends its small results (counts, per-image rows) to rank 0 over a gloo process group on the CPU,
whatever the device. Without torchrun everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    launched: bool = False  # started by torchrun (even with one process)

    @property
    def main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = Ranks()


def ranks() -> Ranks:
    """This process's place, from torchrun's environment (one process without it)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Ranks(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                 int(env.get("LOCAL_WORLD_SIZE", str(world))), "WORLD_SIZE" in env)


def start(device: str = "auto", threads: int = 0) -> tuple[Ranks, str]:
    """Join the process group (under torchrun) and choose this process's device and CPU threads.

    ``device`` "auto"/"cuda" under torchrun becomes "cuda:<local rank>" (modulo the GPUs present).
    ``threads`` > 0 sets the CPU threads; 0: all cores for one process, under torchrun the node's
    cores divided evenly by its processes. Returns (ranks, device).
    """
    place = ranks()
    if place.world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if place.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        index = place.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    if threads <= 0 and place.world > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // place.local_world)
    if threads > 0:
        torch.set_num_threads(threads)
    return place, device


def gather(value, place: Ranks) -> list | None:
    """Every rank's ``value`` in rank order, on rank 0; None on the others. Called by all ranks."""
    if place.world == 1:
        return [value]
    values = [None] * place.world if place.main else None
    dist.gather_object(value, values, dst=0)
    return values


def all_gather(value, place: Ranks) -> list:
    """Every rank's ``value`` in rank order, on every rank (small values only)."""
    if place.world == 1:
        return [value]
    values = [None] * place.world
    dist.all_gather_object(values, value)
    return values


def finish(place: Ranks) -> None:
    """Wait for every rank (so rank 0's summary is out before any rank exits), then leave the group."""
    if place.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
