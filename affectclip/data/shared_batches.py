"""Hand batches from DataLoader workers to the training process through reused shared memory.

PyTorch sends every tensor of a worker's batch through a fresh shared-memory segment whose file descriptor travels
over a socket. That costs the *training* process ~0.15 ms per tensor plus the new segment's pages: ~1.3 ms for a
batch of 32 faces of 64 px with its labels (a tenth of a tiny model's CPU step), on top of the step it is waiting to
run. Here each worker packs all tensors of a batch into one buffer of a small ring it owns, sends each buffer only
the first time it uses it, and afterwards only the slot number and the layout; the training process rebuilds the
tensors as views of the buffer and hands the slot back (`SharedBatchReader.release`) once the step that used them
is done.

A slot is written only while its shared flag says the trainer released it, so a batch is never overwritten while in
use; when every slot is held, the batch takes PyTorch's ordinary way (a batch larger than its slot's buffer gets a
new, larger one). For CPU training: with CUDA, PyTorch's pinned-memory path copies each batch anyway.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import get_worker_info

PACKED_KEY = "_shared_batch"  # where a packed batch carries its slot and layout
_ALIGN = 64  # offsets of the packed tensors (every dtype's alignment, and cache lines)


@dataclass
class PackedSlot:
    """What travels from the worker instead of the batch's tensors."""

    pid: int  # the worker process: its ring, its flags
    slot: int
    layout: list[tuple[str, torch.dtype, tuple[int, ...], int]]  # key, dtype, shape, byte offset
    buffer: torch.Tensor | None  # sent the first time the worker uses this buffer, else None
    flags: torch.Tensor | None  # the worker's int32 release flags, sent with its first packed batch


class _Ring:
    """A worker's buffers and their flags (1 = holds a batch the trainer has not released)."""

    def __init__(self, slots: int) -> None:
        self.flags = torch.zeros(slots, dtype=torch.int32).share_memory_()
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.flags_sent = False
        self.next = 0

    def free_slot(self) -> int | None:
        n = len(self.buffers)
        for k in range(n):
            slot = (self.next + k) % n
            if int(self.flags[slot]) == 0:
                self.next = slot + 1
                return slot
        return None


_RINGS: dict[int, _Ring] = {}  # per worker process (keyed by pid: a forked worker must not reuse its parent's)


class SharedBatchCollate:
    """A DataLoader `collate_fn`: `collate`, then (in a worker process) pack the batch's tensors into the worker's
    ring. In the main process (num_workers=0) the batch is returned as collated. Picklable (spawned workers)."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a shared batch ring needs at least one slot, got {slots}")
        self.collate, self.slots = collate, int(slots)

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        batch = self.collate(samples)
        if get_worker_info() is None:
            return batch
        pid = os.getpid()
        if pid not in _RINGS:  # once per worker (its flags live in shared memory: not a per-batch allocation)
            _RINGS[pid] = _Ring(self.slots)
        return pack(batch, _RINGS[pid])


def pack(batch: dict[str, Any], ring: _Ring) -> dict[str, Any]:
    """Copy the batch's top-level tensors into a free slot of `ring`; the batch unchanged when none is free."""
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        return batch
    slot = ring.free_slot()
    if slot is None:
        return batch
    layout, size = [], 0
    for key, t in tensors.items():
        size = -(-size // _ALIGN) * _ALIGN
        layout.append((key, t.dtype, tuple(t.shape), size))
        size += t.numel() * t.element_size()
    buffer = ring.buffers[slot]
    fresh = buffer is None or buffer.numel() < size
    if fresh:  # a quarter spare, for batches that grow a little (padded clips, captions of other lengths)
        buffer = ring.buffers[slot] = torch.empty(size + size // 4 + _ALIGN, dtype=torch.uint8).share_memory_()
    for (_, dtype, shape, offset), t in zip(layout, tensors.values(), strict=True):
        _view(buffer, dtype, shape, offset).copy_(t)
    ring.flags[slot] = 1
    out = {k: v for k, v in batch.items() if k not in tensors}
    out[PACKED_KEY] = PackedSlot(os.getpid(), slot, layout, buffer if fresh else None,
                                 None if ring.flags_sent else ring.flags)
    ring.flags_sent = True
    return out


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], offset: int) -> torch.Tensor:
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


class SharedBatchReader:
    """Training-process side: rebuild packed batches as views of the workers' buffers; release them after use.

    The views stay valid until `release(batch)`; after that the worker may overwrite them. Call `reset()` when a
    DataLoader iterator ends (its workers exit and the next ones bring new rings)."""

    def __init__(self) -> None:
        self._flags: dict[int, torch.Tensor] = {}
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}

    def unpack(self, batch: dict[str, Any]) -> dict[str, Any]:
        packed: PackedSlot | None = batch.get(PACKED_KEY)
        if packed is None:
            return batch
        if packed.flags is not None:
            self._flags[packed.pid] = packed.flags
        if packed.buffer is not None:
            self._buffers[(packed.pid, packed.slot)] = packed.buffer
        buffer = self._buffers[(packed.pid, packed.slot)]
        for key, dtype, shape, offset in packed.layout:
            batch[key] = _view(buffer, dtype, shape, offset)
        return batch

    def release(self, batch: dict[str, Any]) -> None:
        """The step is done with this batch's tensors: its worker may reuse the slot (a no-op for other batches)."""
        packed: PackedSlot | None = batch.pop(PACKED_KEY, None)
        if packed is not None:
            self._flags[packed.pid][packed.slot] = 0

    def reset(self) -> None:
        self._flags.clear()
        self._buffers.clear()
