"""The plain input path, and the baseline every speed claim is measured against.

PIL decode -> RGB -> Resize(shorter side, antialiased) -> CenterCrop -> uint8 HWC tensor, batched
by a torch DataLoader. Floats and normalisation happen on the device, inside the step.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from ..stop import leave_stop_signals_to_the_trainer
from .base import Feed, Loader, first_that_decodes
from .folder import open_rgb
from .order import batches_per_epoch, epoch_batches


class ImageFiles(Dataset):
    def __init__(self, files: list[Path], image_size: int):
        self.files = [str(f) for f in files]
        self.transform = transforms.Compose([transforms.Resize(image_size),
                                             transforms.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        im = first_that_decodes(self.files, i, open_rgb)  # validated at start; a file may change since
        return torch.from_numpy(np.array(self.transform(im), dtype=np.uint8))  # H x W x 3


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, cut to whole global batches, sliced for this rank (order.py).

    `set_epoch(epoch, start_batch)` picks the epoch and skips batches already trained on, so a run
    resumed mid-epoch sees exactly the batches the uninterrupted run would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.batches = batches_per_epoch(n, batch_size, world)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def indices(self) -> torch.Tensor:
        mine = epoch_batches(self.n, self.batch_size, self.seed, self.epoch, self.rank, self.world)
        return mine[self.start:].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return (self.batches - self.start) * self.batch_size


class TorchLoader(Loader):
    """Batches of uint8 NHWC images on the device, from a DataLoader over the validated files."""

    name = "torch"

    def __init__(self, feed: Feed):
        super().__init__(feed)
        f = feed
        self.sampler = EpochSampler(self.n, f.batch_size, f.seed, f.rank, f.world)
        self.loader = DataLoader(
            ImageFiles(f.files, f.image_size), batch_size=f.batch_size, sampler=self.sampler,
            num_workers=f.workers, pin_memory=f.device.type == "cuda", drop_last=True,
            persistent_workers=f.workers > 0, prefetch_factor=4 if f.workers > 0 else None,
            # its own generator: worker seeding must not draw from the global RNG that makes the noise
            generator=torch.Generator().manual_seed(f.seed), worker_init_fn=leave_stop_signals_to_the_trainer,
        )

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        self.sampler.set_epoch(epoch, start_batch)
        for batch in self.loader:
            yield batch.to(self.device, non_blocking=True)
