"""Activation caches for reconstruction: one tensor of N samples per cached quantity, held in memory while a
byte budget allows and memory-mapped to a file otherwise (``torch.from_file(shared=True)``: the OS pages it,
so a cache larger than RAM still works, and only the rows of a batch are read per iteration).

Only the current block's inputs and targets are cached at any time, never the whole network's activations.
Feature maps (samples of shape C×H×W) are stored channels-last (N, H, W, C in memory), the layout the
reconstruction iterates in; a batch read by index keeps it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class ActivationStore:
    """``n`` samples of shape ``sample_shape``; rows are written batch by batch, read by index."""

    def __init__(self, n: int, sample_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 path: Path | None = None):
        self.path = path
        numel = n * int(torch.Size(sample_shape).numel())
        nhwc = len(sample_shape) == 3
        if path is None:
            self.data = torch.empty((n, *sample_shape), dtype=dtype, device=device,
                                    memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        else:
            flat = torch.from_file(str(path), shared=True, size=numel, dtype=dtype)
            self.data = flat.view(n, *sample_shape[1:], sample_shape[0]).permute(0, 3, 1, 2) if nhwc \
                else flat.view(n, *sample_shape)
        self.device = device

    @classmethod
    def wrap(cls, tensor: torch.Tensor, device: torch.device) -> ActivationStore:
        """A store over an existing tensor (e.g. the calibration images), read onto ``device``."""
        store = cls.__new__(cls)
        store.path, store.data, store.device = None, tensor, device
        return store

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def write(self, start: int, rows: torch.Tensor) -> None:
        self.data[start:start + len(rows)] = rows.detach().to(self.data.device)

    def read(self, index: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.to(self.data.device)
        return self.data[index].to(self.device, non_blocking=True)

    def close(self) -> None:
        self.data = None
        if self.path is not None and self.path.exists():
            self.path.unlink()


class CachePool:
    """Creates stores, in memory until ``memory_limit`` bytes are in use, then as files under ``spill_dir``
    (a fresh temporary folder when ``None``). In-memory stores live on ``device`` (the model's device)."""

    def __init__(self, memory_limit: int, device: torch.device, spill_dir: str | Path | None = None):
        self.memory_limit = memory_limit
        self.device = device
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.live: list[ActivationStore] = []
        self.spilled_bytes = 0
        self._count = 0

    def in_memory_bytes(self) -> int:
        return sum(s.nbytes for s in self.live if s.path is None)

    def _spill_path(self) -> Path:
        if self._spill_dir is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="qmap-recon-")
            self._spill_dir = Path(self._tmp.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        self._count += 1
        return self._spill_dir / f"cache-{os.getpid()}-{self._count}.bin"

    def new(self, n: int, sample_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> ActivationStore:
        nbytes = n * int(torch.Size(sample_shape).numel()) * torch.empty((), dtype=dtype).element_size()
        if self.in_memory_bytes() + nbytes <= self.memory_limit:
            store = ActivationStore(n, sample_shape, dtype, self.device)
        else:
            store = ActivationStore(n, sample_shape, dtype, self.device, self._spill_path())
            self.spilled_bytes += nbytes
        self.live.append(store)
        return store

    def release(self, store: ActivationStore) -> None:
        if store in self.live:
            self.live.remove(store)
            store.close()

    def close(self) -> None:
        for s in list(self.live):
            self.release(s)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def fill_store(pool: CachePool, fn, inputs: ActivationStore | torch.Tensor, batch_size: int
               ) -> list[ActivationStore]:
    """Run ``fn`` (returning a list of tensors) over ``inputs`` in batches; one store per returned tensor."""
    n = len(inputs)
    stores: list[ActivationStore] = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x = inputs.read(slice(start, start + batch_size)) if isinstance(inputs, ActivationStore) \
                else inputs[start:start + batch_size].to(pool.device)
            outs = fn(x)
            if not stores:
                stores = [pool.new(n, tuple(o.shape[1:]), o.dtype) for o in outs]
            for s, o in zip(stores, outs):
                s.write(start, o)
    return stores
