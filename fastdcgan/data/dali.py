"""The DALI input path: JPEG decode and resize on the GPU (nvJPEG), or on CPU threads without one.

Pipeline, per sample: fn.readers.file (the epoch's files, in our order) -> fn.decoders.image
("mixed" on a GPU) or fn.decoders.image_slice (CPU) -> one antialiased linear fn.resize of exactly
the source region that the plain path's Resize(S) + CenterCrop(S) keeps (torchvision's rounding
included: decode.plain_path_box) to S x S -> uint8 HWC. Same geometry, same filter: the two paths
differ by about 0.1 grey levels on average (tested; a plain centred square would be off by half a
pixel, 0.8 grey levels at 64px and 7 at 32px). On CPU the decoder decodes only the rectangle that
region needs, widened for the resize filter (decode.decode_region): libjpeg-turbo skips the rest,
and the output is that of decoding everything to within 1 grey level on a few pixels.

The region is worked out in Python, once per image size (regions_of), from the (width, height)
that folder.scan records for every file (or the files' headers): a dataset of one size (CelebA)
gives the pipeline constants; one of several sizes gets each batch's regions from a small
external_source beside the reader. Not inside DALI: a graph of ~30 scalar operators per batch did
that before, and it alone held DALI's executor thread long enough to lose to the DataLoader on CPU
(measured: BENCHMARKS.md, "Where the DALI CPU time goes").

Order and sharding. The order is ours, not DALI's: each epoch's batches come from
order.epoch_batches (a seeded permutation, the rank's slice of it, cut to whole batches) -- the
same table the torch and cache backends use. A pipeline is built with those files, in that order,
as fn.readers.file's `files` list (no shuffling, no sharding of its own): from the batch asked for
to the end of that epoch, then whole following epochs until the list holds LIST_SAMPLES samples.
The reader reads the files on its own thread, nothing runs in Python per batch, and the pipeline
decodes on across an epoch's end. An epoch that continues where the last one stopped uses the same
pipeline; a resume at batch k of epoch e, or an epoch left early (max_steps, a stop), builds a new
one whose list starts exactly there -- no decode of batches before it. The reader's labels are the
files' indices, and each batch's are checked against the table, so a batch that is not the planned
one can never pass silently. Every name comes from the validated list (folder.scan).

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

from . import InputFailure
from .base import Feed, Loader, first_that_decodes
from .decode import DEVICE_ERRORS, decode_pil, decode_pil_many, decode_region, plain_path_box
from .folder import header_sizes

# Share of the JPEGs nvJPEG sends to the hardware JPEG decoder (A100, H100) when the pipeline runs
# with a GPU; the rest are decoded by CUDA kernels with Huffman decoding on DALI's CPU threads.
# DALI's default, 0.65, was tuned on an A100 with a few CPU threads per GPU; an H100 has more JPEG
# hardware (7 NVJPG engines), so a larger share should pay. UNMEASURED (no GPU was available when
# this was written): measure with bench/test_input.py on the target GPU and tune.
HW_DECODER_LOAD = 0.75
# CelebA's aligned crops are 178x218; nvJPEG's hardware decoder preallocates for this size, so the
# first batches do not stall on allocation. Larger images still decode (buffers grow once).
SIZE_HINT = (178, 218)
# A pipeline's file list: the rest of the epoch asked for, then whole epochs up to this many samples,
# so that a small dataset does not build a pipeline per epoch (CelebA's 162,770 training images are
# more than one list: one pipeline per epoch, whose build is small against an epoch of minutes;
# BENCHMARKS.md, "Measurements behind choices in the code").
LIST_SAMPLES = 1 << 16

INSTALL_HINT = "pip install nvidia-dali-cuda130 (CUDA 13; nvidia-dali-cuda120 for CUDA 12)"
# DALI operators that fail because of one file (unreadable, not an image, truncated): a batch that
# fails in one of them is redone with PIL, skipping the file. Anything else is not a file's fault.
PER_FILE_OPERATORS = ("nvidia.dali.fn.readers.file`", "nvidia.dali.fn.decoders.image`",
                      "nvidia.dali.fn.decoders.image_slice`")


def unavailable_reason() -> str | None:
    """Why DALI cannot be used here (one line, with how to install it), or None when it can."""
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


def regions_of(sizes, image_size: int, whole: bool) -> np.ndarray:
    """(n, 8) per file, in (y, x) pairs: lo, hi -- the integer rectangle [lo, hi) the decoder decodes --
    and start, end -- the region inside it that the resize keeps (decode.decode_region: the plain
    path's region). whole (the GPU decoder): lo = 0, hi = the image's size, start/end = plain_path_box.
    `sizes`: (width, height) per file. Computed once per distinct size, so CelebA costs one."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    distinct, which = np.unique(sizes, axis=0, return_inverse=True)
    table = np.zeros((len(distinct), 8))
    for k, (w, h) in enumerate(distinct.tolist()):
        if whole:
            x0, y0, x1, y1 = 0, 0, w, h
            left, top, right, bottom = plain_path_box(w, h, image_size)
        else:
            (x0, y0, x1, y1), (left, top, right, bottom) = decode_region(w, h, image_size)
        table[k] = (y0, x0, y1, x1, top, left, bottom, right)
    return table[which.reshape(-1)]


class RegionSource:
    """external_source callback where the list's images differ in size: the regions of batch i of the
    list (the reader wraps round at the list's end, so this does too)."""

    def __init__(self, regions: np.ndarray, batch_size: int):
        self.lo, self.hi = regions[:, 0:2].astype(np.int32), regions[:, 2:4].astype(np.int32)
        self.start, self.end = regions[:, 4:6].astype(np.float32), regions[:, 6:8].astype(np.float32)
        self.batch_size, self.rows = batch_size, len(regions) // batch_size

    def __call__(self, i: int) -> tuple[np.ndarray, ...]:
        at = slice((i % self.rows) * self.batch_size, (i % self.rows + 1) * self.batch_size)
        return self.lo[at], self.hi[at], self.start[at], self.end[at]


def build_pipeline(files: list[str], labels: list[int], regions: np.ndarray, image_size: int, batch_size: int,
                   threads: int, prefetch: int, device: torch.device):
    """A built DALI pipeline: `files` in this order, over and over -> (uint8 (S, S, 3) HWC images, labels).
    `regions`: regions_of(the files' sizes, image_size, whole=device is CUDA). len(files) must be a
    multiple of batch_size."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device.type == "cuda"
    device_id = (torch.cuda.current_device() if device.index is None else device.index) if gpu else None
    uniform = bool((regions == regions[0]).all())

    @pipeline_def(batch_size=batch_size, num_threads=threads, prefetch_queue_depth=prefetch,
                  device_id=device_id)
    def pipe():
        encoded, label = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="files")
        if uniform:  # one image size (CelebA): constants, no per-sample work
            r = regions[0]
            lo, hi, start, end = ([int(v) for v in r[0:2]], [int(v) for v in r[2:4]],
                                  r[4:6].tolist(), r[6:8].tolist())
        else:
            lo, hi, start, end = fn.external_source(source=RegionSource(regions, batch_size), num_outputs=4,
                                                    batch=True, dtype=[types.INT32, types.INT32, types.FLOAT,
                                                                       types.FLOAT])
        # EXIF orientation is ignored, as PIL's plain decode (the torch path) ignores it.
        # jpeg_fancy_upsampling: nvJPEG's chroma upsampling as libjpeg-turbo's (the CPU decoder's and
        # PIL's); without it the mixed decoder's images differ from the CPU paths'.
        common = dict(output_type=types.RGB, adjust_orientation=False, jpeg_fancy_upsampling=True)
        if gpu:
            images = fn.decoders.image(encoded, device="mixed", hw_decoder_load=HW_DECODER_LOAD,
                                       preallocate_width_hint=SIZE_HINT[0],
                                       preallocate_height_hint=SIZE_HINT[1], **common)
        else:  # only the rows and columns the resize reads
            images = fn.decoders.image_slice(encoded, start=lo, end=hi, axis_names="HW", **common)
        images = fn.resize(images, size=(image_size, image_size), roi_start=start, roi_end=end,
                           antialias=True, interp_type=types.INTERP_LINEAR, dtype=types.UINT8)
        return images, label

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


class DaliLoader(Loader):
    """Batches of uint8 NHWC images on the device from a DALI pipeline over the validated files."""

    name = "dali"

    def __init__(self, feed: Feed):
        super().__init__(feed)
        self.files, self.image_size = [str(f) for f in feed.files], feed.image_size
        sizes = feed.sizes if feed.sizes is not None else header_sizes(feed.files)  # (width, height)
        self.regions = regions_of(sizes, feed.image_size, whole=feed.device.type == "cuda")
        self.threads = feed.threads or default_threads()
        self.pipe = None
        self.plan: list[tuple[int, int]] = []  # (epoch, batch) of each batch in the pipeline's list
        self.done = 0                          # batches of the list run so far
        self.builds = 0                        # pipelines built (tests and the bench read it)

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        return unavailable_reason()

    def _table(self, epoch: int) -> np.ndarray:
        return self.order(epoch).numpy()

    def _build(self, epoch: int, start_batch: int) -> None:
        """A new pipeline whose list starts at (epoch, start_batch)."""
        rows, plan = [self._table(epoch)[start_batch:]], [(epoch, b) for b in range(start_batch, len(self))]
        e = epoch + 1
        while len(plan) * self.feed.batch_size < LIST_SAMPLES:
            rows.append(self._table(e))
            plan += [(e, b) for b in range(len(self))]
            e += 1
        order = np.concatenate(rows).reshape(-1)
        self.pipe = None  # the old pipeline's threads end before the new one's start
        self.pipe = build_pipeline([self.files[i] for i in order], order.tolist(), self.regions[order],
                                   self.image_size, self.feed.batch_size, self.threads, self.feed.prefetch,
                                   self.device)
        self.plan, self.done = plan, 0
        self.builds += 1

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        if start_batch >= len(self):  # resumed at an epoch's very end: nothing left of it
            return
        if self.pipe is None or self.done >= len(self.plan) or self.plan[self.done] != (epoch, start_batch):
            self._build(epoch, start_batch)
        table = self._table(epoch)  # the planned file indices of each batch
        for b in range(start_batch, len(self)):
            try:
                images, labels = self.pipe.run()
            except RuntimeError as e:  # this pipeline is dead either way
                if not is_file_failure(e):
                    raise InputFailure(f"the DALI pipeline failed: {failure_summary(e)}") from e
                yield self._recover(table[b], e)  # a file changed since it was checked
                if b + 1 < len(self):
                    self._build(epoch, b + 1)
                else:
                    self.pipe = None
                continue
            self.done += 1
            got = np.asarray(labels.as_tensor()).reshape(-1)  # the reader's labels stay on the CPU
            if not np.array_equal(got, table[b]):
                raise InputFailure(f"the DALI reader is out of step: epoch {epoch} batch {b} "
                                   "is not the planned one")
            yield to_torch(images, self.device)

    def _recover(self, row: np.ndarray, error: Exception) -> torch.Tensor:
        """This batch decoded with PIL (a file that fails is replaced by the next one, as every backend
        does); a new pipeline carries on from the next batch. One bad file must not end an hour-long run."""
        warnings.warn(f"DALI failed on a file in a batch ({failure_summary(error)}); "
                      "decoding the batch with PIL and restarting the pipeline", stacklevel=2)
        self.pipe = None
        images = [first_that_decodes(self.files, int(i), lambda path: decode_pil(path, self.image_size))
                  for i in row]
        return torch.from_numpy(np.stack(images)).to(self.device)


def decode_chunks(files: list[Path], image_size: int, device: torch.device, threads: int, chunk: int,
                  stats: dict | None = None, sizes: list[tuple[int, int]] | None = None
                  ) -> Iterator[list[np.ndarray | str]]:
    """For the cache build: chunks of decoded images (or why a file does not decode), in file order.
    A chunk DALI fails on is redone with PIL; stats["pil_chunks"] counts them."""
    paths, n = [str(f) for f in files], len(files)
    regions = regions_of(sizes if sizes is not None else header_sizes(files), image_size,
                         device.type == "cuda")
    done, pil_chunks = 0, 0
    while done < n:
        # Whole chunks, then the rest as a pipeline of its own with a batch of that size. Never a batch
        # filled up by wrapping round the list: the same file twice in one batch, when it does not
        # decode, crashes DALI 2.4's CPU decoder (a segfault, not an error; tests/test_cache.py).
        batch = min(chunk, n - done)
        end = done + (n - done) // batch * batch
        pipe = build_pipeline(paths[done:end], list(range(done, end)), regions[done:end], image_size, batch,
                              threads, 2, device)
        try:
            while done < end:
                images, _ = pipe.run()
                if device.type == "cuda":
                    images = images.as_cpu()
                yield list(np.array(images.as_tensor()))
                done += batch
        except RuntimeError as e:  # the pipeline is dead either way
            if not is_file_failure(e):
                raise InputFailure("building the cache: the DALI pipeline failed: "
                                   f"{failure_summary(e)}") from e
            yield decode_pil_many(paths[done:done + batch], image_size)  # a file DALI cannot decode
            done += batch
            pil_chunks += 1
        finally:
            del pipe
        if stats is not None:
            stats["pil_chunks"] = pil_chunks
