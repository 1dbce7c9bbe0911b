"""Several processes on an existing engine: ``torchrun --nproc-per-node N -m tailsynth.cli run ...`` or
``accelerate launch --num_processes N -m tailsynth.cli run ...`` (both set RANK / WORLD_SIZE / LOCAL_RANK).

What runs where: rank 0 runs every stage as a single process would (it alone writes manifests, so the
artifacts are the same files); the synthesis stage, whose shards are independent and seeded by
(seed, class, shard), spreads its shards over all ranks (shard i goes to rank i mod N), each on its own
device (``cuda:LOCAL_RANK``). A kill of any rank leaves the finished shards in the ``.partial`` folder, and
the rerun -- with any number of processes -- resumes from them. Ranks synchronise with a gloo process group
(barriers and one broadcast per stage), so CPUs and GPUs use the same code. Data-parallel training of one
classifier or denoiser is not implemented: the other ranks wait while rank 0 trains.
"""
from __future__ import annotations

import os
from typing import Any

import torch


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init() -> None:
    """Join the launcher's process group (gloo) once, when there is more than one process."""
    import torch.distributed as dist
    if world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity in a plain process)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_cuda_device() -> torch.device:
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
