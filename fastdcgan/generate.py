"""Sample faces from a trained generator.

    python -m fastdcgan.generate --checkpoint runs/dcgan --n 64 --seed 0 --out grid.png
    python -m fastdcgan.generate --checkpoint runs/dcgan/generator.pth --n 16 --out faces/ --single

--checkpoint takes a run directory (its latest checkpoint, else its generator.pth), a training
checkpoint, or a plain generator state_dict. The same seed always gives the same images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import checkpoint
from .model import Generator, fixed_noise, generator_from_state_dict, sample
from .plots import save_grid


def generator_from_checkpoint(state: dict, ema: bool = False) -> Generator:
    """G (or, with ema, the EMA of G) from a loaded training checkpoint or a plain state_dict."""
    if ema:
        if "G_ema" not in state:
            raise KeyError("no EMA generator (G_ema) in this checkpoint: train with model.ema > 0")
        return generator_from_state_dict(state["G_ema"])
    return generator_from_state_dict(state["G"] if "G" in state else state)


def load_generator(path: str | Path, device: str | torch.device = "cpu", ema: bool = False) -> Generator:
    """The generator (or its EMA) from a run directory, a training checkpoint or a generator.pth, in eval mode."""
    path = Path(path)
    try:
        file = checkpoint.resolve(path)
    except FileNotFoundError:
        if (path / "generator.pth").is_file():
            file = path / "generator.pth"
        else:
            raise
    G = generator_from_checkpoint(checkpoint.load(file), ema)
    return G.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastdcgan.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint file or generator.pth")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--out", default="grid.png", help="PNG grid path, or a folder with --single")
    p.add_argument("--single", action="store_true", help="write one PNG per image into the --out folder")
    p.add_argument("--nrow", type=int, default=0, help="images per grid row (default: square)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--ema", action="store_true", help="sample the EMA generator (runs trained with model.ema)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    try:
        G = load_generator(args.checkpoint, args.device, args.ema)
    except (FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"error: cannot load a generator from {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    images = sample(G, fixed_noise(args.n, G.nz, args.seed, args.device))
    out = Path(args.out)
    if args.single:
        out.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            save_grid(im[None], out / f"seed{args.seed}_{i:05d}.png", nrow=1)
        print(f"wrote {args.n} images to {out}/")
    else:
        save_grid(images, out, nrow=args.nrow or None)
        print(f"wrote a grid of {args.n} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
