"""interpolate: a walk through z between seeds, as a PNG strip, an animated GIF or an MP4."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ..plots import save_gif, save_grid, save_mp4
from . import Parser, UsageError, new_parser, positive_float, positive_int, seeds_arg
from .export import LoadedGenerator
from .latent import interpolation_path, seed_noise, truncate

FPS = 12.0


def interpolate_parser() -> Parser:
    p = new_parser("interpolate", "A walk through z between seeds: a PNG strip (one row per pair of "
                   "seeds), an animated GIF or an MP4 (needs ffmpeg), chosen by --out's suffix.", "walk.png")
    p.add_argument("--seeds", type=seeds_arg, required=True,
                   help="two or more seeds to pass through, e.g. 1,2,3")
    p.add_argument("--frames", type=positive_int, default=8,
                   help="steps from one seed to the next (default 8)")
    p.add_argument("--method", choices=("slerp", "linear"), default="slerp",
                   help="slerp (default; keeps z at a typical length) or linear")
    p.add_argument("--loop", action="store_true", help="return to the first seed at the end")
    # None, so that --fps given for a PNG strip (which has no frame rate) can be refused
    p.add_argument("--fps", type=positive_float, default=None,
                   help=f"GIF/MP4 frames per second (default {FPS:g}; refused for a PNG strip)")
    return p


def run_interpolate(G: LoadedGenerator, args: argparse.Namespace) -> None:
    if len(args.seeds) < 2:
        raise UsageError("interpolate needs at least two seeds, e.g. --seeds 1,2")
    seeds = list(args.seeds) + (args.seeds[:1] if args.loop else [])
    suffix = Path(args.out).suffix.lower()
    if suffix not in (".png", ".gif", ".mp4"):
        raise UsageError(f"--out must end in .png, .gif or .mp4, got {args.out!r}")
    ffmpeg = shutil.which("ffmpeg")
    if suffix == ".mp4" and ffmpeg is None:
        raise UsageError("no MP4 encoder: ffmpeg is not on PATH; install it or write a .gif")
    if suffix == ".png" and args.fps is not None:
        raise UsageError(f"--fps applies to a .gif or .mp4, and --out {args.out!r} is a PNG strip")
    fps = FPS if args.fps is None else args.fps
    path = interpolation_path(seed_noise(seeds, G.nz, G.device), args.frames, args.method)
    images = G(truncate(path, args.truncation))
    if suffix == ".png":
        f = args.frames
        rows = [images[k * f: k * f + f + 1] for k in range(len(seeds) - 1)]
        save_grid(torch.cat(rows), args.out, nrow=f + 1)
        print(f"wrote {len(rows)} rows of {f + 1} images ({args.method}) to {args.out}")
        return
    if args.loop:
        images = images[:-1]  # the last frame is the first again: drop it so the loop does not stutter
    if suffix == ".gif":
        save_gif(images, args.out, fps)
    else:
        save_mp4(images, args.out, fps, ffmpeg)
    print(f"wrote {len(images)} frames ({args.method}) to {args.out}")
