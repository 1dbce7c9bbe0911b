"""Several processes on an existing engine: ``torchrun --nproc-per-node N -m tailsynth.cli run ...`` or
``accelerate launch --num_processes N -m tailsynth.cli run ...`` (both set RANK / WORLD_SIZE / LOCAL_RANK).

What runs where: rank 0 runs every stage as a single process would (it alone writes manifests, so the
artifacts are the same files); the synthesis stage, whose shards are independent and seeded by
(seed, class, shard), spreads its shards over all ranks (shard i goes to rank i mod N), each on its own
device (``cuda:LOCAL_RANK``). A kill of any rank leaves the finished shards in the ``.partial`` folder, and
the rerun -- with any number of processes -- resumes from them. Ranks synchronise with a gloo process group
(barriers and one broadcast per stage), so CPUs and GPUs use the same code.

Classifier training (the rows, the auxiliary and the oracle) is data-parallel: every rank draws the same seeded
global batch, takes its contiguous slice of it, and the gradients are summed over ranks with each rank's loss
weighted by its share of the batch, so the step is the single-process step on the global batch (exactly for a
plain mean loss, up to float summation order; BatchNorm statistics are per rank, as in DistributedDataParallel
without SyncBatchNorm, which PyTorch offers on GPUs only). Rank 0 alone validates and writes checkpoints; after a
kill, every rank resumes from rank 0's last checkpoint. Denoiser training (base and LoRA,
``tailsynth.diffusion.train``) is data-parallel the same way: every rank draws the global batch's t, noise,
dropout and flips from the shared seeded generator and trains on its slice.
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


def active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def batch_slice(n: int) -> slice:
    """This rank's contiguous share of a global batch of ``n`` samples (sizes differ by at most one)."""
    rank, size = world()
    return slice(rank * n // size, (rank + 1) * n // size)


def all_reduce_gradients(params: list[torch.Tensor], extra: list[torch.Tensor] = ()) -> None:
    """Sum the gradients of ``params`` (a missing one counts as zeros) and the ``extra`` tensors over the ranks,
    in place, in one all-reduce."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum([p.grad for p in params] + list(extra))


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` in place over the ranks (one flattened gloo all-reduce)."""
    import torch.distributed as dist
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.device, t.dtype))
        offset += n
