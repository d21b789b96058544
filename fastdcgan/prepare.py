"""Decode a dataset once into the cache that data.backend=cache (and auto) trains from.

    python -m fastdcgan.prepare /data/celeba                     # 64x64, all partitions
    python -m fastdcgan.prepare /data/celeba --image-size 128 --split train

Checks every file (as the trainer does), decodes the good ones into <cache>/arrays/ (see
fastdcgan/data/cache.py) and prints what it found. A matching cache is reused, not rebuilt, so
running it before a training job costs nothing when the job would find the cache anyway.
Exit codes: 0 done; 2 usage or data error; 1 the decoder failed (a CUDA error, a DALI pipeline that
died for another reason than a file), said in one line.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time


from . import dist
from .config import Data, UsageError
from .data import InputFailure, cache, folder


def _choices(name: str) -> tuple:
    """A data.* key's allowed values, from config.py: one list to keep up to date."""
    return next(f.metadata["choices"] for f in dataclasses.fields(Data) if f.name == name)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastdcgan.prepare", description=__doc__.split("\n\n")[0],
                                epilog="The cache lives under $FASTDCGAN_CACHE, else "
                                       "$XDG_CACHE_HOME/fastdcgan, else ~/.cache/fastdcgan. "
                                       "Exit codes: 0 done, 2 usage or data error, 1 the decoder failed.")
    p.add_argument("root", metavar="DATA_ROOT", help="image folder or CelebA download (as data.root)")
    p.add_argument("--image-size", type=int, default=Data().image_size, choices=_choices("image_size"),
                   help="pixels, square, as data.image_size (default %(default)s)")
    p.add_argument("--split", default=Data().split, choices=_choices("split"),
                   help="CelebA partition, as data.split (default %(default)s)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="decode with DALI on the GPU (cuda) or CPU threads; auto = cuda when available")
    p.add_argument("--threads", type=int, default=0, help="DALI threads or PIL processes (0 = usable cores)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def _summary(images: folder.ImageList, report: cache.BuildReport, image_size: int,
             seconds: float) -> list[str]:
    size = (report.folder / "images.npy").stat().st_size
    verb = "built" if report.built else "reused (already up to date)"
    lines = [f"cache {verb}: {report.folder}",
             f"  images      {report.images} at {image_size}x{image_size} ({report.decoder})",
             f"  on disk     {size / 2**20:.1f} MiB",
             f"  time        {seconds:.1f} s" + (f" (decoding {report.seconds:.1f} s, "
                                                 f"{report.images / max(report.seconds, 1e-9):.0f} img/s)"
                                                 if report.built else "")]
    skipped = [(str(p.relative_to(images.root)), why) for p, why in images.skipped] + list(report.skipped)
    if images.missing_rows:
        lines.append(f"  note        {images.missing_rows} rows of {images.partition_file.name} "
                     "name files not on disk")
    if images.small:
        lines.append(f"  note        {images.small} images smaller than {image_size}x{image_size}, upscaled")
    lines.append(f"  skipped     {len(skipped)} files that do not decode" + (":" if skipped else ""))
    lines += [f"    {name}: {why}" for name, why in skipped[:20]]
    if len(skipped) > 20:
        lines.append(f"    ... and {len(skipped) - 20} more")
    return lines


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    args = parse_args(argv)
    console = Console()
    t0 = time.perf_counter()
    try:
        if args.threads < 0:
            raise UsageError("--threads must be at least 0")
        device = dist.parse_device(args.device, "--device")
        with console.status("checking files", spinner="dots"):
            images = folder.scan(args.root, args.split, workers=args.threads, min_size=args.image_size)
        with Progress(TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, disable=not console.is_terminal) as bar:
            task = bar.add_task("decode", total=len(images.files))
            report = cache.ensure(images, args.image_size, device, args.threads,
                                  lambda done: bar.update(task, completed=done))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except InputFailure as e:  # as the trainer says a failed cache build: one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in _summary(images, report, args.image_size, time.perf_counter() - t0):
        console.print(line, highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
