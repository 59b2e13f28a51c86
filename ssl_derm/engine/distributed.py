"""DDP through ``torchrun``: process-group set-up, rank helpers, collectives the engine needs."""
from __future__ import annotations

import atexit
import datetime
import os
import secrets
import time
from typing import Any, Callable

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
    group = _fresh_store_args(timeout)
    if device.type == "cuda":
        index, backend = cuda_placement(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                        torch.cuda.device_count())
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
        if backend == "gloo":
            if local_rank == 0:
                print(f"ssl-derm: {os.environ.get('LOCAL_WORLD_SIZE')} ranks share {torch.cuda.device_count()} "
                      "GPU(s) on this node: NCCL refuses two ranks on one GPU, so the gloo backend runs "
                      "(correct, slower: for checks, not for speed)", flush=True)
            dist.init_process_group(backend="gloo", timeout=timeout, **group)
        else:
            dist.init_process_group(backend="nccl", device_id=device, timeout=timeout, **group)
    else:
        dist.init_process_group(backend="gloo", timeout=timeout, **group)
    atexit.register(cleanup)  # the group is destroyed when the run's process ends, whichever way it returns
    return device


_STORE_KEY = "ssl_derm/process_group_store"  # in torchrun's store: "PORT TOKEN" of rank 0's store
_TOKEN_KEY = "ssl_derm/token"


def _fresh_store_args(timeout: datetime.timedelta) -> dict:
    """``store``/``rank``/``world_size`` for ``init_process_group`` where torchrun's agent hosts the
    store (``TORCHELASTIC_USE_AGENT_STORE=True``): see :func:`process_group_store`; {} otherwise
    (plain ``env://``)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    rank_, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = process_group_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank_, world, timeout)
    return {"store": store, "rank": rank_, "world_size": world}


def process_group_store(addr: str, agent_port: int, rank_: int, world: int,
                        timeout: datetime.timedelta) -> dist.TCPStore:
    """The store the process group is set up through: one that rank 0 starts anew each time torchrun
    (re)starts the workers, found through the agent's store at ``addr:agent_port``.

    torchrun's agent hosts one TCPStore for the whole job and hands its address to every restart of
    the workers (``--max-restarts``). The keys the workers before wrote there stay (gloo's peer
    addresses, barrier counters), under no per-restart prefix (and ``TORCHELASTIC_RESTART_COUNT``
    would not make one: a node whose worker failed counts the restart, a node whose agent stopped its
    healthy workers for the new round does not). A restarted rank then read the address of a dead peer and gloo failed with
    "Connection refused". Here rank 0 starts its own store on a free port and publishes its port and a
    random token in the agent's store; another rank takes it only when the store found there holds
    that token, which only the live rank 0 of this start can have (an address left by the rank 0
    before is a closed port, or a port now used by something else)."""
    agent = dist.TCPStore(addr, agent_port, is_master=False, timeout=timeout)
    if rank_ == 0:
        token = secrets.token_hex(16)
        store = dist.TCPStore(addr, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        store.set(_TOKEN_KEY, token)
        agent.set(_STORE_KEY, f"{store.port} {token}")
        return store
    deadline, seen = time.monotonic() + timeout.total_seconds(), ""
    while time.monotonic() < deadline:
        try:
            seen = agent.get(_STORE_KEY).decode()  # waits for the first rank 0 to publish
        except RuntimeError:
            break
        port, token = seen.split()
        try:
            store = dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=2))
            if store.get(_TOKEN_KEY).decode() == token:
                store.set_timeout(timeout)
                return store
        except RuntimeError:  # nothing listens there (any more), or a store without the token
            pass
        time.sleep(0.1)
    raise RuntimeError(f"rank {rank_}: rank 0 published no live process-group store through torchrun's store "
                       f"at {addr}:{agent_port} within {timeout} (last seen: port and token '{seen or 'none'}'); "
                       "is rank 0's node up, and can this node reach it on any port?")


def cuda_placement(local_rank: int, local_world: int, n_gpus: int):
    """(GPU index, backend) of a rank: ranks go round the node's GPUs (``local_rank % n_gpus``), so more
    ranks than GPUs share them (a DDP correctness run on one GPU); NCCL needs one GPU per rank."""
    if n_gpus < 1:
        raise RuntimeError("device=cuda under torchrun, but this node has no visible GPU")
    return local_rank % n_gpus, ("nccl" if local_world <= n_gpus else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def is_node_leader() -> bool:
    """The first rank of its node (LOCAL_RANK 0): writes what each node keeps on its own disk."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 if dist.is_initialized() else True


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


def from_rank0(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only, its result on every rank: the one place a run decides what every
    rank must agree on (finished, stale, resume step). An exception raised by ``fn`` on rank 0 is
    raised on every rank, so no rank goes on into a collective the others have left."""
    if not dist.is_initialized():
        return fn()
    box = [None]
    if is_main():
        try:
            box = [(True, fn())]
        except Exception as e:  # handed to every rank, raised there
            box = [(False, e)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def broadcast_object(obj, src: int):
    """``obj`` of rank ``src`` on every rank (pickled; for checkpoint states read on one node only)."""
    if not dist.is_initialized():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
