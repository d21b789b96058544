"""The DALI input path: JPEG decode and resize on the GPU (nvJPEG), or on CPU threads without one.

Pipeline, per sample: file name -> fn.io.file.read -> fn.decoders.image ("mixed" on a GPU, "cpu"
otherwise) -> one antialiased linear fn.resize of exactly the source region that the plain path's
Resize(S) + CenterCrop(S) keeps (torchvision's rounding included: plain_path_roi) to S x S -> uint8
HWC. Same geometry, same filter: the two paths differ by about 0.1 grey levels on average (tested;
a plain centred square would be off by half a pixel, 0.8 grey levels at 64px and 7 at 32px), and
resizing only that region is 11-17% faster on CPU than resizing the whole image and then cropping.

Order and sharding. DALI's own readers cannot do what exact resume needs: `fn.readers.file` fixes
its file list when the pipeline is built, its `random_shuffle` is a buffer shuffle with no way to
start at batch k of epoch e but to decode the k batches before it, and `shard_id`/`num_shards` cut
one fixed list into contiguous blocks. So the order is ours: each epoch's batches come from
order.epoch_batches (a seeded permutation, the rank's slice of it, cut to whole batches, from
start_batch on) -- the same table the torch and cache backends use -- and an external_source hands
DALI the file *names* of one batch at a time. The reading (fn.io.file.read) and the decoding happen
on DALI's threads, the pipeline is built once, and an epoch or a resume is just a new table: no
rebuild, no skipped decodes. Every name comes from the validated list (folder.scan): DALI cannot
skip a corrupt file, and one would leave the pipeline dead.

Hand-off to torch: the batch is copied, on the device and on torch's current stream, into a tensor
torch allocated (feed_ndarray): no host round trip, and the tensor stays valid when DALI reuses its
buffers. uint8 (B, H, W, 3) permuted to NCHW is already channels_last.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..config import UsageError
from . import InputFailure
from .order import batches_per_epoch, epoch_batches

# Share of the JPEGs nvJPEG sends to the hardware JPEG decoder (A100, H100) when the pipeline runs
# with a GPU; the rest are decoded by CUDA kernels with Huffman decoding on DALI's CPU threads.
# DALI's default, 0.65, was tuned on an A100 with a few CPU threads per GPU; an H100 has more JPEG
# hardware (7 NVJPG engines), so a larger share should pay. UNMEASURED (no GPU was available when
# this was written): measure with bench/test_input.py on the target GPU and tune.
HW_DECODER_LOAD = 0.75
# CelebA's aligned crops are 178x218; nvJPEG's hardware decoder preallocates for this size, so the
# first batches do not stall on allocation. Larger images still decode (buffers grow once).
SIZE_HINT = (178, 218)


INSTALL_HINT = "pip install nvidia-dali-cuda130 (CUDA 13; nvidia-dali-cuda120 for CUDA 12)"
# DALI operators that fail because of one file (unreadable, not an image, truncated): a batch that
# fails in one of them is redone with PIL, skipping the file. Anything else is not a file's fault.
PER_FILE_OPERATORS = ("nvidia.dali.fn.io.file.read`", "nvidia.dali.fn.peek_image_shape`",
                      "nvidia.dali.fn.decoders.image`")
DEVICE_ERRORS = ("CUDA error", "cudaError", "CUDA_ERROR", "CUDA driver", "out of memory", "illegal memory access",
                 "NVML")


def available() -> str | None:
    """None when DALI can be used here, else why not (one line, with how to install it)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"nvidia-dali is not importable ({type(e).__name__}: {why}); {INSTALL_HINT}"
    return None


def is_file_failure(error: BaseException) -> bool:
    """True when DALI failed on a file (skip it and go on), False for anything else (a CUDA error
    included, even one raised inside the decoder): that must end the run, not be skipped."""
    text = str(error)
    return any(op in text for op in PER_FILE_OPERATORS) and not any(d in text for d in DEVICE_ERRORS)


def failure_summary(error: BaseException) -> str:
    """One line out of DALI's many: what it encountered, without the pipeline traceback it quotes."""
    after = str(error).split("encountered:", 1)[-1]
    for line in after.splitlines():
        line = line.strip()
        if line and not line.startswith(("Critical error", "Current pipeline", "C++ context")):
            return line.rstrip(",: ")
    return type(error).__name__


def default_threads() -> int:
    """One DALI thread per CPU core this process may use, shared among the node's ranks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class NameSource:
    """external_source callback: the encoded file names of one batch per call, from a batch table."""

    def __init__(self, files: list[Path]):
        self.names = [np.frombuffer(str(f).encode(), dtype=np.uint8) for f in files]
        self.table = np.zeros((0, 0), dtype=np.int64)
        self.pos = 0

    def start(self, table: np.ndarray) -> None:
        self.table, self.pos = table, 0

    def stop(self) -> None:
        self.pos = len(self.table)

    def __call__(self) -> list[np.ndarray]:
        if self.pos >= len(self.table):
            raise StopIteration  # DALI's end-of-data signal; the pipeline needs reset() after it
        row = self.table[self.pos]
        self.pos += 1
        return [self.names[i] for i in row]


def plain_path_roi(shape, size: int):
    """(start, end) in (y, x) source pixels of the region Resize(size) + CenterCrop(size) keeps.

    `shape` is a DALI int64 (H, W, C) node. Per axis of length n: torchvision resizes it to
    r = int(size * n / short) and crops round((r - size) / 2) from its start (Python's round: halves
    to even), so the kept region is [off, off + size) * n / r. cache.plain_path_box is the same in Python.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    short = dmath.min(shape[0], shape[1])
    starts, ends = [], []
    for n in (shape[0], shape[1]):
        r = n * size // short
        half = (r - size) // 2
        off = half + ((r - size) % 2) * (half % 2)  # round half to even
        scale = fn.cast(n, dtype=types.FLOAT) / fn.cast(r, dtype=types.FLOAT)
        starts.append(fn.cast(off, dtype=types.FLOAT) * scale)
        ends.append(fn.cast(off + size, dtype=types.FLOAT) * scale)
    return fn.stack(*starts), fn.stack(*ends)


def build_pipeline(source: NameSource, image_size: int, batch_size: int, threads: int, prefetch: int,
                   device: torch.device):
    """A built DALI pipeline: names from `source` -> uint8 (image_size, image_size, 3) HWC images."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device.type == "cuda"
    device_id = (torch.cuda.current_device() if device.index is None else device.index) if gpu else None

    @pipeline_def(batch_size=batch_size, num_threads=threads, prefetch_queue_depth=prefetch, device_id=device_id)
    def pipe():
        names = fn.external_source(source=source, batch=True, dtype=types.UINT8)
        encoded = fn.io.file.read(names)
        # EXIF orientation is ignored, as PIL's plain decode (the torch path) ignores it.
        start, end = plain_path_roi(fn.peek_image_shape(encoded, adjust_orientation=False), image_size)
        # jpeg_fancy_upsampling: nvJPEG's chroma upsampling as libjpeg-turbo's (the CPU decoder's and
        # PIL's); without it the mixed decoder's images differ from the CPU paths'.
        common = dict(output_type=types.RGB, adjust_orientation=False, jpeg_fancy_upsampling=True)
        if gpu:
            images = fn.decoders.image(encoded, device="mixed", hw_decoder_load=HW_DECODER_LOAD,
                                       preallocate_width_hint=SIZE_HINT[0], preallocate_height_hint=SIZE_HINT[1],
                                       **common)
        else:
            images = fn.decoders.image(encoded, device="cpu", **common)
        return fn.resize(images, size=(image_size, image_size), roi_start=start, roi_end=end, antialias=True,
                         interp_type=types.INTERP_LINEAR, dtype=types.UINT8)

    p = pipe()
    p.build()
    return p


def to_torch(out, device: torch.device) -> torch.Tensor:
    """Copy a DALI batch (CPU or GPU TensorList) into a new torch tensor on `device`, same stream."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    t = torch.empty((len(out), *out.shape()[0]), dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(out.as_tensor(), t, cuda_stream=stream)  # as_tensor: a dense view, no copy
    return t


def drain(pipe, source: NameSource) -> None:
    """End whatever the pipeline has queued (a finished or abandoned epoch) and make it ready to start."""
    source.stop()
    try:
        while True:  # at most `prefetch` batches that were decoded ahead
            pipe.run()
    except StopIteration:
        pass
    pipe.reset()


class DaliLoader:
    """Batches of uint8 NHWC images on the device from a DALI pipeline over the validated files."""

    name = "dali"

    def __init__(self, files: list[Path], image_size: int, batch_size: int, seed: int, device: torch.device,
                 threads: int = 0, prefetch: int = 2, rank: int = 0, world: int = 1):
        if len(files) < batch_size * world:
            raise UsageError(f"{len(files)} usable images are fewer than one batch "
                             f"(train.batch_size={batch_size} x {world} processes)")
        self.n, self.batch_size, self.seed, self.rank, self.world = len(files), batch_size, seed, rank, world
        self.files, self.image_size, self.prefetch, self.device = files, image_size, prefetch, device
        self.threads = threads or default_threads()
        self.source = NameSource(files)
        self.pipe = build_pipeline(self.source, image_size, batch_size, self.threads, prefetch, device)
        self.started = False

    def __len__(self) -> int:
        return batches_per_epoch(self.n, self.batch_size, self.world)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        if self.started:  # the last epoch was left early (max_steps, a stop) or ran to its end
            drain(self.pipe, self.source)
        table = epoch_batches(self.n, self.batch_size, self.seed, epoch, self.rank, self.world)[start_batch:]
        self.source.start(table.numpy())
        self.started = True
        for b in range(len(table)):
            try:
                (out,) = self.pipe.run()
            except RuntimeError as e:  # this pipeline is dead either way
                if not is_file_failure(e):
                    raise InputFailure(f"the DALI pipeline failed: {failure_summary(e)}") from e
                yield self._recover(table.numpy(), b, e)  # a file changed since it was checked
                continue
            yield to_torch(out, self.device)

    def _recover(self, table: np.ndarray, b: int, error: Exception) -> torch.Tensor:
        """Batch b decoded with PIL (a file that fails is replaced by the next one, as the torch path does);
        a new pipeline carries on from batch b + 1. One bad file must not end an hour-long run."""
        from .cache import decode_pil

        warnings.warn(f"DALI failed on a file in a batch ({failure_summary(error)}); decoding the batch with PIL "
                      "and restarting the pipeline")
        images = []
        for i in table[b]:
            for j in range(i, i + self.n):
                try:
                    images.append(decode_pil(str(self.files[j % self.n]), self.image_size))
                    break
                except Exception as e:  # PIL raises many kinds; any of them means this file is unusable
                    warnings.warn(f"skipping {self.files[j % self.n]}: {type(e).__name__}: {e}; using the next image")
        self.pipe = build_pipeline(self.source, self.image_size, self.batch_size, self.threads, self.prefetch,
                                   self.device)
        self.source.start(table[b + 1:])
        return torch.from_numpy(np.stack(images)).to(self.device)
