"""The one sample order every input backend follows, and the optional horizontal flip.

Each epoch is a seeded permutation of the dataset, cut to whole global batches (the partial last
batch is dropped) and split by rank: batch b of rank r is the b-th group of `batch_size` indices in
column r. The torch, DALI and cache backends all draw their batches from this table, so a run
resumed mid-epoch sees exactly the batches the uninterrupted run would have, even when a resume
picks another backend (data.backend=auto may choose differently on another machine).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch


def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return n // (batch_size * world)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1) -> torch.Tensor:
    """(batches, batch_size) int64 indices of this rank's batches in this epoch, on the CPU.

    The permutation is made on the CPU once per epoch (cheap even for CelebA; measured: BENCHMARKS.md)
    so it is the same on every device and backend; a device backend copies it over once per epoch.
    """
    batches = batches_per_epoch(n, batch_size, world)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)[: batches * batch_size * world]
    return perm.view(batches, world, batch_size)[:, rank]


def flip_masks(batches: int, batch_size: int, seed: int, epoch: int, rank: int = 0) -> torch.Tensor:
    """(batches, batch_size) bool: which images of each batch to mirror, from (seed, epoch, rank) alone.

    Drawn from its own generator, never the global RNG, so the flips neither disturb the noise
    stream nor depend on it, and a resume at any batch gets the same flips as the run it continues.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 65_537 + rank + 7_919)
    return torch.rand(batches, batch_size, generator=g) < 0.5


class HFlip:
    """Wraps any input backend: mirrors a seeded half of each batch on the device (data.hflip), drawn
    from the backend's own seed and rank, so the flips differ per rank as its images do."""

    def __init__(self, loader):
        self.loader, self.seed, self.rank = loader, loader.feed.seed, loader.feed.rank
        self.name, self.feed = loader.name, loader.feed

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        masks = None
        for b, batch in enumerate(self.loader.epoch(epoch, start_batch), start_batch):
            if masks is None:  # one small copy per epoch, not one per batch
                masks = flip_masks(len(self), batch.shape[0], self.seed, epoch, self.rank).to(batch.device)
            yield torch.where(masks[b].view(-1, 1, 1, 1), batch.flip(2), batch)  # NHWC: dim 2 is width
