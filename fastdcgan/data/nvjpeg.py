"""GPU JPEG decode without DALI: torchvision.io.decode_jpeg(device="cuda") (nvJPEG) in batches.

Where CUDA is present and DALI is not (a bare GPU image with only torch and torchvision), the cache
build and the `nvjpeg` streaming backend decode here. The same code with device="cpu" (libjpeg-turbo,
torchvision's uint8 resize, both releasing the GIL, on threads) is the fastest cache builder on CPU
measured so far (BENCHMARKS.md). torchvision 0.29 deprecates its image decoders in favour of
TorchCodec: decoder_missing_reason() says when a torchvision lacks them, and the cache falls back
to DALI or PIL. Per batch: the files' bytes (read ahead on threads) -> one batched decode_jpeg call
on the device -> torchvision's own tensor Resize(S) + CenterCrop(S) (decode.resize_crop: the plain
path's geometry exactly, its antialiased filter to within rounding) -> uint8 (B, S, S, 3) NHWC on
the device, in the epoch's order (order.py).

Files nvJPEG refuses (not a JPEG: PNG, BMP, WebP; a JPEG kind it cannot decode, such as CMYK on
some versions) are decoded on the CPU (PIL, folder.open_rgb, full size) and resized on the device
with the rest, so they follow the same geometry. A batched call that fails is redone file by file
to find which file failed. A file nothing decodes (changed since folder.scan checked it) is, as
in the torch path, replaced by the next one, with a warning; a CUDA error ends the run
(InputFailure). Everything but the decode device is the same on CPU (decode_jpeg(device="cpu")),
which is how the tests check batching, order, bad files and the fallback without a GPU.
"""
from __future__ import annotations

import io
import os
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from . import InputFailure
from .base import Feed, Loader, first_that_decodes
from .decode import DEVICE_ERRORS, resize_crop_many
from .folder import open_rgb

JPEG_MAGIC = b"\xff\xd8"


def decoder_missing_reason() -> str | None:
    """Why torchvision's JPEG decoder does not import (torchvision 0.29 deprecates it in favour of
    TorchCodec: a later one may lack it), or None when it does."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as e:  # an old, new or broken torchvision
        return f"torchvision.io.decode_jpeg is not importable ({type(e).__name__}: {e})"
    return None


def unavailable_reason(device: torch.device) -> str | None:
    """Why the nvjpeg backend cannot decode on this device (it needs CUDA), or None when it can."""
    if device.type != "cuda":
        return "it decodes on a CUDA device and there is none"
    return decoder_missing_reason()


def read(path: str | os.PathLike) -> bytes | str:
    """The file's bytes, or why it cannot be read (removed since folder.scan checked it)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def _decode_jpeg(data, device: torch.device):
    """torchvision.io.decode_jpeg to RGB, without its deprecation notice (torchvision 0.29 points to
    TorchCodec, which is not a dependency here; the call still works and is what this module is for)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _is_device_error(error: BaseException) -> bool:
    return any(d in str(error) for d in DEVICE_ERRORS)


def _pil(data: bytes) -> torch.Tensor:
    """(3, H, W) uint8 on the CPU, any format PIL reads; raises if it does not decode."""
    rgb = np.asarray(open_rgb(io.BytesIO(data)), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


class BatchDecoder:
    """Encoded files -> uint8 (k, S, S, 3) on `device`, with the files nothing could decode named.

    `fallbacks` counts the files PIL decoded on the CPU because the JPEG decoder refused them.
    """

    def __init__(self, image_size: int, device: torch.device):
        self.image_size, self.device = image_size, device
        self.fallbacks = 0

    def _decode_one(self, data: bytes) -> torch.Tensor:
        if data[:2] == JPEG_MAGIC:
            try:
                return _decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), self.device)
            except RuntimeError as e:
                if _is_device_error(e):
                    raise InputFailure(f"GPU JPEG decode failed: {e}") from e
        image = _pil(data).to(self.device, non_blocking=True)
        self.fallbacks += 1  # counted once decoded: a file nothing decodes is a failure, not a fallback
        return image

    def decode(self, datas: list[bytes | str]) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        """Each file as a (3, H, W) uint8 image on the device, or None where it does not decode
        (then failed[i] says why). A str in `datas` is a file that could not be read: why not."""
        images: list[torch.Tensor | None] = [None] * len(datas)
        failed = {i: d for i, d in enumerate(datas) if isinstance(d, str)}
        jpegs = [i for i, d in enumerate(datas) if i not in failed and d[:2] == JPEG_MAGIC]
        todo = [i for i in range(len(datas)) if i not in failed and datas[i][:2] != JPEG_MAGIC]
        if jpegs:
            try:
                out = _decode_jpeg([torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs],
                                   self.device)
                for i, im in zip(jpegs, out, strict=True):
                    images[i] = im
            except RuntimeError as e:  # one file spoiled the batch: find it
                if _is_device_error(e):
                    raise InputFailure(f"GPU JPEG decode failed: {e}") from e
                todo += jpegs
        for i in sorted(todo):
            try:
                images[i] = self._decode_one(datas[i])
            except InputFailure:
                raise
            except Exception as e:  # PIL raises many kinds; any means this file is unusable
                failed[i] = f"{type(e).__name__}: {e}".strip()
        return images, failed

    def __call__(self, datas: list[bytes | str]) -> tuple[torch.Tensor | None, dict[int, str]]:
        """(the decoded files in order, resized: (k, S, S, 3) uint8, or None if k = 0; failures by
        position)."""
        images, failed = self.decode(datas)
        ok = [im for im in images if im is not None]
        return (resize_crop_many(ok, self.image_size) if ok else None), failed


def decode_chunks(files: list[Path], image_size: int, device: torch.device, threads: int, chunk: int,
                  stats: dict | None = None, read_ahead: bool | None = None
                  ) -> Iterator[list[np.ndarray | str]]:
    """For the cache build: chunks of decoded images (or why a file does not decode), in file order.

    read_ahead (default: on a GPU): one thread decodes (the device does the work) while `threads`
    threads read the next chunks' files; else each of `threads` threads reads and decodes chunks of
    its own (torchvision's decode and resize release the GIL: the way on CPU). Either way runs on CPU,
    which is how the tests check the GPU's way. stats["cpu_fallbacks"] counts the files the JPEG
    decoder refused and PIL decoded."""
    if read_ahead is None:
        read_ahead = device.type != "cpu"
    decoder = BatchDecoder(image_size, device)
    starts = list(range(0, len(files), chunk))

    def read_chunk(s: int) -> list[bytes | str]:
        return [read(f) for f in files[s:s + chunk]]

    def decode_chunk(s: int) -> list[np.ndarray | str]:
        datas = reads_of[s].result() if read_ahead else read_chunk(s)
        batch, failed = decoder(datas)
        arrays = iter(batch.cpu().numpy() if batch is not None else ())
        return [failed[i] if i in failed else next(arrays) for i in range(len(datas))]

    ahead = max(1, threads) + 1
    with ThreadPoolExecutor(max(1, threads)) as pool:
        reads_of = {}
        pending: deque[Future] = deque()
        for k, s in enumerate(starts):
            if read_ahead:  # read ahead on the pool, decode here
                for t in starts[k:k + ahead]:
                    if t not in reads_of:
                        reads_of[t] = pool.submit(read_chunk, t)
                out = decode_chunk(s)
                del reads_of[s]
                yield out
            else:  # read and decode on the pool, `ahead` chunks in flight, results in order
                while len(pending) < ahead and k + len(pending) < len(starts):
                    pending.append(pool.submit(decode_chunk, starts[k + len(pending)]))
                yield pending.popleft().result()
            if stats is not None:
                stats["cpu_fallbacks"] = decoder.fallbacks


class NvjpegLoader(Loader):
    """Batches of uint8 NHWC images on the device, decoded there by torchvision's nvJPEG binding."""

    name = "nvjpeg"

    def __init__(self, feed: Feed):
        super().__init__(feed)
        self.files = [str(f) for f in feed.files]
        self.prefetch = max(1, feed.prefetch)
        self.decoder = BatchDecoder(feed.image_size, feed.device)
        self.pool = ThreadPoolExecutor(max(1, feed.threads or 2), thread_name_prefix="nvjpeg-read")

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        return unavailable_reason(device)

    def _read_row(self, row: np.ndarray) -> list[bytes | str]:
        return [read(self.files[i]) for i in row]

    def _decode_file(self, path: str) -> torch.Tensor:
        """One file, resized; raises when it does not decode."""
        batch, failed = self.decoder([read(path)])
        if batch is None:
            raise ValueError(failed[0])
        return batch[0]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        table = self.order(epoch)[start_batch:].numpy()
        reads: deque[Future] = deque()
        try:
            for b, row in enumerate(table):
                while len(reads) < self.prefetch + 1 and b + len(reads) < len(table):
                    reads.append(self.pool.submit(self._read_row, table[b + len(reads)]))
                datas = reads.popleft().result()
                batch, failed = self.decoder(datas)
                if failed:  # a file broke after folder.scan checked it: the next one that decodes stands in
                    decoded = iter(batch) if batch is not None else iter(())
                    batch = torch.stack([first_that_decodes(self.files, int(i), self._decode_file)
                                         if k in failed else next(decoded) for k, i in enumerate(row)])
                yield batch
        finally:  # an abandoned epoch: drop the reads not yet started
            for f in reads:
                f.cancel()
