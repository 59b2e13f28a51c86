"""A CPU-checkable stand-in for ``torch.cuda.set_sync_debug_mode``: the ops that make the host wait for
the GPU, caught while a step runs on any device.

On a GPU these stall the CPU until every queued kernel has finished: reading a value on the host
(``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``: ``aten._local_scalar_dense`` /
``aten.is_nonzero``) and ops whose output size depends on the data (boolean-mask indexing and
``nonzero``, ``masked_select``, ``unique``). A training step should hold none of them; the engine reads
the loss on the host only every ``train.log_every`` steps.

    with HostSyncAudit() as audit:
        loss, logs = method.training_step(views, 0)
        loss.backward()
    assert not audit.found, audit.report()
"""
from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = {"_local_scalar_dense", "is_nonzero", "nonzero", "nonzero_static", "masked_select", "item",
               "_unique", "_unique2", "unique_dim", "unique_consecutive", "masked_scatter"}


def _is_bool_index(func, args) -> bool:
    """aten.index with a bool mask among the indices (``x[mask]``): its output size is the mask's count."""
    if func.__name__.split(".")[0] not in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class HostSyncAudit(TorchDispatchMode):
    """Records every host-syncing op dispatched inside the ``with`` block: (op, where) in ``found``,
    ``where`` the innermost frames of ssl-derm (or lightly) that called it."""

    def __init__(self, packages=("ssl_derm", "lightly")):
        super().__init__()
        self.packages, self.found = packages, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in SYNCING_OPS or _is_bool_index(func, args):
            frames = [f for f in traceback.extract_stack()[:-1]
                      if any(f"/{p}/" in f.filename for p in self.packages)]
            where = " <- ".join(f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno}"
                                for f in frames[-3:][::-1])
            self.found.append((func.__name__, where or "outside ssl-derm"))
        return func(*args, **(kwargs or {}))

    def report(self) -> str:
        seen = sorted(set(self.found))
        return "; ".join(f"{op} at {where}" for op, where in seen)
