"""The contract every input backend keeps, and the set-up they share.

A backend is asked for a Feed (these images, in batches of this size, in the seeded order, this
rank's share, on this device) and yields uint8 NHWC batches on the device, one epoch at a time from
any batch (a resume), in the order order.py fixes for every backend. It refuses a dataset smaller
than one global batch. A file that no longer decodes (it changed after folder.scan checked it) is
replaced by the next one that does, with a warning: one bad file never ends a run. Adding a backend
is one file with a Loader subclass and one row of loaders.BACKENDS.
"""
from __future__ import annotations

import abc
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from ..config import Config, UsageError
from . import InputFailure
from .folder import ImageList
from .order import batches_per_epoch, epoch_batches

T = TypeVar("T")


@dataclass(frozen=True)
class Feed:
    """What an input backend is asked for."""
    files: list[Path]
    image_size: int
    batch_size: int
    seed: int = 0
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1
    sizes: list[tuple[int, int]] | None = None  # (width, height) per file, as folder.scan read them
    # the folder scanned (a cache names itself by it); None: the files' common folder
    root: Path | None = None
    workers: int = 0     # torch: DataLoader worker processes
    threads: int = 0     # dali: CPU threads (0: one per core, shared by a node's ranks); nvjpeg: reads (0: 2)
    prefetch: int = 2    # dali and nvjpeg: batches decoded ahead

    @classmethod
    def of(cls, cfg: Config, images: ImageList, device: torch.device, rank: int = 0, world: int = 1) -> Feed:
        d, t = cfg.data, cfg.train
        return cls(images.files, d.image_size, t.batch_size, t.seed, device, rank, world, sizes=images.sizes,
                   root=images.root, workers=d.workers, threads=d.dali_threads, prefetch=d.prefetch)

    def images(self) -> ImageList:
        """The files as the scan listed them (what a cache build reads)."""
        root = self.root or Path(os.path.commonpath([f.parent for f in self.files]))
        return ImageList(root=root, files=self.files, layout="folder", sizes=self.sizes)


class Loader(abc.ABC):
    """An input backend: `len()` batches an epoch, `epoch(e, start_batch)` yields them."""

    name = ""

    def __init__(self, feed: Feed, n: int | None = None):
        """n: the images it serves, when not all of feed.files (a cache leaves out what did not decode)."""
        self.feed, self.device = feed, feed.device
        self.n = len(feed.files) if n is None else n
        if self.n < feed.batch_size * feed.world:
            raise UsageError(f"{self.n} usable images are fewer than one batch "
                             f"(train.batch_size={feed.batch_size} x {feed.world} processes)")

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """Why this backend cannot run here (one line, with how to mend it), or None when it can."""
        return None

    @classmethod
    def open(cls, feed: Feed, say: Callable[[str], None] = print) -> Loader:
        """The backend ready to serve (a backend with set-up to report, such as a cache build, says it)."""
        return cls(feed)

    def __len__(self) -> int:
        return batches_per_epoch(self.n, self.feed.batch_size, self.feed.world)

    def order(self, epoch: int) -> torch.Tensor:
        """(batches, batch_size) indices of this rank's batches in this epoch (order.epoch_batches)."""
        f = self.feed
        return epoch_batches(self.n, f.batch_size, f.seed, epoch, f.rank, f.world)

    @abc.abstractmethod
    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """This rank's batches of the epoch from start_batch on: uint8 (B, S, S, 3) on the device."""


def first_that_decodes(files: list, i: int, decode: Callable[[object], T]) -> T:
    """decode(files[i]); if that file no longer decodes, the next file's that does, each skipped one
    named in a warning. InputFailure only when no file of the dataset decodes any more."""
    n = len(files)
    for j in range(i, i + n):
        path = files[j % n]
        try:
            return decode(path)
        except InputFailure:
            raise
        except Exception as e:  # PIL and the decoders raise many kinds; any means this file is unusable
            warnings.warn(f"skipping {path}: {type(e).__name__}: {e}; using the next image instead",
                          stacklevel=2)
    raise InputFailure("no file of the dataset decodes any more")
