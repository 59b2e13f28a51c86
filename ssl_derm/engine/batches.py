"""Batches of uint8 images from the decode-once cache to the device.

Sampling is a seeded permutation per epoch, so the batch at a given step is the same after a resume.
Under DDP each rank takes its own share (``rank::world``) of every permutation. When the whole cache
fits in this rank's GPU budget (``resident_fraction`` of the device's total memory, and no more than
half of what is free now, so activations keep room) it is copied there once, in chunks straight from
the memmap (no full copy in host RAM per rank), and batches are gathered on the device; otherwise a
background thread reads the memmap into pinned memory and copies it ahead (non_blocking, on a copy
stream of its own, the step's stream waiting on an event). A read
error in that thread is raised in the main thread.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from ssl_derm.errors import ConfigError


class CacheBatches:
    """Infinite iterator of (B, 3, S, S) uint8 batches on ``device``.

    images: (N, S, S, 3) uint8 array (usually a memmap). ``indices`` restricts sampling to those rows.
    """

    def __init__(self, images, batch_size: int, device, seed: int = 0, rank: int = 0, world: int = 1,
                 indices=None, resident_fraction: float = 0.25, prefetch: int = 3):
        self.images = images
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)
        if len(self.indices) < batch_size * world:
            raise ConfigError(f"train.batch_size={batch_size} x {world} rank(s) is larger than the {len(self.indices)} "
                              "usable images; lower train.batch_size or add images")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed, self.rank, self.world = seed, rank, world
        self.per_epoch = len(self.indices) // (batch_size * world)
        self.resident = None
        if self.device.type == "cuda":
            nbytes = len(self.indices) * int(np.prod(images.shape[1:]))
            free, total = torch.cuda.mem_get_info(self.device)
            if nbytes < min(resident_fraction * total, 0.5 * free):
                # this rank's share only would need re-gathering each epoch; the whole set is simpler and fits
                self._sorted = np.sort(self.indices)  # resident row of cache row r: searchsorted(_sorted, r)
                self.resident = self._upload(self._sorted)
            self._copy_stream = torch.cuda.Stream(self.device)  # host -> device copies beside the compute
        self._perm_epoch, self._perm = None, None
        self.prefetch = prefetch
        self._queue = None
        self._thread = None
        self._next_step = None

    def _upload(self, rows: np.ndarray, chunk: int = 1024) -> torch.Tensor:
        """images[rows] -> one uint8 tensor on the device, copied ``chunk`` rows at a time."""
        out = torch.empty((len(rows),) + tuple(self.images.shape[1:]), dtype=torch.uint8, device=self.device)
        for i in range(0, len(rows), chunk):
            out[i:i + chunk].copy_(torch.from_numpy(np.ascontiguousarray(self.images[rows[i:i + chunk]])))
        return out

    def indices_at(self, step: int) -> np.ndarray:
        """Rows of the cache that form this rank's batch at ``step`` (deterministic)."""
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._perm_epoch:  # one permutation per epoch, not one per step: O(N) once an epoch
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.indices)
        glob = self._perm[pos * self.batch_size * self.world:(pos + 1) * self.batch_size * self.world]
        return glob[self.rank::self.world]

    def _host_batch(self, step: int) -> torch.Tensor:
        rows = np.sort(self.indices_at(step))  # sorted reads are sequential-ish on a memmap
        x = torch.from_numpy(np.ascontiguousarray(self.images[rows])).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            x = x.contiguous().pin_memory()
        return x

    def get(self, step: int) -> torch.Tensor:
        """The batch at ``step`` on the device, (B, 3, S, S) uint8."""
        if self.resident is not None:
            rows = torch.from_numpy(np.searchsorted(self._sorted, np.sort(self.indices_at(step)))).pin_memory()
            # a pinned, non-blocking copy: the host does not wait for the GPU to finish the last step
            rows = rows.to(self.device, non_blocking=True)
            return self.resident.index_select(0, rows).permute(0, 3, 1, 2).contiguous()
        if self.device.type != "cuda":
            return self._host_batch(step).contiguous()
        return self._prefetched(step)

    def _prefetched(self, step: int) -> torch.Tensor:
        if self._queue is None or step != self._next_step:
            self._start(step)
        self._next_step = step + 1
        while True:
            try:
                got_step, x = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():  # died without a word: never wait forever
                    raise RuntimeError("the batch prefetch thread stopped unexpectedly") from None
        if isinstance(x, BaseException):
            self.close()
            raise x
        assert got_step == step, (got_step, step)
        x, ready = x
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(ready)  # the copy made on the copy stream is done before the step reads it
        x.record_stream(stream)  # its memory is not reused while this stream may still read it
        return x

    def _start(self, step: int) -> None:
        self.close()
        self._queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        self._stop = stop

        q = self._queue

        def work(s=step):
            while not stop.is_set():
                try:
                    host = self._host_batch(s)
                    with torch.cuda.stream(self._copy_stream):  # its own stream: overlaps the step's kernels
                        x = host.to(self.device, non_blocking=True)
                        ready = torch.cuda.Event()
                        ready.record(self._copy_stream)
                    item = (x, ready)
                except BaseException as e:  # handed to the main thread, which raises it
                    q.put((s, e))
                    return
                q.put((s, item))
                s += 1

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread = None
            self._queue = None


class RowBatches:
    """Batches of chosen cache rows on ``device`` (finetuning, FixMatch, mean teacher: their samplers
    pick the rows), through the pretraining batch path: the whole cache resident on the GPU when it
    fits the same budget as :class:`CacheBatches` (a gather on the device), else one host copy per
    batch (sorted memmap rows straight into pinned memory), copied non-blocking and put back in the
    sampler's order on the device. images: (N, S, S, 3) uint8."""

    def __init__(self, images, device, resident_fraction: float = 0.25):
        self.images, self.device = images, torch.device(device)
        self.resident = None
        if self.device.type == "cuda":
            nbytes = int(np.prod(images.shape))
            free, total = torch.cuda.mem_get_info(self.device)
            if nbytes < min(resident_fraction * total, 0.5 * free):
                helper = CacheBatches.__new__(CacheBatches)
                helper.images, helper.device = images, self.device
                self.resident = helper._upload(np.arange(len(images)))

    def get(self, rows) -> torch.Tensor:
        """(B, 3, S, S) uint8 on the device, image i being cache row ``rows[i]``."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.resident is not None:
            idx = torch.from_numpy(rows).pin_memory().to(self.device, non_blocking=True)
            return self.resident.index_select(0, idx).permute(0, 3, 1, 2).contiguous()
        order = np.argsort(rows, kind="stable")
        pinned = self.device.type == "cuda"
        host = torch.empty((len(rows),) + tuple(self.images.shape[1:]), dtype=torch.uint8, pin_memory=pinned)
        host.numpy()[...] = self.images[rows[order]]  # the one host copy: sorted reads, sequential on a memmap
        x = host.to(self.device, non_blocking=True)
        inv = torch.from_numpy(np.argsort(order, kind="stable"))
        inv = inv.pin_memory().to(self.device, non_blocking=True) if pinned else inv
        return x.index_select(0, inv).permute(0, 3, 1, 2).contiguous()
