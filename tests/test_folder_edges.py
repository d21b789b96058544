"""Image folders at their edges: where the caches live, partition files as editors and spreadsheets
write them, transparency in every form a PNG has, the parallel check of a large folder, and the
verdict cache's keys."""
import os

import pytest
from PIL import Image

from conftest import make_celeba, write_image
from fastdcgan.config import UsageError
from fastdcgan.data import folder


def png(path, mode, size=(4, 4), fill=0, **save):
    im = Image.new(mode, size, fill)
    im.putpixel((0, 0), (200, 100, 50) if mode == "RGB" else 200)
    im.save(path, **save)
    return path


@pytest.mark.parametrize("mode, key", [("RGB", (0, 0, 0)), ("L", 0), ("I;16", 0)])
def test_the_transparent_colour_of_a_grey_or_rgb_png_becomes_white(tmp_path, mode, key):
    """A PNG without alpha may still name one colour transparent (its tRNS chunk): those pixels are
    background, flattened onto white like any other transparency, not shown in the key colour."""
    im = folder.open_rgb(png(tmp_path / "keyed.png", mode, transparency=key))
    assert im.getpixel((1, 1)) == (255, 255, 255)
    assert im.getpixel((0, 0)) == ((200, 100, 50) if mode == "RGB" else (200, 200, 200))
