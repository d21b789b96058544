"""Find the images under data.root and check that each one decodes, before any training starts.

Two layouts: a CelebA download (`img_align_celeba/` beside `list_eval_partition.txt`, also the
Kaggle zip's doubled `img_align_celeba/img_align_celeba/`) with train/valid/test partitions, or
any folder tree of images. Files that do not decode are skipped and reported, never fatal; the
verdicts are cached by (path, size, mtime) so a second run over 200k files decodes none of them.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..config import UsageError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = {"train": "0", "valid": "1", "test": "2"}
CACHE_VERSION = 1


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


def _celeba_image_dir(root: Path) -> Path | None:
    if not (root / "list_eval_partition.txt").is_file():
        return None
    for d in (root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba"):
        if d.is_dir():
            return d
    return None


def find_images(root: str | os.PathLike, split: str = "all") -> ImageList:
    """The candidate image files under root, sorted; no decoding yet."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UsageError(f"data.root not found: {root}")
    if not root.is_dir():
        raise UsageError(f"data.root is not a folder: {root}")
    img_dir = _celeba_image_dir(root)
    if img_dir is not None:
        on_disk = {p.name for p in img_dir.iterdir()}
        files, missing = [], 0
        for n, line in enumerate((root / "list_eval_partition.txt").read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise UsageError(f"{root / 'list_eval_partition.txt'}:{n}: expected 'NAME PARTITION', got {line!r}")
            name, part = parts
            if split != "all" and part != SPLITS[split]:
                continue
            if name in on_disk:
                files.append(img_dir / name)
            else:
                missing += 1
        return ImageList(root, sorted(files), "celeba", missing_rows=missing)
    if split != "all":
        raise UsageError(f"data.split={split} needs a CelebA layout (list_eval_partition.txt) in {root}")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file()]
    return ImageList(root, sorted(files), "folder")


def open_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Decode to RGB whatever the mode (grayscale, CMYK, palette, alpha); raise if it does not decode.

    draft_size lets the JPEG decoder scale down by 1/2..1/8 while decoding; every byte of the scan
    is still entropy-decoded, so a truncated file still fails.
    """
    with Image.open(path) as im:
        if draft_size:
            im.draft("RGB", (draft_size, draft_size))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Flatten alpha onto white rather than letting convert() drop it onto black.
            im = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(im, mask=im.getchannel("A"))
            return bg
        return im.convert("RGB")


def check_image(path: str) -> str | None:
    """None if the file decodes to an RGB image, else the reason it does not."""
    try:
        im = open_rgb(path, draft_size=64)
        if min(im.size) < 1:
            return "empty image"
    except Exception as e:  # PIL raises many kinds; any of them means this file is unusable
        return f"{type(e).__name__}: {e}".strip()
    return None


def _check_many(paths: list[str]) -> list[str | None]:
    return [check_image(p) for p in paths]


def _check_all(paths: list[str], workers: int) -> list[str | None]:
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": verdicts}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a re-check next time


def validate(images: ImageList, workers: int = 0) -> ImageList:
    """Drop files that do not decode (recorded in images.skipped); raise if nothing usable is left."""
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
            verdicts[rel] = [st.st_size, st.st_mtime_ns, None]
            todo.append(rel)
    if todo:
        results = _check_all([str(images.root / r) for r in todo], workers or os.cpu_count() or 1)
        for rel, why in zip(todo, results):
            verdicts[rel][2] = why
        _save_verdicts(cache, {**old, **verdicts})  # keep other splits' verdicts
    good, skipped = [], []
    for p in images.files:
        why = verdicts[str(p.relative_to(images.root))][2]
        (skipped.append((p, why)) if why else good.append(p))
    if not good:
        what = f"no decodable images ({len(skipped)} files failed)" if skipped else "no images (jpg, jpeg, png, bmp, webp)"
        raise UsageError(f"data.root {images.root}: {what}")
    return ImageList(images.root, good, images.layout, skipped, images.missing_rows)


def scan(root: str | os.PathLike, split: str = "all", workers: int = 0) -> ImageList:
    """find_images + validate: the files a run trains on."""
    return validate(find_images(root, split), workers)
