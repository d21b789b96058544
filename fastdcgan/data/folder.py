"""Find the images under data.root and check that each one decodes, before any training starts.

Two layouts: a CelebA download (`img_align_celeba/` beside `list_eval_partition.txt`, or the
Kaggle copy's `list_eval_partition.csv` and doubled `img_align_celeba/img_align_celeba/`) with
train/valid/test partitions, or any folder tree of images. Files that do not decode are skipped and
reported, never fatal; the verdicts are cached by (path, size, mtime) so a second run over 200k
files decodes none of them.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from .. import checkpoint
from ..config import UsageError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = {"train": "0", "valid": "1", "test": "2"}
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")  # official CelebA, Kaggle's copy
CACHE_VERSION = 3  # 2: each verdict also keeps the image's shorter side; 3: its width and height


def cache_dir() -> Path:
    """$FASTDCGAN_CACHE, else $XDG_CACHE_HOME/fastdcgan, else ~/.cache/fastdcgan."""
    if os.environ.get("FASTDCGAN_CACHE"):
        return Path(os.environ["FASTDCGAN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastdcgan"


@dataclass
class ImageList:
    root: Path
    files: list[Path]
    layout: str                                   # "celeba" or "folder"
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it does not decode)
    missing_rows: int = 0                         # partition rows naming files not on disk
    partition_file: Path | None = None            # the list_eval_partition file read (celeba layout)
    small: int = 0                                # files whose shorter side is under validate's min_size
    sizes: list[tuple[int, int]] | None = None    # (width, height) of each file, from its header (validate)


def _partition_file(root: Path) -> Path | None:
    return next((root / name for name in PARTITION_FILES if (root / name).is_file()), None)


def _celeba_image_dir(root: Path) -> Path | None:
    for d in (root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba"):
        if d.is_dir():
            return d
    return None


def _partition_rows(path: Path):
    """(name, partition) of each row: 'NAME PART' lines in the .txt; 'NAME,PART' under an
    'image_id,partition' header in Kaggle's .csv."""
    csv = path.suffix == ".csv"
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = [f.strip() for f in line.split(",")] if csv else line.split()
        if not line.strip() or (csv and n == 1 and not parts[-1].isdigit()):
            continue
        if len(parts) != 2:
            raise UsageError(f"{path}:{n}: expected 'NAME{',' if csv else ' '}PARTITION', got {line!r}")
        yield parts


def find_images(root: str | os.PathLike, split: str = "all") -> ImageList:
    """The candidate image files under root, sorted; no decoding yet."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UsageError(f"data.root not found: {root}")
    if not root.is_dir():
        raise UsageError(f"data.root is not a folder: {root}")
    partitions = _partition_file(root)
    img_dir = _celeba_image_dir(root) if partitions else None
    if img_dir is not None:
        on_disk = {p.name for p in img_dir.iterdir()}
        files, missing = [], 0
        for name, part in _partition_rows(partitions):
            if split != "all" and part != SPLITS[split]:
                continue
            if name in on_disk:
                files.append(img_dir / name)
            else:
                missing += 1
        return ImageList(root, sorted(files), "celeba", missing_rows=missing, partition_file=partitions)
    if split != "all":
        raise UsageError(f"data.split={split} needs a CelebA layout (img_align_celeba/ beside "
                         f"list_eval_partition.txt or list_eval_partition.csv) in {root}")
    files = [p for p in root.rglob("*")
             if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file()]
    return ImageList(root, sorted(files), "folder")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode to RGB whatever the mode (grayscale, CMYK, palette, alpha); raise if it does not decode."""
    with Image.open(path) as im:
        return _to_rgb(im, None)


def open_drafted(path: str | os.PathLike, draft_size: int) -> tuple[Image.Image, tuple[int, int], float]:
    """open_rgb with JPEG draft mode: the decoder scales down by 1/2..1/8 while decoding, to no less than
    draft_size a side (every byte of the scan is still entropy-decoded, so a truncated file still fails).
    With it, what a crop box needs: the original's (width, height) and the draft's scale (1 when nothing
    was drafted), from draft()'s box of the original within the drafted image. libjpeg rounds a draft's
    sides up, so the ratio of the sides is not the scale."""
    with Image.open(path) as im:
        size = im.size
        drafted = im.draft("RGB", (draft_size, draft_size))  # None: nothing drafted (not a JPEG)
        scale = drafted[1][2] / size[0] if drafted else 1.0
        return _to_rgb(im, None), size, scale


def _to_rgb(im: Image.Image, draft_size: int | None) -> Image.Image:
    if draft_size:
        im.draft("RGB", (draft_size, draft_size))
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        # Flatten alpha onto white rather than letting convert() drop it onto black; "transparency" is a
        # palette's transparent entries, or the one transparent colour of a grey or RGB PNG (its tRNS key).
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def header_sizes(files: list[Path]) -> list[tuple[int, int]]:
    """(width, height) of each file from its header alone, with no decode (measured: BENCHMARKS.md):
    for file lists that did not come through validate, which records the sizes as it checks."""
    sizes = []
    for f in files:
        with Image.open(f) as im:
            sizes.append(im.size)
    return sizes


def check_image(path: str) -> tuple[str | None, int, int]:
    """(None, width, height) if the file decodes to an RGB image, else (the reason it does not, 0, 0).
    The size is the header's (draft mode decodes smaller), EXIF orientation ignored as every decoder
    here does."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if min(_to_rgb(im, 64).size) < 1:
                return "empty image", 0, 0
    except Exception as e:  # PIL raises many kinds; any of them means this file is unusable
        return f"{type(e).__name__}: {e}".strip(), 0, 0
    return None, width, height


def _check_many(paths: list[str]) -> list[tuple[str | None, int, int]]:
    return [check_image(p) for p in paths]


def _check_all(paths: list[str], workers: int) -> list[tuple[str | None, int, int]]:
    if workers <= 1 or len(paths) < 512:
        return _check_many(paths)
    chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
    with ProcessPoolExecutor(workers) as pool:
        return [r for part in pool.map(_check_many, chunks) for r in part]


def _verdict_cache(root: Path) -> Path:
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "validated" / f"{key}.json"


def _load_verdicts(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["files"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError):
        return {}


def _save_verdicts(path: Path, verdicts: dict) -> None:
    data = json.dumps({"version": CACHE_VERSION, "files": verdicts}).encode()
    try:
        checkpoint.atomic_write(path, lambda f: f.write(data))
    except OSError:
        pass  # a read-only cache only costs a re-check next time


def validate(images: ImageList, workers: int = 0, min_size: int = 0) -> ImageList:
    """Drop files that do not decode (recorded in images.skipped); raise if nothing usable is left.
    The result's `small` counts the files that training at min_size x min_size would upscale."""
    cache = _verdict_cache(images.root)
    old = _load_verdicts(cache)
    verdicts, todo = {}, []
    for p in images.files:
        st = p.stat()
        rel = str(p.relative_to(images.root))
        hit = old.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            verdicts[rel] = hit
        else:
            verdicts[rel] = [st.st_size, st.st_mtime_ns, None, 0, 0]
            todo.append(rel)
    if todo:
        results = _check_all([str(images.root / r) for r in todo], workers or os.cpu_count() or 1)
        for rel, result in zip(todo, results, strict=True):
            verdicts[rel][2:] = result
        _save_verdicts(cache, {**old, **verdicts})  # keep other splits' verdicts
    good, skipped, sizes, small = [], [], [], 0
    for p in images.files:
        _, _, why, width, height = verdicts[str(p.relative_to(images.root))]
        if why:
            skipped.append((p, why))
        else:
            good.append(p)
            sizes.append((width, height))
            small += min(width, height) < min_size
    if not good:
        what = (f"no decodable images ({len(skipped)} files failed)" if skipped
                else "no images (jpg, jpeg, png, bmp, webp)")
        raise UsageError(f"data.root {images.root}: {what}")
    return replace(images, files=good, skipped=skipped, small=small, sizes=sizes)


def scan(root: str | os.PathLike, split: str = "all", workers: int = 0, min_size: int = 0) -> ImageList:
    """find_images + validate: the files a run trains on."""
    return validate(find_images(root, split), workers, min_size)
