"""Pick and build the input backend: data.backend = auto | cache | dali | nvjpeg | torch.

auto: `cache` when the decoded dataset (N x S x S x 3 bytes) fits the memory budget, else `dali`
when DALI imports, else `nvjpeg` (torchvision's GPU decode) on CUDA, else `torch`. The budget is where the cache would live:
  - CUDA: half of the GPU memory free at start (torch.cuda.mem_get_info). The DCGAN's own needs are
    small (weights, Adam state and activations of a batch-128 64x64 step are well under 1 GB), and
    the other half leaves room for torch.compile, CUDA graphs and a larger model.
  - CPU: a quarter of the host memory available at start (MemAvailable), divided among the ranks
    on this node (LOCAL_WORLD_SIZE): each rank holds its own copy.
CelebA at 64x64 is 2.5 GB: the cache on any GPU with more than 5 GB free, or a host with 10 GB
available. The choice and the reason are returned for the trainer to print.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import Config, UsageError
from . import cache
from .folder import ImageList

GPU_FRACTION = 0.5
HOST_FRACTION = 0.25


def _host_available() -> int:
    """Bytes of memory the host can give without swapping (Linux MemAvailable; else total)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(device: torch.device) -> tuple[int, str]:
    """Bytes the cache may take on this device, and what that number is, for the printed reason."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_FRACTION), f"{GPU_FRACTION:.0%} of {free / 2**30:.1f} GiB free GPU memory"
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    avail = _host_available()
    per = f" / {ranks} ranks" if ranks > 1 else ""
    return int(avail * HOST_FRACTION / ranks), f"{HOST_FRACTION:.0%} of {avail / 2**30:.1f} GiB available RAM{per}"


def choose(backend: str, n_images: int, image_size: int, device: torch.device) -> tuple[str, str]:
    """(backend, why). An explicit backend is taken as given (DALI must import; nvjpeg needs CUDA)."""
    from . import nvjpeg
    from .dali import available

    need = cache.nbytes(n_images, image_size)
    if backend == "dali" and available():
        raise UsageError(f"data.backend=dali: {available()}")
    if backend == "nvjpeg" and nvjpeg.available(device):
        raise UsageError(f"data.backend=nvjpeg: {nvjpeg.available(device)}")
    if backend != "auto":
        return backend, "data.backend=" + backend
    budget, what = memory_budget(device)
    size = f"{n_images} images at {image_size}px = {need / 2**20:.1f} MiB"
    if need <= budget:
        return "cache", f"auto: {size} fits the budget ({what})"
    if available() is None:
        return "dali", f"auto: {size} exceeds the cache budget ({what})"
    if nvjpeg.available(device) is None:
        return "nvjpeg", f"auto: {size} exceeds the cache budget ({what}) and {available()}; GPU decode by torchvision"
    return "torch", f"auto: {size} exceeds the cache budget ({what}) and {available()}"


def make_loader(cfg: Config, images: ImageList, device: torch.device, rank: int = 0, world: int = 1,
                say: Callable[[str], None] = print):
    """The input backend the config asks for; `say` prints the choice and, for the cache, its build."""
    d, t = cfg.data, cfg.train
    name, why = choose(d.backend, len(images.files), d.image_size, device)
    say(f"input: backend {name} ({why})")
    if name == "cache":
        report = build_cache(images, d.image_size, device, d.dali_threads, say)
        on_gpu = device.type == "cuda" and cache.nbytes(report.images, d.image_size) <= memory_budget(device)[0]
        loader = cache.CacheLoader(report.folder, t.batch_size, t.seed, device, rank, world, on_gpu=on_gpu)
        if device.type == "cuda" and not on_gpu:
            say("input: the cache does not fit the GPU budget; serving it from pinned host memory")
    elif name == "dali":
        from .dali import DaliLoader
        loader = DaliLoader(images.files, d.image_size, t.batch_size, t.seed, device, d.dali_threads, d.prefetch,
                            rank, world, sizes=images.sizes)
    elif name == "nvjpeg":
        from .nvjpeg import NvjpegLoader
        loader = NvjpegLoader(images.files, d.image_size, t.batch_size, t.seed, device, d.dali_threads, d.prefetch,
                              rank, world)
    else:
        from .torch import TorchLoader
        loader = TorchLoader(images.files, d.image_size, t.batch_size, d.workers, t.seed, device, rank, world)
    if d.hflip:
        from .order import HFlip
        loader = HFlip(loader, t.seed, rank)
    return loader


def build_cache(images: ImageList, image_size: int, device: torch.device, threads: int,
                say: Callable[[str], None] = print) -> cache.BuildReport:
    """cache.ensure with a progress bar on a terminal; one line saying what was built or reused."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not Console().is_terminal:  # batch jobs and pipes: the summary line only
        report = cache.ensure(images, image_size, device, threads)
    else:
        with Progress(TextColumn("decoding into the cache"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("decode", total=len(images.files))
            report = cache.ensure(images, image_size, device, threads, lambda done: bar.update(task, completed=done))
    size = cache.nbytes(report.images, image_size) / 2**20
    if report.built:
        say(f"input: cache built: {report.images} images, {size:.1f} MiB in {report.seconds:.1f} s "
            f"({report.rate:,.0f} img/s, {report.decoder}) at {report.folder}")
    else:
        say(f"input: cache reused: {report.images} images, {size:.1f} MiB at {report.folder}")
    if report.skipped:
        say(f"warning: {len(report.skipped)} files did not decode while building the cache and are left out "
            f"(first: {report.skipped[0][0]}: {report.skipped[0][1]})")
    return report
