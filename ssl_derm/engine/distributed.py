"""DDP through ``torchrun``: process-group set-up, rank helpers, collectives the engine needs."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device, timeout_min: int = 60) -> torch.device:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns this rank's device.

    ``timeout_min`` (``train.dist_timeout_min``): how long a collective may wait. The default of
    torch (10 minutes) is shorter than rank 0 may need to decode a large cache while the others wait.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(minutes=timeout_min)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group(backend="nccl", device_id=device, timeout=timeout)
    else:
        dist.init_process_group(backend="gloo", timeout=timeout)
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_true(flag: torch.Tensor) -> torch.Tensor:
    """Logical OR of a bool tensor over all ranks (every rank gets the result)."""
    if not dist.is_initialized():
        return flag
    t = flag.to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.bool()


def min_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return value
    t = value.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a list of one without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
