"""Pick and build the input backend: data.backend = auto | cache | dali | nvjpeg | torch.

auto: `cache` when the decoded dataset (N x S x S x 3 bytes) fits the memory budget, else `dali`
when DALI imports, else `nvjpeg` (torchvision's GPU decode) on CUDA, else `torch`. The budget and
why it is what it is: cache.memory_budget. make_loader says which backend it took and why.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import Config, UsageError
from .base import Feed, Loader
from .cache import CacheLoader, memory_budget, nbytes
from .dali import DaliLoader
from .folder import ImageList
from .nvjpeg import NvjpegLoader
from .order import HFlip
from .torch import TorchLoader

# data.backend's names: one row per backend (a Loader in a file of its own).
BACKENDS: dict[str, type[Loader]] = {c.name: c for c in (CacheLoader, DaliLoader, NvjpegLoader, TorchLoader)}


def choose(backend: str, n_images: int, image_size: int, device: torch.device) -> tuple[str, str]:
    """(backend, why). An explicit backend is taken as given, if it can run here."""
    if backend != "auto":
        why_not = BACKENDS[backend].unavailable(device)
        if why_not:
            raise UsageError(f"data.backend={backend}: {why_not}")
        return backend, "data.backend=" + backend
    budget, what = memory_budget(device)
    size = f"{n_images} images at {image_size}px = {nbytes(n_images, image_size) / 2**20:.1f} MiB"
    if nbytes(n_images, image_size) <= budget:
        return "cache", f"auto: {size} fits the budget ({what})"
    no_dali = DaliLoader.unavailable(device)
    if no_dali is None:
        return "dali", f"auto: {size} exceeds the cache budget ({what})"
    if NvjpegLoader.unavailable(device) is None:
        return "nvjpeg", (f"auto: {size} exceeds the cache budget ({what}) and {no_dali}; "
                          "GPU decode by torchvision")
    return "torch", f"auto: {size} exceeds the cache budget ({what}) and {no_dali}"


def make_loader(cfg: Config, images: ImageList, device: torch.device, rank: int = 0, world: int = 1,
                say: Callable[[str], None] = print) -> Loader | HFlip:
    """The input backend the config asks for; `say` prints the choice and, for the cache, its build."""
    name, why = choose(cfg.data.backend, len(images.files), cfg.data.image_size, device)
    say(f"input: backend {name} ({why})")
    loader = BACKENDS[name].open(Feed.of(cfg, images, device, rank, world), say)
    return HFlip(loader) if cfg.data.hflip else loader
