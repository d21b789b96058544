"""Tests for the built-in procedural face dataset (fastdcgan.data.synthetic)."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from fastdcgan.data import synthetic
from fastdcgan.data.folder import cache_dir
from fastdcgan.data.synthetic import VERSION, default_root, draw_face, make_faces


def _files(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under root, relative path -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_attrs(root: pathlib.Path) -> tuple[int, list[str], dict[str, list[int]]]:
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    rows = {}
    for line in lines[2:]:
        fname, *vals = line.split()
        rows[fname] = [int(v) for v in vals]
    return int(lines[0]), names, rows


@pytest.fixture
def faces40(tmp_path) -> pathlib.Path:
    """Made for each test (0.2 s): a set shared by the module would be made in the first test's
    process only, so mutation testing (docs/mutation.md) would not see the others read it."""
    return make_faces(tmp_path / "faces40", n=40, seed=0)


def test_deterministic_and_seed_dependent(tmp_path, faces40):
    again = _files(make_faces(tmp_path / "again", n=40, seed=0))
    assert again == _files(faces40)
    other = _files(make_faces(tmp_path / "other", n=40, seed=1))
    jpgs = [k for k in again if k.endswith(".jpg")]
    assert all(other[k] != again[k] for k in jpgs)


def test_draw_face_matches_written_file_and_is_independent_of_order(faces40):
    img, attrs = draw_face(7, seed=0)
    assert img.size == (178, 218) and img.mode == "RGB"
    assert set(attrs) == set(synthetic.ATTRIBUTES)
    # Drawing out of order gives the same image: each index has its own RNG stream.
    draw_face(3, seed=0)
    assert draw_face(7, seed=0)[0].tobytes() == img.tobytes()
    _, names, rows = _read_attrs(faces40)
    assert rows["000008.jpg"] == [1 if attrs[k] else -1 for k in names]


def test_layout(faces40):
    root = faces40
    jpgs = sorted(p.name for p in (root / "img_align_celeba").iterdir())
    assert jpgs == [f"{i:06d}.jpg" for i in range(1, 41)]
    for name in jpgs[:5]:
        with Image.open(root / "img_align_celeba" / name) as im:
            assert im.format == "JPEG" and im.size == (178, 218) and im.mode == "RGB"

    parts = [line.split() for line in (root / "list_eval_partition.txt").read_text().splitlines()]
    assert [p[0] for p in parts] == jpgs
    split = [int(p[1]) for p in parts]
    assert set(split) == {0, 1, 2}
    assert split == sorted(split)  # train, then valid, then test
    assert split.count(0) == 32 and split.count(1) == 4 and split.count(2) == 4

    count, names, rows = _read_attrs(root)
    assert count == 40 and sorted(rows) == jpgs
    assert names == list(synthetic.ATTRIBUTES)
    assert {"Smiling", "Eyeglasses", "Male", "Bangs", "Black_Hair", "Blond_Hair"} <= set(names)
    for j, name in enumerate(names):
        column = {r[j] for r in rows.values()}
        assert column == {1, -1}, f"attribute {name} does not vary: {column}"
    # At most one hair-colour attribute per face.
    hair = [names.index(k) for k in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")]
    assert all(sum(r[j] == 1 for j in hair) <= 1 for r in rows.values())


def test_images_are_not_trivial(faces40):
    arrays = [np.asarray(Image.open(p), np.float32) for p in sorted((faces40 / "img_align_celeba").iterdir())]
    for a in arrays:
        assert a.std() > 20  # real structure, not a flat or near-flat image
    # Faces differ from one another, and the centre (the face) differs from the corners (background).
    assert np.mean([np.abs(arrays[i] - arrays[i + 1]).mean() for i in range(10)]) > 15
    centre = np.stack([a[95:135, 70:108] for a in arrays]).mean(axis=(1, 2))
    corner = np.stack([a[:20, :20] for a in arrays]).mean(axis=(1, 2))
    assert np.abs(centre - corner).sum(axis=1).mean() > 30


def test_attributes_drive_the_drawing():
    # Eyeglasses: frames darken the eye region relative to the face; compare means over many faces.
    faces = [draw_face(i, seed=3) for i in range(60)]

    def eye_band(img):  # rows around CelebA's eye line, both eyes
        return np.asarray(img, np.float32)[100:125, 55:125]

    with_g = [eye_band(im).std() for im, a in faces if a["Eyeglasses"]]
    without = [eye_band(im).std() for im, a in faces if not a["Eyeglasses"]]
    assert with_g and without and np.mean(with_g) > np.mean(without)


def test_parallel_equals_in_process(tmp_path):
    serial = _files(make_faces(tmp_path / "serial", n=24, seed=5, workers=1))
    parallel = _files(make_faces(tmp_path / "parallel", n=24, seed=5, workers=2))
    assert serial == parallel and len(serial) == 26
    # 80% / 10% / 10% of 24, rounded down: 19 train, 2 valid, 3 test
    split = [int(line.split()[1]) for line in serial["list_eval_partition.txt"].decode().splitlines()]
    assert [split.count(k) for k in (0, 1, 2)] == [19, 2, 3]


def test_default_root_builds_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / f"synthetic-faces-v{VERSION}-n20-s0"
    # A leftover temp folder from an interrupted build: it must not be mistaken for the dataset.
    stale = expected.parent / f".{expected.name}.tmp-99999-deadbeef"
    (stale / "img_align_celeba").mkdir(parents=True)
    (stale / "img_align_celeba" / "000001.jpg").write_bytes(b"partial")
    os.utime(stale, (1, 1))  # its folder old, but images written into it just now: a build still going

    root = default_root(n=20, seed=0)
    assert root == expected
    assert len(list((root / "img_align_celeba").glob("*.jpg"))) == 20
    assert _read_attrs(root)[0] == 20
    # Nothing of ours is left behind, and the other build's folder is left alone.
    assert [p.name for p in root.parent.iterdir() if p.name.startswith(".")] == [stale.name]

    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert default_root(n=20, seed=0) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes

    # Different n gives a different folder.
    assert default_root(n=12, seed=0).name == f"synthetic-faces-v{VERSION}-n12-s0"


def test_default_root_says_when_it_makes_the_faces_and_only_then(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "home" / "cache"))  # made, with its parents
    root = default_root(n=8, seed=0)
    assert capsys.readouterr().out == f"making 8 synthetic faces in {root} (once, ~1 s)\n"
    default_root(n=8, seed=0)
    assert capsys.readouterr().out == ""


def test_default_root_removes_old_stale_temp_and_handles_lost_race(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path))
    name = f"synthetic-faces-v{VERSION}-n10-s2"
    stale = tmp_path / f".{name}.tmp-1-old"
    stale.mkdir()
    os.utime(stale, (1, 1))  # interrupted long ago
    # Simulate losing the rename race: another builder finishes just before our rename.
    real_make = synthetic.make_faces

    def make_then_competitor_wins(root, n, seed):
        real_make(root, n=n, seed=seed)
        real_make(tmp_path / name, n=n, seed=seed)
        return pathlib.Path(root)

    monkeypatch.setattr(synthetic, "make_faces", make_then_competitor_wins)
    root = default_root(n=10, seed=2)
    assert root == tmp_path / name and len(list((root / "img_align_celeba").iterdir())) == 10
    assert [p.name for p in tmp_path.iterdir()] == [name]  # our temp and the stale one are gone


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTDCGAN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fastdcgan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fastdcgan"
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


@pytest.mark.parametrize("split, count", [("all", 40), ("train", 32), ("valid", 4), ("test", 4)])
def test_the_trainer_takes_data_split_on_the_built_in_faces_as_on_a_folder(split, count, tmp_path,
                                                                            monkeypatch):
    """The built-in faces come with CelebA's partition file (80/10/10), so data.split chooses among
    them as it does for a data.root: a run on the synthetic faces that trains on every partition
    whatever data.split says passed the settings table, whose probes all use a folder."""
    from conftest import tiny_args
    from fastdcgan import config
    from fastdcgan.train import Run
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "cache"))
    args = [a for a in tiny_args(tmp_path, tmp_path / "run") if not a.startswith("data.root=")]
    run = Run(config.build(None, [*args, "data.root=", "data.synthetic_n=40", "train.batch_size=2",
                                  f"data.split={split}"]))
    assert len(run.images.files) == count
