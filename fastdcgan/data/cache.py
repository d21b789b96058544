"""Decode once, train from memory: the whole dataset as one uint8 (N, S, S, 3) array.

On disk: <cache_dir()>/arrays/<folder>-<S>px-<key>/ holding images.npy (memory-mappable) and
index.json (format version, transform, image size, and every file with its size and mtime). The key
hashes exactly what index.json records, so a changed, added or removed file, another image size or
a new format builds a new cache, and a matching one is reused. A build writes into a temporary
folder and renames it into place as its last act (index.json is written last inside it), so an
interrupted build never leaves a folder that looks complete; a file lock stops two processes on
one machine from building the same cache at once.

Decoder: the fastest the machine has (decoder_kind), and its kind is part of the key, so a cache
one decoder built is never served as another's (they differ by a fraction of a grey level). On a
GPU: DALI's mixed decoder (nvJPEG, with the hardware decoder where there is one), else, without
DALI, torchvision's nvJPEG binding (nvjpeg.py). On CPU: torchvision's decoder and tensor resize on
threads (nvjpeg.py with device="cpu"), else DALI's CPU pipeline, else PIL in processes: fastest
first, in the trainer's own process (measured: BENCHMARKS.md, cache build rows); torchvision's
images are the plain path's to 0.002 grey levels. A chunk DALI refuses is redone file by file with
PIL; a file nvJPEG refuses is decoded by PIL. The build reports its rate (images/s).

Training (CacheLoader): the array goes to GPU memory (or, when told to use the cache although it
does not fit there, pinned host memory); on CPU it is an array in RAM. A batch is a gather by the
epoch's order table (order.py), so resume stays exact and ranks take disjoint slices.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import UsageError
from . import dali, nvjpeg
from .base import Feed, Loader
from .decode import TRANSFORM, decode_pil, decode_pil_many, plain_path_box  # noqa: F401 (decode_pil, plain_path_box: re-exported)
from .folder import ImageList, cache_dir

FORMAT_VERSION = 1
# Fastest first on each device, each where it is present (decoder_kind); measured on CPU (BENCHMARKS.md).
DECODERS = ("dali-mixed", "torchvision-cuda", "torchvision-cpu", "dali-cpu", "pil")
CHUNK = 256  # images per decode batch while building


def decoder_kind(device: torch.device) -> str:
    """The fastest decoder this machine has for a cache built on `device`: on CUDA, DALI's mixed
    decoder, else torchvision's nvJPEG binding; on CPU, torchvision's decoder on threads, else
    DALI's CPU pipeline, else PIL in processes."""
    if device.type == "cuda":
        if dali.unavailable_reason() is None:
            return "dali-mixed"
        if nvjpeg.unavailable_reason(device) is None:
            return "torchvision-cuda"
    if nvjpeg.decoder_missing_reason() is None:
        return "torchvision-cpu"
    return "dali-cpu" if dali.unavailable_reason() is None else "pil"


def index_of(images: ImageList, image_size: int, decoder: str) -> dict:
    """What a cache is a cache of: the key is a hash of this."""
    files = []
    for p in images.files:
        st = p.stat()
        files.append([str(p.relative_to(images.root)), st.st_size, st.st_mtime_ns])
    return {"version": FORMAT_VERSION, "transform": TRANSFORM, "image_size": image_size,
            "decoder_kind": decoder, "root": str(images.root.resolve()), "files": files}


def location(index: dict) -> Path:
    key = hashlib.sha1(json.dumps(index, sort_keys=True).encode()).hexdigest()[:16]
    name = Path(index["root"]).name or "root"
    return cache_dir() / "arrays" / f"{name}-{index['image_size']}px-{key}"


def is_complete(folder: Path) -> bool:
    return (folder / "index.json").is_file() and (folder / "images.npy").is_file()


def _chunks(n: int) -> list[np.ndarray]:
    return [np.arange(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def _decode_pil_pool(files: list[Path], image_size: int, workers: int) -> Iterator[list[np.ndarray | str]]:
    paths = [[str(files[i]) for i in c] for c in _chunks(len(files))]
    if workers <= 1:
        yield from (decode_pil_many(p, image_size) for p in paths)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(decode_pil_many, paths, [image_size] * len(paths))


@dataclass
class BuildReport:
    folder: Path
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) that did not decode
    seconds: float = 0.0
    decoder: str = ""
    built: bool = True  # False: an existing cache was reused

    @property
    def rate(self) -> float:
        """Images decoded per second by the build (that of the build that made a reused cache)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _decoder(kind: str, images: ImageList, size: int, device: torch.device, threads: int, stats: dict):
    """(what the build line calls it, its chunks of images or reasons, in file order)."""
    files = images.files
    if kind.startswith("dali"):
        on = device if kind == "dali-mixed" else torch.device("cpu")
        return (f"DALI {'mixed (GPU)' if kind == 'dali-mixed' else 'CPU'}, {threads} threads",
                dali.decode_chunks(files, size, on, threads, CHUNK, stats, images.sizes))
    if kind == "torchvision-cuda":
        return (f"torchvision nvJPEG (GPU), {threads} read threads",
                nvjpeg.decode_chunks(files, size, device, threads, CHUNK, stats))
    if kind == "torchvision-cpu":
        return (f"torchvision CPU, {threads} threads",
                nvjpeg.decode_chunks(files, size, torch.device("cpu"), threads, CHUNK, stats))
    why = f" (DALI unavailable: {dali.unavailable_reason()})" if dali.unavailable_reason() else ""
    return f"PIL, {threads} processes{why}", _decode_pil_pool(files, size, threads)


def _build(index: dict, images: ImageList, folder: Path, device: torch.device, threads: int,
           progress: Callable[[int], None] | None) -> BuildReport:
    t0, size, n = time.perf_counter(), index["image_size"], len(images.files)
    threads = threads or dali.default_threads()
    stats: dict = {}
    decoder, chunks = _decoder(index["decoder_kind"], images, size, device, threads, stats)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        arr = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                        shape=(n, size, size, 3))
        rows, kept, skipped, i = 0, [], [], 0
        for chunk in chunks:
            for item in chunk:
                if isinstance(item, str):
                    skipped.append((index["files"][i][0], item))
                else:
                    arr[rows] = item
                    kept.append(index["files"][i])
                    rows += 1
                i += 1
            if progress:
                progress(i)
        if rows == 0:
            raise UsageError(f"data.root {images.root}: no image decoded while building the cache")
        if rows < n:  # rare (DALI and PIL both refused a validated file): rewrite with the true length
            small = np.lib.format.open_memmap(tmp / "images.tmp.npy", mode="w+", dtype=np.uint8,
                                              shape=(rows, size, size, 3))
            small[:] = arr[:rows]
            small.flush()
            del small
            os.replace(tmp / "images.tmp.npy", tmp / "images.npy")
        else:
            arr.flush()
        del arr
        seconds = time.perf_counter() - t0
        if stats.get("cpu_fallbacks"):
            decoder += f"; {stats['cpu_fallbacks']} files torchvision's JPEG decoder refused decoded with PIL"
        if stats.get("pil_chunks"):
            decoder += f"; {stats['pil_chunks']} chunks DALI refused decoded with PIL"
        meta = {**index, "files": kept, "skipped": skipped, "shape": [rows, size, size, 3],
                "decoder": decoder, "build_seconds": round(seconds, 2), "built_at": time.time()}
        (tmp / "index.json").write_text(json.dumps(meta))  # last file written: the build is whole
        try:
            os.rename(tmp, folder)
        except OSError:
            if not is_complete(folder):  # a real failure, not a lost race with another builder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return BuildReport(folder, rows, skipped, seconds, decoder)


def _remove_stale_temps(parent: Path, max_age_s: float = 3600) -> None:
    """Temp folders of builds that died: a live build writes into its folder every few ms."""
    for stale in parent.glob(".tmp-*"):
        try:
            touched = max([stale.stat().st_mtime] + [p.stat().st_mtime for p in stale.iterdir()])
            if time.time() - touched > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def ensure(images: ImageList, image_size: int, device: torch.device, threads: int = 0,
           progress: Callable[[int], None] | None = None, decoder: str | None = None) -> BuildReport:
    """The cache for these files at this size and decoder (default: decoder_kind(device)): reused
    when one matches, else built now."""
    decoder = decoder or decoder_kind(device)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    index = index_of(images, image_size, decoder)
    folder = location(index)
    if not is_complete(folder):
        with _lock(folder.parent / f".{folder.name}.lock"):
            if not is_complete(folder):  # another process may have built it while we waited
                _remove_stale_temps(folder.parent)
                return _build(index, images, folder, device, threads, progress)
    meta = json.loads((folder / "index.json").read_text())
    return BuildReport(folder, meta["shape"][0], [tuple(s) for s in meta["skipped"]], meta["build_seconds"],
                       meta["decoder"], built=False)


def nbytes(n: int, image_size: int) -> int:
    return n * image_size * image_size * 3


def fits_the_gpu(feed: Feed, images: int) -> bool:
    """Whether a cache of `images` at the size the feed trains at fits the budget of its CUDA device."""
    return feed.device.type == "cuda" and nbytes(images, feed.image_size) <= memory_budget(feed.device)[0]


def _to_gpu(arr: np.ndarray, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """Copy a (memory-mapped) array to the GPU piece by piece: never a second full copy on the host."""
    out = torch.empty(arr.shape, dtype=torch.uint8, device=device)
    for i in range(0, len(arr), chunk):
        out[i:i + chunk].copy_(torch.from_numpy(np.ascontiguousarray(arr[i:i + chunk])))
    return out


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
    """Bytes the cache may take on this device, and what that number is, for the printed reason.

    CUDA: half the GPU memory free at start. The DCGAN's own needs are small (weights, Adam state and
    a batch-128 64x64 step's activations are well under 1 GB); the other half leaves room for
    torch.compile, CUDA graphs and a larger model. CPU: a quarter of the host memory available at
    start, divided among this node's ranks (LOCAL_WORLD_SIZE), each of which holds its own copy.
    CelebA at 64x64 is 2.5 GB: cached on a GPU with more than 5 GB free or a host with 10 GB available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_FRACTION), f"{GPU_FRACTION:.0%} of {free / 2**30:.1f} GiB free GPU memory"
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    avail = _host_available()
    per = f" / {ranks} ranks" if ranks > 1 else ""
    return (int(avail * HOST_FRACTION / ranks),
            f"{HOST_FRACTION:.0%} of {avail / 2**30:.1f} GiB available RAM{per}")


def build_cache(images: ImageList, image_size: int, device: torch.device, threads: int,
                say: Callable[[str], None] = print) -> BuildReport:
    """cache.ensure with a progress bar on a terminal; one line saying what was built or reused."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not Console().is_terminal:  # batch jobs and pipes: the summary line only
        report = ensure(images, image_size, device, threads)
    else:
        with Progress(TextColumn("decoding into the cache"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("decode", total=len(images.files))
            report = ensure(images, image_size, device, threads,
                            lambda done: bar.update(task, completed=done))
    size = nbytes(report.images, image_size) / 2**20
    if report.built:
        say(f"input: cache built: {report.images} images, {size:.1f} MiB in {report.seconds:.1f} s "
            f"({report.rate:,.0f} img/s, {report.decoder}) at {report.folder}")
    else:
        say(f"input: cache reused: {report.images} images, {size:.1f} MiB at {report.folder}")
    if report.skipped:
        say(f"warning: {len(report.skipped)} files did not decode while building the cache and are left out "
            f"(first: {report.skipped[0][0]}: {report.skipped[0][1]})")
    return report


class CacheLoader(Loader):
    """Batches of uint8 NHWC images gathered from the whole decoded dataset held in memory."""

    name = "cache"

    def __init__(self, feed: Feed, folder: Path, on_gpu: bool = True):
        """folder: a built cache of feed.files at feed.image_size (ensure); on_gpu: hold it in GPU
        memory on CUDA (else in pinned host memory)."""
        arr = np.load(folder / "images.npy", mmap_mode="r")
        super().__init__(feed, n=len(arr))
        self.gpu_data: torch.Tensor | None = None
        if self.device.type == "cuda" and on_gpu:
            self.gpu_data = _to_gpu(arr, self.device)
        elif self.device.type == "cuda":  # pinned, so each batch goes over with an async copy
            pinned = torch.from_numpy(np.ascontiguousarray(arr)).pin_memory()
            self.host = pinned.numpy()
            self.staging = [torch.empty((feed.batch_size, *arr.shape[1:]), dtype=torch.uint8).pin_memory()
                            for _ in range(2)]
            self.copied: list[torch.cuda.Event | None] = [None, None]
        else:
            self.host = np.array(arr)  # read into RAM once

    @classmethod
    def open(cls, feed: Feed, say: Callable[[str], None] = print) -> CacheLoader:
        """Build the cache (or reuse a matching one), saying which, then serve it: from GPU memory when
        it fits the budget, else pinned host memory."""
        report = build_cache(feed.images(), feed.image_size, feed.device, feed.threads, say)
        on_gpu = fits_the_gpu(feed, report.images)
        if feed.device.type == "cuda" and not on_gpu:
            say("input: the cache does not fit the GPU budget; serving it from pinned host memory")
        return cls(feed, report.folder, on_gpu)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        table = self.order(epoch)[start_batch:]
        if self.gpu_data is not None:
            for row in table.to(self.device):  # one copy of the order per epoch; then no host work
                yield self.gpu_data.index_select(0, row)
            return
        # Host gathers use numpy's single-threaded take: a batch is ~1.5 MB of memcpy, which one thread
        # does at once, while torch's OpenMP index_select forks and joins on oversubscribed cores and
        # took far longer (measured: BENCHMARKS.md).
        if self.device.type == "cpu":
            for row in table.numpy():
                yield torch.from_numpy(np.take(self.host, row, axis=0))
            return
        for b, row in enumerate(table.numpy()):  # pinned host data: gather into a staging buffer, copy async
            slot = b % 2
            if self.copied[slot] is not None:
                self.copied[slot].synchronize()  # the copy two batches ago has left this buffer
            np.take(self.host, row, axis=0, out=self.staging[slot].numpy())
            batch = self.staging[slot].to(self.device, non_blocking=True)
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record()
            yield batch
