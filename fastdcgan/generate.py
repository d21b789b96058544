"""Sample faces from a trained generator, and run the DCGAN paper's experiments on it.

    python -m fastdcgan.generate --checkpoint runs/dcgan --n 64 --seed 0 --out grid.png
    python -m fastdcgan.generate --checkpoint runs/dcgan/generator.pth --n 16 --out faces/ --single
    python -m fastdcgan.generate grid        --checkpoint RUN --seeds 0-63 --out grid.png
    python -m fastdcgan.generate interpolate --checkpoint RUN --seeds 1,2,3 --frames 8 --out walk.gif
    python -m fastdcgan.generate arithmetic  --checkpoint RUN --a 12,40,51 --b 3,9,22 --c 7,8,30 --out sum.png
    python -m fastdcgan.generate forget      --checkpoint RUN --positive 1,5,9 --layer -1 --k 8 --out forget.png
    python -m fastdcgan.generate features    --checkpoint RUN --seeds 5 --layer -1 --out maps.png
    python -m fastdcgan.generate export      --checkpoint RUN --out generator.pt

A first argument that is not a sub-command means `grid` (the plain form above). Each sub-command
has its own --help. --checkpoint takes a run directory (its latest checkpoint, else its
generator.pth), a training checkpoint or a plain generator state_dict (an exported .pt too, except
for forget and features). Seed s always gives the same face in every sub-command; --n/--seed draw n
vectors from the one seed s, as before. --truncation T clips each z's norm to T * sqrt(nz).
Exit code 2: a usage error or an unloadable checkpoint, with one line saying which.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

import torch

from . import dissect
from .export import (GeneratorLoadError, LoadedGenerator, export_onnx, export_torchscript, load_generator,
                     onnx_available)
from .latent import arithmetic, interpolation_path, jitter, parse_seeds, seed_noise, truncate, typical_length
from .model import fixed_noise
from .plots import compose, grid_image, labeled_tiles, save_gif, save_grid, save_mp4, save_picture

__all__ = ["load_generator", "main"]

# forget's negatives when the user marks none: typical faces, far from the small seeds people browse
REFERENCE_SEEDS = range(1_000_000, 1_000_064)


class UsageError(Exception):
    """A request we cannot carry out as given; main prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        """One line on stderr and exit 2 (argparse's default adds a usage block)."""
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def seeds_arg(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def new_parser(command: str, summary: str, out: str, sampling: bool = True) -> Parser:
    """A sub-command's parser with the flags every sub-command shares."""
    prog = "python -m fastdcgan.generate" + ("" if command == "grid" else f" {command}")
    description = summary if command == "grid" else textwrap.fill(summary, 100)  # grid's is the laid-out module doc
    p = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint file, generator.pth or exported .pt")
    p.add_argument("--out", default=out, help=f"output path (default {out})")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA generator weights (G_ema)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    if sampling:
        p.add_argument("--truncation", type=positive_float, default=None, metavar="T",
                       help="clip each z's norm to T * sqrt(nz) (typical norm: T=1); default: no clipping")
    return p


# ---- grid -------------------------------------------------------------------------------------

def grid_parser() -> Parser:
    p = new_parser("grid", __doc__, "grid.png")
    p.add_argument("--seeds", type=seeds_arg, default=None, help="one image per seed: 0-63, 1,5,9 or 1,4-6")
    p.add_argument("--n", type=int, default=None, help="number of images from --seed (default 64)")
    p.add_argument("--seed", type=int, default=None, help="noise seed for --n images (default 0)")
    p.add_argument("--nrow", type=int, default=0, help="images per grid row (default: square)")
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
    images = G(truncate(z, args.truncation))
    out = Path(args.out)
    if args.single:
        out.mkdir(parents=True, exist_ok=True)
        for name, im in zip(names, images):
            save_grid(im[None], out / f"{name}.png", nrow=1)
        print(f"wrote {len(images)} images to {out}/")
    else:
        save_grid(images, out, nrow=args.nrow or None)
        print(f"wrote a grid of {len(images)} images to {out}")


# ---- interpolate ------------------------------------------------------------------------------

def interpolate_parser() -> Parser:
    p = new_parser("interpolate", "A walk through z between seeds: a PNG strip (one row per pair of "
                   "seeds), an animated GIF or an MP4 (needs ffmpeg), chosen by --out's suffix.", "walk.png")
    p.add_argument("--seeds", type=seeds_arg, required=True, help="two or more seeds to pass through, e.g. 1,2,3")
    p.add_argument("--frames", type=positive_int, default=8, help="steps from one seed to the next (default 8)")
    p.add_argument("--method", choices=("slerp", "linear"), default="slerp",
                   help="slerp (default; keeps z at a typical length) or linear")
    p.add_argument("--loop", action="store_true", help="return to the first seed at the end")
    p.add_argument("--fps", type=positive_float, default=12.0, help="GIF/MP4 frames per second (default 12)")
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
        save_gif(images, args.out, args.fps)
    else:
        save_mp4(images, args.out, args.fps, ffmpeg)
    print(f"wrote {len(images)} frames ({args.method}) to {args.out}")


# ---- arithmetic -------------------------------------------------------------------------------

def arithmetic_parser() -> Parser:
    p = new_parser("arithmetic", "The paper's figure 7: mean z of the a seeds - mean of b + mean of c "
                   "(e.g. smiling woman - neutral woman + neutral man), shown with its inputs, and the result "
                   "with small noise added. With no --b: (a + c) / 2. Picking seeds from CelebA attributes "
                   "automatically needs an attribute classifier, which fastdcgan does not ship: mark them by eye "
                   "in a grid.", "arithmetic.png")
    p.add_argument("--a", type=seeds_arg, required=True, help="seeds showing concept a (the paper used 3)")
    p.add_argument("--b", type=seeds_arg, default=[], help="seeds showing concept b, subtracted (optional)")
    p.add_argument("--c", type=seeds_arg, required=True, help="seeds showing concept c, added")
    p.add_argument("--n", type=positive_int, default=9, help="result images, the exact one in the middle (default 9)")
    p.add_argument("--noise", type=float, default=0.25, help="uniform noise scale around the result (default 0.25)")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of that noise (default 0)")
    return p


def run_arithmetic(G: LoadedGenerator, args: argparse.Namespace) -> None:
    za, zb, zc = (seed_noise(s, G.nz, G.device) for s in (args.a, args.b, args.c))
    result = jitter(arithmetic(za, zb, zc), args.n, args.noise, args.noise_seed)
    order = list(range(1, args.n))
    order.insert(args.n // 2, 0)  # the exact result in the middle of its noisy neighbours, as in the paper
    result = result[order]
    parts = []
    for sign, name, seeds, z in (("", "a", args.a, za), ("- ", "b", args.b, zb), ("+ ", "c", args.c, zc)):
        if seeds:
            # the mean is shown at a z's typical length (a mean of k z is 1/sqrt(k) as long: washed out)
            faces = G(truncate(torch.cat([z, typical_length(z.mean(0, keepdim=True))]), args.truncation))
            parts.append((f"{sign}{name}: {len(seeds)} seeds | mean", grid_image(faces, nrow=len(seeds) + 1)))
    formula = "a - b + c" if args.b else "(a + c) / 2"
    side = max(1, round(args.n ** 0.5))
    parts.append((f"= {formula} (middle: exact)", grid_image(G(truncate(result, args.truncation)), nrow=side)))
    save_picture(compose(parts), args.out)
    print(f"wrote {formula} with its inputs and {args.n} results to {args.out}")


# ---- forget and features ----------------------------------------------------------------------

def forget_parser() -> Parser:
    p = new_parser("forget", "The paper's section 6.1 for faces: find the feature maps of a generator layer "
                   "that draw a feature (from seeds marked as showing it, and optionally not showing it), zero "
                   "them during generation and show before/after for the same seeds. Or drop channels by index.",
                   "forget.png")
    p.add_argument("--layer", type=int, default=-1, help="hidden layer: 0 = 4x4 ... -1 = the last (default -1)")
    p.add_argument("--positive", type=seeds_arg, default=None, help="seeds where the feature shows, e.g. 1,5,9")
    p.add_argument("--negative", type=seeds_arg, default=None,
                   help=f"seeds where it does not (default: the {len(REFERENCE_SEEDS)} reference seeds "
                        f"{REFERENCE_SEEDS.start}-{REFERENCE_SEEDS.stop - 1})")
    p.add_argument("--k", type=positive_int, default=8, help="how many top-scoring channels to drop (default 8)")
    p.add_argument("--score", choices=dissect.SCORES, default="diff",
                   help="diff: standardised mean difference (default); logistic: logistic-regression weights")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                   help="score activations inside this box only (fractions of the image; aligned faces put "
                        "e.g. the mouth near 0.3,0.65,0.7,0.9); default: the whole map")
    p.add_argument("--drop-channels", type=seeds_arg, default=None, help="drop these channels instead, e.g. 3,17")
    p.add_argument("--seeds", type=seeds_arg, default=None,
                   help="seeds to show (default: the positives, then the negatives or 8 reference seeds)")
    return p


def chosen_channels(G: LoadedGenerator, args: argparse.Namespace) -> list[int]:
    if args.drop_channels is not None:
        if args.positive is not None:
            raise UsageError("give either --drop-channels or --positive, not both")
        return args.drop_channels
    if args.positive is None:
        raise UsageError("forget needs --positive SEEDS (where the feature shows) or --drop-channels")
    negative = args.negative or [s for s in REFERENCE_SEEDS if s not in args.positive]
    box = dissect.parse_box(args.box) if args.box else None
    feats = [dissect.channel_means(G.net, seed_noise(s, G.nz, G.device), args.layer, box)
             for s in (args.positive, negative)]
    score = dissect.score_channels(*feats, method=args.score)
    channels = dissect.top_channels(score, args.k)
    print("channel  score   (" + args.score + ")")
    for c in channels:
        print(f"{c:7d}  {score[c]:+.3f}")
    if not channels:
        print("no channel scores above zero: nothing to drop")
    return channels


def run_forget(G: LoadedGenerator, args: argparse.Namespace) -> None:
    need_eager(G, "forget")
    layer = dissect.layer_index(G.net, args.layer)
    channels = chosen_channels(G, args)
    shown = args.seeds or (args.positive or []) + (args.negative or list(REFERENCE_SEEDS[:8]))
    shown = shown[:64]
    z = truncate(seed_noise(shown, G.nz, G.device), args.truncation)
    before = G(z)
    with dissect.dropped_channels(G.net, layer, channels), torch.no_grad():
        after = G(z)
    nrow = min(8, len(shown))
    size = dissect.layer_channels(G.net, layer)
    save_picture(compose([("before", grid_image(before, nrow)),
                          (f"after: layer {layer}, {len(channels)} of {size} maps dropped", grid_image(after, nrow))]),
                 args.out)
    print(f"dropped layer {layer} channels {','.join(map(str, channels)) or '(none)'}; wrote {args.out}")
    if channels:
        print(f"to repeat: --layer {layer} --drop-channels {','.join(map(str, channels))}")


def features_parser() -> Parser:
    p = new_parser("features", "The feature maps of one generator layer for a seed (several seeds: their mean), "
                   "one tile per channel labelled with its index, all on one brightness scale (black: zero, "
                   "white: the layer's 99th percentile or more), to choose channels for forget --drop-channels.",
                   "features.png")
    p.add_argument("--seeds", type=seeds_arg, default=[0], help="the seed (or seeds, averaged) to show (default 0)")
    p.add_argument("--layer", type=int, default=-1, help="hidden layer: 0 = 4x4 ... -1 = the last (default -1)")
    p.add_argument("--tile", type=positive_int, default=48, help="pixels per map tile (default 48)")
    return p


def run_features(G: LoadedGenerator, args: argparse.Namespace) -> None:
    need_eager(G, "features")
    layer = dissect.layer_index(G.net, args.layer)
    z = truncate(seed_noise(args.seeds, G.nz, G.device), args.truncation)
    maps = dissect.activations(G.net, z, [layer])[layer].mean(0).cpu()
    # white at the 99th percentile, not the max: a few hot pixels would leave every other map black
    top = float(torch.quantile(maps.flatten(), 0.99)) or float(maps.max()) or 1.0
    c, h, w = maps.shape
    tiles = labeled_tiles((maps / top).clamp(max=1), [str(i) for i in range(c)], args.tile,
                          nrow=max(1, round(c ** 0.5)))
    faces = grid_image(G(z), nrow=min(4, len(args.seeds)))
    seeds = ",".join(map(str, args.seeds[:6])) + ("..." if len(args.seeds) > 6 else "")
    save_picture(compose([(f"seed {seeds}", faces), (f"layer {layer}: {c} maps of {h}x{w}; white >= {top:.2f}", tiles)]),
                 args.out)
    strongest = torch.argsort(maps.mean(dim=(1, 2)), descending=True)[:10].tolist()
    print(f"wrote {c} maps of layer {layer} ({h}x{w}) to {args.out}; strongest channels: {strongest}")


def need_eager(G: LoadedGenerator, command: str) -> None:
    if not G.eager:
        raise UsageError(f"{command} needs the generator's layers: use a run directory, checkpoint or generator.pth, "
                         "not an exported file")


# ---- export -----------------------------------------------------------------------------------

def export_parser() -> Parser:
    return new_parser("export", "The generator as TorchScript (--out NAME.pt; loads with torch.jit.load, in "
                      "Python or C++, and with fastdcgan.load_generator) or ONNX (--out NAME.onnx; needs the onnx "
                      "package). nz and image size are recorded in the file. The forward takes z of shape "
                      "(N, nz, 1, 1) and returns images (N, 3, S, S) in [-1, 1].", "generator.pt", sampling=False)


def run_export(G: LoadedGenerator, args: argparse.Namespace) -> None:
    suffix = Path(args.out).suffix.lower()
    if suffix == ".onnx":
        if not onnx_available():
            raise UsageError("ONNX export needs the onnx package (pip install onnx); --out NAME.pt gives TorchScript")
        export_onnx(G, args.out)
    elif suffix in (".pt", ".ts"):
        export_torchscript(G, args.out)
        loaded = load_generator(args.out, G.device)
        seeds = list(range(4))
        diff = float((loaded.sample_seeds(seeds) - G.sample_seeds(seeds)).abs().max())
        print(f"checked: the exported generator matches the original to {diff:.1e} on seeds 0-3")
    else:
        raise UsageError(f"--out must end in .pt or .ts (TorchScript) or .onnx, got {args.out!r}")
    print(f"wrote the generator (nz {G.nz}, {G.image_size}x{G.image_size}) to {args.out}")


COMMANDS = {
    "grid": (grid_parser, run_grid),
    "interpolate": (interpolate_parser, run_interpolate),
    "arithmetic": (arithmetic_parser, run_arithmetic),
    "forget": (forget_parser, run_forget),
    "features": (features_parser, run_features),
    "export": (export_parser, run_export),
}


def device_from(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device here")
    return device


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "grid"  # no sub-command: the plain form
    build, run = COMMANDS[command]
    args = build().parse_args(argv)
    try:
        device = device_from(args.device)
        try:
            G = load_generator(args.checkpoint, device, ema=args.ema)
        except GeneratorLoadError as e:
            print(f"error: cannot load a generator from {args.checkpoint}: {e}", file=sys.stderr)
            return 2
        with torch.no_grad():
            run(G, args)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
