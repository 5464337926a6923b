"""Sharding an evaluation across processes started by torchrun.

    torchrun --nproc-per-node 4 -m robench eval ckpt.safetensors --n 10000 ...

Under torchrun (``WORLD_SIZE`` > 1) every process loads the checkpoint and the data; rank 0 alone opens the
store, decides which examples are left to do and hands them out; each group of ``world x batch`` examples
is split into one batch per rank, attacked in parallel, gathered on rank 0 and committed there as one
batch. Every example's attack is seeded by the example alone, so the outcomes equal a one-process run.
The backend is nccl when the evaluation runs on CUDA (each process on its ``LOCAL_RANK`` GPU) and gloo on
the CPU. Without torchrun, ``current()`` is a one-process stand-in that does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Single:
    """No torchrun: one process does everything."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, dev: torch.device) -> torch.device:
        return dev

    def broadcast(self, obj):
        return obj

    def gather(self, obj) -> list:
        return [obj]


class Torchrun(Single):
    """One process of a torchrun group; the process group is created on first use."""

    def __init__(self):
        super().__init__(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        self.local = int(os.environ.get("LOCAL_RANK", self.rank))
        self.backend = None

    def device(self, dev: torch.device) -> torch.device:
        import torch.distributed as dist

        if dev.type == "cuda":
            dev = torch.device("cuda", self.local % torch.cuda.device_count())
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            import atexit

            dist.init_process_group(backend)
            atexit.register(dist.destroy_process_group)
        self.backend = dist.get_backend()
        return dev

    def broadcast(self, obj):
        import torch.distributed as dist

        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        import torch.distributed as dist

        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out


def is_main() -> bool:
    """False only in the torchrun processes other than rank 0 (which print and write nothing)."""
    return int(os.environ.get("RANK", "0")) == 0 or int(os.environ.get("WORLD_SIZE", "1")) <= 1


def current() -> Single:
    """The torchrun process this is, or a one-process stand-in."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return _get()
    return Single()


_PROCESS: list[Torchrun] = []


def _get() -> Torchrun:
    if not _PROCESS:
        _PROCESS.append(Torchrun())
    return _PROCESS[0]


def shard(chunk: list[int], rank: int, world: int) -> list[int]:
    """This rank's part of a group of examples: contiguous, at most ceil(len/world) each."""
    per = -(-len(chunk) // world)
    return chunk[rank * per : (rank + 1) * per]
