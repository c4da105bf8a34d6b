"""Sharded evaluation under torchrun: each rank reads and evaluates every world-th batch, the counts are summed
across ranks and only rank 0 writes. Batches keep the single-process boundaries and seeds, so the results do not
depend on the number of ranks."""
from __future__ import annotations

import atexit
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from robustlab.errors import RobustlabError


@dataclass(frozen=True)
class Shard:
    """This process's part of the work: rank `rank` of `world` processes (0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def batch_indices(self, n_images: int, batch_size: int) -> range:
        """This rank's indices among the batches of n_images, in order: the readers yield exactly these batches."""
        return range(self.rank, math.ceil(n_images / batch_size), self.world)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64: image counts stay exact)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (per-image outcomes of a cell's shards)."""
        if self.world == 1:
            return [obj]
        box: list[Any] = [None] * self.world
        dist.all_gather_object(box, obj)
        return box

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard_from_env() -> Shard:
    """This process's rank among WORLD_SIZE under torchrun, without joining a process group: for work whose ranks
    never talk (robustlab corrupt, where each rank writes its own files)."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        raise RobustlabError("RANK and WORLD_SIZE must be whole numbers; start the ranks with torchrun") from None
    if not 0 <= rank < world:
        raise RobustlabError(f"RANK {rank} is outside 0..WORLD_SIZE-1 ({world}); start the ranks with torchrun")
    return Shard(rank, world)


def init_from_env(device: str) -> tuple[Shard, str]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR...): nccl when the
    run is on CUDA, gloo on the CPU. Returns the shard and the device this rank uses (cuda:LOCAL_RANK)."""
    shard = shard_from_env()
    if shard.world == 1:
        return shard, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        raise RobustlabError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RobustlabError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); start "
                                 "at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        # left to the interpreter's teardown, gloo's threads sometimes abort the exiting process ("terminate
        # called without an active exception", 1 run in 20 here, after the results were written)
        atexit.register(dist.destroy_process_group)
    return shard, f"cuda:{local_rank}" if cuda else "cpu"
