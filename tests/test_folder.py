import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_celeba, write_image
from fastdcgan.config import UsageError
from fastdcgan.data.folder import find_images, open_rgb, scan, validate


def test_celeba_layout_and_splits(celeba):
    assert len(find_images(celeba).files) == 48
    train, valid, test = (find_images(celeba, s) for s in ("train", "valid", "test"))
    assert (len(train.files), len(valid.files), len(test.files)) == (38, 5, 5)
    assert {f.name for f in train.files}.isdisjoint(f.name for f in valid.files)
    assert train.files == sorted(train.files) and train.layout == "celeba"


def test_partition_rows_without_files_are_counted(celeba):
    (celeba / "img_align_celeba" / "000003.jpg").unlink()
    (celeba / "img_align_celeba" / "000004.jpg").unlink()
    found = find_images(celeba)
    assert len(found.files) == 46 and found.missing_rows == 2


def as_kaggle_csv(root):
    """Swap list_eval_partition.txt for the Kaggle copy's list_eval_partition.csv (header, commas)."""
    rows = [line.split() for line in (root / "list_eval_partition.txt").read_text().splitlines()]
    (root / "list_eval_partition.csv").write_text("image_id,partition\n"
                                                  + "".join(f"{n},{p}\n" for n, p in rows))
    (root / "list_eval_partition.txt").unlink()


def test_kaggle_csv_partition_file(celeba):
    as_kaggle_csv(celeba)
    (celeba / "img_align_celeba" / "000003.jpg").unlink()  # a train row
    (celeba / "img_align_celeba" / "000048.jpg").unlink()  # a test row
    train, valid, test = (find_images(celeba, s) for s in ("train", "valid", "test"))
    assert (len(train.files), len(valid.files), len(test.files)) == (37, 5, 4)
    assert (train.missing_rows, valid.missing_rows, test.missing_rows) == (1, 0, 1)
    assert "000003.jpg" not in {f.name for f in train.files} and train.layout == "celeba"
    assert train.partition_file == celeba / "list_eval_partition.csv"
    assert len(find_images(celeba).files) == 46 and find_images(celeba).missing_rows == 2


def test_the_txt_is_preferred_and_a_bad_csv_row_is_named(celeba):
    assert find_images(celeba).partition_file == celeba / "list_eval_partition.txt"
    (celeba / "list_eval_partition.csv").write_text("image_id,partition\n000001.jpg,2\n")
    assert len(find_images(celeba, "test").files) == 5  # from the .txt
    (celeba / "list_eval_partition.txt").unlink()
    assert [f.name for f in find_images(celeba, "test").files] == ["000001.jpg"]
    (celeba / "list_eval_partition.csv").write_text("image_id,partition\n000001.jpg 2\n")
    with pytest.raises(UsageError, match=r"list_eval_partition.csv:2: expected 'NAME,PARTITION'"):
        find_images(celeba)


def test_kaggle_nested_layout(tmp_path):
    root = tmp_path / "kaggle"
    make_celeba(root, 5)
    (root / "img_align_celeba").rename(tmp_path / "inner")
    (root / "img_align_celeba").mkdir()
    (tmp_path / "inner").rename(root / "img_align_celeba" / "img_align_celeba")
    assert len(find_images(root).files) == 5


def test_any_folder_tree(tmp_path):
    write_image(tmp_path / "b" / "x.JPG", 1)
    write_image(tmp_path / "a" / "deep" / "y.png", 2)
    write_image(tmp_path / "z.webp", 3, fmt="WEBP")
    write_image(tmp_path / "w.bmp", 4)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._x.jpg").write_bytes(b"macOS resource fork")
    found = find_images(tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in found.files] == ["a/deep/y.png", "b/x.JPG", "w.bmp",
                                                                    "z.webp"]
    assert found.layout == "folder"
    with pytest.raises(UsageError, match="data.split=train") as e:
        find_images(tmp_path, "train")
    assert "list_eval_partition.txt or list_eval_partition.csv" in str(e.value)


def test_missing_empty_and_useless_roots(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        scan(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"")
    with pytest.raises(UsageError, match="no decodable images"):
        scan(tmp_path / "bad")


def test_bad_files_are_skipped_counted_and_named(tmp_path):
    good = [write_image(tmp_path / f"good{i}.jpg", i) for i in range(3)]
    data = good[0].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a JPEG\n" * 20)
    (tmp_path / "garbage.png").write_bytes(os.urandom(500))
    found = scan(tmp_path, workers=1)
    assert sorted(f.name for f in found.files) == ["good0.jpg", "good1.jpg", "good2.jpg"]
    assert sorted(p.name for p, _ in found.skipped) == ["empty.jpg", "garbage.png", "text.jpg",
                                                         "truncated.jpg"]
    assert all(why for _, why in found.skipped)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_odd_modes_become_rgb(tmp_path, mode):
    src = Image.open(write_image(tmp_path / "src.png", 0))
    path = tmp_path / ("odd.jpg" if mode == "CMYK" else "odd.png")
    src.convert(mode).save(path)
    im = open_rgb(path)
    assert im.mode == "RGB" and im.size == src.size
    assert scan(tmp_path).files  # and validation accepts it


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = np.asarray(open_rgb(tmp_path / "a.png"))
    assert (arr[0, 0] == (255, 0, 0)).all() and (arr[7, 7] == (255, 255, 255)).all()


def test_verdicts_are_cached_by_size_and_mtime(tmp_path):
    paths = [write_image(tmp_path / f"{i}.jpg", i) for i in range(3)]
    assert len(scan(tmp_path).files) == 3
    # Corrupt a file but keep its size and mtime: the cached verdict stands (it was not decoded again).
    st = paths[0].stat()
    paths[0].write_bytes(b"\0" * st.st_size)
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(scan(tmp_path).files) == 3
    # A new mtime makes it checked again, and now it fails.
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    found = scan(tmp_path)
    assert len(found.files) == 2 and found.skipped[0][0] == paths[0]


def test_validate_keeps_order_and_parallel_agrees(tmp_path):
    for i in range(600):  # enough to take the process-pool path
        write_image(tmp_path / f"{i:04d}.png", i, size=(12, 12))
    (tmp_path / "0100.png").write_bytes(b"junk")
    a = validate(find_images(tmp_path), workers=2)
    assert len(a.files) == 599 and a.files == sorted(a.files) and a.skipped[0][0].name == "0100.png"


def test_images_smaller_than_the_training_size_are_counted(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"big{i}.jpg", i, size=(44, 52))
    Image.new("RGB", (4, 4), (200, 30, 30)).save(tmp_path / "tiny.png")
    write_image(tmp_path / "thin.jpg", 4, size=(60, 20))  # the shorter side decides
    assert scan(tmp_path, min_size=32).small == 2
    assert scan(tmp_path, min_size=32).small == 2  # again from the cached verdicts
    assert scan(tmp_path, min_size=44).small == 2 and scan(tmp_path, min_size=45).small == 5
    assert scan(tmp_path).small == 0
