"""Image folders at their edges: where the caches live, partition files as editors and spreadsheets
write them, transparency in every form a PNG has, the parallel check of a large folder, and the
verdict cache's keys."""
import os
import re

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


@pytest.mark.parametrize("mode, fill", [("LA", (90, 0)), ("PA", (3, 0))])
def test_transparent_pixels_of_grey_and_palette_alpha_images_become_white(tmp_path, mode, fill):
    im = Image.new(mode, (4, 4), fill)
    im.putpixel((0, 0), (90, 255) if mode == "LA" else (3, 255))
    if mode == "PA":  # PIL cannot write PA to a file; decoders can still hand one over
        im.putpalette([0, 0, 0] * 3 + [10, 200, 30])
        rgb = folder._to_rgb(im, None)
    else:
        im.save(tmp_path / "alpha.png")
        rgb = folder.open_rgb(tmp_path / "alpha.png")
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == ((90, 90, 90) if mode == "LA" else (10, 200, 30))


def test_a_palette_image_with_a_transparent_entry_keeps_its_other_colours(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 10, 200, 30])
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "p.png", transparency=0)
    rgb = folder.open_rgb(tmp_path / "p.png")
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (10, 200, 30)


def test_the_cache_folder_is_the_variable_else_xdg_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert folder.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FASTDCGAN_CACHE")
    assert folder.cache_dir() == tmp_path / "xdg" / "fastdcgan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert folder.cache_dir() == tmp_path / "home" / ".cache" / "fastdcgan"


def test_a_partition_file_saved_with_a_byte_order_mark_keeps_its_first_row(celeba):
    txt = celeba / "list_eval_partition.txt"
    txt.write_bytes(b"\xef\xbb\xbf" + txt.read_bytes())
    found = folder.find_images(celeba, "train")
    assert found.files[0].name == "000001.jpg" and found.missing_rows == 0


def test_a_csv_without_a_header_keeps_its_first_row(celeba):
    rows = [line.split() for line in (celeba / "list_eval_partition.txt").read_text().splitlines()]
    (celeba / "list_eval_partition.txt").unlink()
    (celeba / "list_eval_partition.csv").write_text("".join(f"{n},{p}\n" for n, p in rows))
    assert len(folder.find_images(celeba).files) == 48


def test_a_bad_row_of_the_txt_says_the_txt_format(celeba):
    (celeba / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg,0\n")
    with pytest.raises(UsageError,
                       match=r"list_eval_partition.txt:2: expected 'NAME PARTITION', got '000002.jpg,0'"):
        folder.find_images(celeba)


@pytest.mark.parametrize("name, rows, expected", [
    ("list_eval_partition.txt", "000001.jpg 0\n000002.jpg 0 1\n",
     "expected 'NAME PARTITION', got '000002.jpg 0 1'"),
    # a spreadsheet that saved an empty third column: a trailing comma on every row
    ("list_eval_partition.csv", "image_id,partition,\n000001.jpg,0,\n",
     "expected 'NAME,PARTITION', got '000001.jpg,0,'"),
])
def test_a_row_with_a_field_too_many_is_refused_by_its_line(celeba, name, rows, expected):
    """Not Python's 'too many values to unpack' as a traceback from the trainer: one line, exit 2."""
    (celeba / "list_eval_partition.txt").unlink()
    (celeba / name).write_text(rows)
    with pytest.raises(UsageError, match=re.escape(f"{name}:2: {expected}")):
        folder.find_images(celeba, "train")


def test_a_file_given_as_root_is_refused_by_name(tmp_path):
    f = write_image(tmp_path / "face.jpg", 0)
    with pytest.raises(UsageError, match=f"data.root is not a folder: {f}"):
        folder.find_images(f)


def test_an_image_folder_named_like_celebas_without_its_partition_file_is_a_plain_folder(tmp_path):
    make_celeba(tmp_path, 6)
    (tmp_path / "list_eval_partition.txt").unlink()
    found = folder.find_images(tmp_path)
    assert found.layout == "folder" and len(found.files) == 6


def test_scan_keeps_to_the_split(celeba):
    assert len(folder.scan(celeba, "valid").files) == 5


def test_a_draft_decode_is_scaled_down_but_not_below_the_size_asked(tmp_path):
    write_image(tmp_path / "big.jpg", 0, size=(256, 192))
    assert folder.open_drafted(tmp_path / "big.jpg", 48)[0].size == (64, 48)
    assert folder.open_rgb(tmp_path / "big.jpg").size == (256, 192)


def test_open_drafted_gives_the_draft_its_original_size_and_its_scale(tmp_path):
    """decode_pil maps its crop box into the draft by this scale: 1/4 for 250x200 drafted to at least
    48 px (libjpeg rounds 62.5 up to 63, so the sides' ratio is not the scale); 1 for a PNG, which is
    never drafted."""
    write_image(tmp_path / "big.jpg", 0, size=(250, 200))
    im, size, scale = folder.open_drafted(tmp_path / "big.jpg", 48)
    assert (im.mode, im.size, size, scale) == ("RGB", (63, 50), (250, 200), 0.25)
    write_image(tmp_path / "big.png", 0, size=(250, 200))
    im, size, scale = folder.open_drafted(tmp_path / "big.png", 48)
    assert (im.mode, im.size, size, scale) == ("RGB", (250, 200), (250, 200), 1.0)


def flat(path, size):
    Image.new("RGB", size, (120, 80, 40)).save(path)
    return path


def test_header_sizes_are_width_then_height(tmp_path):
    files = [write_image(tmp_path / "a.jpg", 0, size=(30, 20)), flat(tmp_path / "b.png", (7, 9))]
    assert folder.header_sizes(files) == [(30, 20), (7, 9)]


def test_one_pixel_is_an_image_and_a_broken_file_is_named_by_its_error(tmp_path):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    assert folder.check_image(str(tmp_path / "dot.png")) == (None, 1, 1)
    why, w, h = folder.check_image(str(tmp_path / "junk.jpg"))
    assert why.startswith("UnidentifiedImageError: ") and (w, h) == (0, 0)


def test_validate_records_each_good_files_size_in_order(tmp_path):
    write_image(tmp_path / "a.jpg", 0, size=(30, 20))
    (tmp_path / "b.jpg").write_bytes(b"junk")
    flat(tmp_path / "c.png", (7, 9))
    found = folder.scan(tmp_path)
    assert [f.name for f in found.files] == ["a.jpg", "c.png"] and found.sizes == [(30, 20), (7, 9)]


def test_the_parallel_check_of_a_large_folder_gives_each_file_its_own_verdict(tmp_path):
    """Past 512 files the check runs in processes, 256 files a chunk: every file's verdict and size
    must come back to that file, in chunks after the first too."""
    for i in range(600):
        flat(tmp_path / f"{i:04d}.png", (8 + i % 5, 8))
    for bad in (300, 550):
        (tmp_path / f"{bad:04d}.png").write_bytes(b"junk")
    found = folder.validate(folder.find_images(tmp_path), workers=2)
    assert [p.name for p, _ in found.skipped] == ["0300.png", "0550.png"]
    assert found.sizes == [(8 + int(f.stem) % 5, 8) for f in found.files]


def test_verdicts_are_kept_per_folder(tmp_path):
    """Two folders with a file of the same name, size and time: one good, one broken. The verdict
    of one is no verdict on the other."""
    good = write_image(tmp_path / "a" / "x.jpg", 0)
    broken = tmp_path / "b" / "x.jpg"
    broken.parent.mkdir()
    data = bytearray(good.read_bytes())
    data[2:] = bytes(len(data) - 2)  # same size, nothing decodable after the first marker
    broken.write_bytes(bytes(data))
    st = good.stat()
    os.utime(broken, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(folder.scan(tmp_path / "a").files) == 1
    with pytest.raises(UsageError, match="no decodable images"):
        folder.scan(tmp_path / "b")


def test_verdicts_cached_by_an_older_version_are_checked_again(tmp_path):
    f = write_image(tmp_path / "x.jpg", 0)
    folder.scan(tmp_path)
    cache = folder._verdict_cache(tmp_path)
    st = f.stat()
    cache.write_text('{"version": 2, "files": {"x.jpg": [%d, %d, null, 0]}}' % (st.st_size, st.st_mtime_ns))
    assert folder.scan(tmp_path).sizes == [(44, 52)]


def test_an_empty_folder_says_which_files_count_as_images(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(UsageError, match=r"no images \(jpg, jpeg, png, bmp, webp\)"):
        folder.scan(tmp_path)


def test_the_verdicts_of_one_split_outlive_a_scan_of_another(celeba):
    """One verdict file per folder holds every split's verdicts: scanning data.split=valid keeps train's,
    so the next train scan decodes none of its files again (seen here: a train file corrupted in
    place at the same size and time still passes, its cached verdict standing)."""
    train = folder.scan(celeba, "train")
    folder.scan(celeba, "valid")
    f = train.files[0]
    st = f.stat()
    f.write_bytes(b"\0" * st.st_size)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert folder.scan(celeba, "train").files == train.files
