"""The one decode contract every backend and the cache keep, and its reference implementations.

An image becomes RGB uint8 HWC S x S made of exactly the source region that torchvision's
Resize(S) + CenterCrop(S) keeps (the plain path, torch.py), resized with an antialiased linear
filter. Each backend does it its own way: the plain path literally; DALI (dali.py) by resizing just
that region (plain_path_box, and decode_region for a decoder that decodes part of an image);
torchvision's decoder (nvjpeg.py, on a GPU or CPU threads) with torchvision's own tensor Resize +
CenterCrop (resize_crop); PIL here (decode_pil: the same region, with JPEG draft mode), which the
cache build uses where nothing faster is present and DALI uses for a batch it fails on. Decoders
differ by a fraction of a grey level; the tests bound each.

Nothing here imports DALI. dali.py, nvjpeg.py and cache.py take their shared pieces from here (and
the order from order.py); only cache.py imports the decoders, to ask each in turn, and no decoder
imports cache.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from .folder import open_drafted

TRANSFORM = "torchvision Resize(S)+CenterCrop(S) region, one antialiased linear resize, RGB uint8 HWC"
# Error texts that are the device's fault, not a file's: a decoder failing with one of these must end
# the run (InputFailure, with a checkpoint), never be decoded around file by file.
DEVICE_ERRORS = ("CUDA error", "cudaError", "CUDA_ERROR", "CUDA driver", "out of memory",
                 "illegal memory access", "NVML")


def plain_path_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom): the source region torchvision's Resize(size) + CenterCrop(size) keeps.

    Per axis of length n with the shorter side `short`: torchvision resizes it to r = int(size * n /
    short) and crops round((r - size) / 2) from its start (Python's round: halves to even), so the
    kept region is [off, off + size) * n / r.
    """
    short, box = min(width, height), []
    for n in (width, height):
        r = n * size // short
        off = round((r - size) / 2)
        box.append((off * n / r, (off + size) * n / r))
    (left, right), (top, bottom) = box
    return left, top, right, bottom


def decode_region(width: int, height: int,
                  size: int) -> tuple[tuple[int, int, int, int], tuple[float, float, float, float]]:
    """What a decoder that can decode part of an image (DALI's image_slice) needs: ((x0, y0, x1, y1),
    the integer rectangle to decode; (left, top, right, bottom), plain_path_box inside it).

    The rectangle is the kept region widened by the resize filter's reach (an antialiased linear
    filter spans one output pixel's worth of source pixels on each side) plus two pixels, clipped
    to the image: the output is that of decoding the whole image (to within 1 grey level on a few
    pixels, from float rounding of the shifted region; measured).
    """
    box = plain_path_box(width, height, size)
    lo, hi = [], []
    for k, n in enumerate((width, height)):
        a, b = box[k], box[k + 2]
        reach = math.ceil((b - a) / size) + 2
        lo.append(max(0, math.floor(a) - reach))
        hi.append(min(n, math.ceil(b) + reach))
    x0, y0 = lo
    return (x0, y0, hi[0], hi[1]), (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)


def decode_pil(path: str, image_size: int) -> np.ndarray:
    """One image under the contract, with PIL.

    JPEG draft mode lets libjpeg downscale in the DCT domain, but only to twice the target size:
    drafting right down to it (a 1/4 scale for 178x218 -> 32) costs 2.4 grey levels of detail.
    """
    im, (width, height), k = open_drafted(path, 2 * image_size)
    left, top, right, bottom = plain_path_box(width, height, image_size)
    box = (left * k, top * k, right * k, bottom * k)
    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(im, dtype=np.uint8)


def decode_pil_many(paths: list[str], image_size: int) -> list[np.ndarray | str]:
    """Each image, or the reason it does not decode."""
    out = []
    for p in paths:
        try:
            out.append(decode_pil(p, image_size))
        except Exception as e:  # PIL raises many kinds; any means this file is unusable
            out.append(f"{type(e).__name__}: {e}".strip())
    return out


def resize_crop(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 images of one size, on any device -> (N, S, S, 3) uint8 under the contract.

    torchvision's own Resize(S, antialias) + CenterCrop(S) on tensors: the plain path's geometry
    exactly, its filter to within rounding (uint8 on CPU; float, rounded back, on CUDA).
    """
    from torchvision.transforms.v2 import functional as F

    out = F.center_crop(F.resize(images, [image_size], antialias=True), [image_size, image_size])
    return out.permute(0, 2, 3, 1)


def resize_crop_many(images: list[torch.Tensor], image_size: int) -> torch.Tensor:
    """A list of (3, H, W) uint8 images, sizes mixed -> (N, S, S, 3) uint8, in list order.
    Images of one size are resized together (CelebA: the whole batch in one call)."""
    if not images:
        raise ValueError("no images")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(tuple(im.shape), []).append(i)
    if len(by_shape) == 1:
        return resize_crop(torch.stack(images), image_size)
    out = torch.empty((len(images), image_size, image_size, 3), dtype=torch.uint8, device=images[0].device)
    for idx in by_shape.values():
        out[idx] = resize_crop(torch.stack([images[i] for i in idx]), image_size)
    return out
