"""Training batches in the exact order of the resumable sampler, optionally prepared by worker processes.

The stream is a pure function of (dataset size, seed, position): micro-batch k covers examples
``position + k * micro_batch ...`` of :class:`~diffusekit.data.InfiniteSampler`'s global order. With
``workers > 0`` a DataLoader runs one iterable per worker, worker w producing micro-batches k = w, w + W,
...; the DataLoader returns them round-robin, i.e. in order, so batches are identical with or without
workers and the position saved in a checkpoint is what the loop consumed, not what was prefetched.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..data import ImageArrays, InfiniteSampler

__all__ = ["BatchStream"]


def _batches(data: ImageArrays, seed: int, micro_batch: int, position: int, every: int, first: int,
             rank: int, world_size: int):
    sampler = InfiniteSampler(len(data), seed=seed, rank=rank, world_size=world_size)
    global_batch = micro_batch * world_size
    sampler.position = position + first * global_batch
    while True:
        yield data.tensors(sampler.next_indices(global_batch))
        sampler.position += (every - 1) * global_batch


class _WorkerBatches(IterableDataset):
    def __init__(self, data, seed, micro_batch, position, rank, world_size):
        super().__init__()
        self.args = (data, seed, micro_batch, position)
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return _batches(*self.args, every=workers, first=worker, rank=self.rank, world_size=self.world_size)


class BatchStream:
    """Iterator of (images float NCHW in [-1, 1], labels) micro-batches for this rank; ``position`` counts the
    global examples consumed so far (what a checkpoint stores)."""

    def __init__(self, data: ImageArrays, seed: int, micro_batch: int, position: int = 0, workers: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.position, self.global_batch = int(position), micro_batch * world_size
        if workers == 0:
            self._iter = _batches(data, seed, micro_batch, self.position, 1, 0, rank, world_size)
        else:
            loader = DataLoader(_WorkerBatches(data, seed, micro_batch, self.position, rank, world_size),
                                batch_size=None, num_workers=workers, persistent_workers=True, prefetch_factor=2,
                                pin_memory=torch.cuda.is_available(),
                                # its own generator: the workers' base seed would otherwise be drawn from the global
                                # RNG (which dropout uses) when the loader starts, so a resumed run's would differ
                                generator=torch.Generator().manual_seed(seed))
            self._iter = iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._iter)
        self.position += self.global_batch
        return batch
