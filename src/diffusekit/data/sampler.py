"""An infinite, resumable, epoch-seeded index sampler.

Epoch e visits the dataset in the order ``randperm(N, seed = hash(seed, e))``; the position is counted in
examples since the start of training, so the stream depends only on (seed, N) and resumes exactly from
``state_dict()`` whatever the batch size before and after. ``rank`` / ``world_size`` take every
``world_size``-th example of the same global stream, so a global batch is the same examples whatever
the number of processes.
"""

from __future__ import annotations

import torch

__all__ = ["InfiniteSampler"]


class InfiniteSampler:
    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size < 1:
            raise ValueError("the dataset is empty: nothing to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.position = 0  # global examples consumed (all ranks together)
        self._epoch, self._order = -1, None

    def _order_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._order = torch.randperm(self.size, generator=g)
            else:
                self._order = torch.arange(self.size)
            self._epoch = epoch
        return self._order

    def next_indices(self, global_batch: int) -> torch.Tensor:
        """This rank's share of the next ``global_batch`` examples of the stream."""
        if global_batch % self.world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {self.world_size}")
        positions = torch.arange(self.position, self.position + global_batch)[self.rank::self.world_size]
        self.position += global_batch
        epochs, offsets = positions // self.size, positions % self.size
        indices = torch.empty(len(positions), dtype=torch.long)
        for epoch in torch.unique(epochs).tolist():  # a batch spans one or two epochs (more if batch > size)
            mask = epochs == epoch
            indices[mask] = self._order_of(epoch)[offsets[mask]]
        return indices

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError(f"sampler state is for a dataset of {state['size']} examples with seed {state['seed']}, "
                             f"this one has {self.size} with seed {self.seed}")
        self.position = int(state["position"])
