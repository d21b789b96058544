"""grid, the plain form: one image per seed (--seeds), or n images from one seed (--n/--seed), as a
grid or one PNG each (--single)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..model import fixed_noise
from ..plots import save_grid
from . import USAGE, Parser, UsageError, new_parser, non_negative_int, seeds_arg
from .export import LoadedGenerator
from .latent import seed_noise, truncate


def grid_parser() -> Parser:
    p = new_parser("grid", USAGE, "grid.png")
    p.add_argument("--seeds", type=seeds_arg, default=None, help="one image per seed: 0-63, 1,5,9 or 1,4-6")
    p.add_argument("--n", type=int, default=None, help="number of images from --seed (default 64)")
    p.add_argument("--seed", type=int, default=None, help="noise seed for --n images (default 0)")
    p.add_argument("--nrow", type=non_negative_int, default=0,
                   help="images per grid row (default 0: square; refused with --single)")
    p.add_argument("--single", action="store_true", help="write one PNG per image into the --out folder")
    return p


def run_grid(G: LoadedGenerator, args: argparse.Namespace) -> None:
    if args.seeds is not None:
        if args.n is not None or args.seed is not None:
            raise UsageError("give either --seeds or --n/--seed, not both")
        z, names = seed_noise(args.seeds, G.nz, G.device), [f"seed{s}" for s in args.seeds]
    else:
        n, seed = (64 if args.n is None else args.n), (0 if args.seed is None else args.seed)
        if n < 1:
            raise UsageError("--n must be at least 1")
        z, names = fixed_noise(n, G.nz, seed, G.device), [f"seed{seed}_{i:05d}" for i in range(n)]
    if args.single and args.nrow:  # a layout asked for (0, the default, asks for none)
        raise UsageError("--nrow lays out a grid, and --single writes one PNG per image: give one of them")
    images = G(truncate(z, args.truncation))
    out = Path(args.out)
    if args.single:
        out.mkdir(parents=True, exist_ok=True)
        for name, im in zip(names, images, strict=True):
            save_grid(im[None], out / f"{name}.png", nrow=1)
        print(f"wrote {len(images)} images to {out}/")
    else:
        save_grid(images, out, nrow=args.nrow or None)
        print(f"wrote a grid of {len(images)} images to {out}")
