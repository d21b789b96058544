"""The decode contract's pieces (data/decode.py) against torchvision's plain path, without DALI or a
cache: the region Resize + CenterCrop keeps, the rectangle a partial decoder decodes, and PIL's
draft-mode decode. The backends' own tests (test_cache, test_dali, test_nvjpeg) build on these."""
import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

import torch

from fastdcgan.data.decode import decode_pil, decode_pil_many, decode_region, plain_path_box, resize_crop_many

# CelebA's aligned crops both ways, small, square, and odd sizes where a rounding of the crop offset
# or of the resized length shows (218 * 32 / 178 = 39.2; 301 * 64 / 97 = 198.6).
SIZES = [(178, 218), (218, 178), (44, 52), (100, 100), (97, 301), (301, 97), (65, 1000)]


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise on a gradient: every pixel different, so half a source pixel of shift shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / width, 255 * y / height, 127 + 100 * np.sin(x / 7.0 + y / 11.0)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


def plain(im: Image.Image, s: int) -> np.ndarray:
    return np.asarray(transforms.CenterCrop(s)(transforms.Resize(s)(im)), dtype=float)


@pytest.mark.parametrize("size", SIZES)
def test_plain_path_box_is_torchvisions_resize_and_crop(size):
    im = smooth_image(*size)
    for s in (32, 64):
        box = plain_path_box(*size, s)
        ours = np.asarray(im.resize((s, s), Image.Resampling.BILINEAR, box=box), dtype=float)
        assert np.abs(ours - plain(im, s)).mean() < 0.05, (s, box)  # rounding only; a shifted box > 0.3


@pytest.mark.parametrize("size", SIZES)
def test_resizing_the_decoded_rectangle_is_resizing_the_whole_image(size):
    """decode_region's rectangle holds every source pixel the antialiased resize reads, and lies in
    the image; the box it returns is plain_path_box moved into it."""
    width, height = size
    im = smooth_image(*size, seed=1)
    for s in (32, 64):
        box = plain_path_box(width, height, s)
        (x0, y0, x1, y1), inner = decode_region(width, height, s)
        assert 0 <= x0 <= box[0] and box[2] <= x1 <= width and 0 <= y0 <= box[1] and box[3] <= y1 <= height
        assert inner == pytest.approx((box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0))
        whole = np.asarray(im.resize((s, s), Image.Resampling.BILINEAR, box=box), dtype=float)
        part = np.asarray(im.crop((x0, y0, x1, y1)).resize((s, s), Image.Resampling.BILINEAR, box=inner),
                          dtype=float)
        assert np.abs(part - whole).max() <= 1, (s, (x0, y0, x1, y1))


@pytest.mark.parametrize("size", [(178, 218), (512, 384), (301, 97), (1001, 776), (181, 777)])
def test_pil_draft_decode_keeps_the_plain_paths_picture(tmp_path, size):
    """decode_pil decodes the JPEG at 2x the size in libjpeg's draft mode, then resizes the kept
    region: close to the plain path, which decodes it whole. Sides that are not a multiple of the
    draft's scale (1001 / 8, 181 / 2) make libjpeg round the draft's sides up: the source still maps by
    the scale (measured 2.5 and 2.8 grey levels off when mapped by the ratio of the sides)."""
    path = tmp_path / "im.jpg"
    smooth_image(*size, seed=2).save(path, quality=90)
    with Image.open(path) as im:
        full = im.convert("RGB")
    for s in (32, 64):
        ours = decode_pil(str(path), s)
        assert ours.shape == (s, s, 3) and ours.dtype == np.uint8
        # measured 0.64 at most (0 where the image is under 4x the size: no draft); drafting down to the
        # size itself (a 1/4 scale for 178x218 -> 32), as libjpeg allows, measured 1.0-6.9
        assert np.abs(ours.astype(float) - plain(full, s)).mean() < 0.8, s


def test_each_file_decodes_or_says_why_in_its_place(tmp_path):
    good, broken = tmp_path / "good.jpg", tmp_path / "broken.jpg"
    smooth_image(178, 218).save(good, quality=90)
    broken.write_bytes(good.read_bytes()[:300])
    out = decode_pil_many([str(good), str(broken), str(tmp_path / "gone.jpg"), str(good)], 32)
    assert np.array_equal(out[0], decode_pil(str(good), 32)) and np.array_equal(out[3], out[0])
    assert out[1].startswith("OSError: ") and out[2].startswith("FileNotFoundError: ")
    with pytest.raises(ValueError, match="no images"):
        resize_crop_many([], 32)
    assert resize_crop_many([torch.zeros(3, 20, 30, dtype=torch.uint8)], 8).shape == (1, 8, 8, 3)
