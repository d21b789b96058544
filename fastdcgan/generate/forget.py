"""forget and features: the paper's section 6.1 (drop the feature maps that draw a feature, show
before/after) and the feature maps of one layer, to choose the channels to drop."""
from __future__ import annotations

import argparse

import torch

from ..plots import compose, grid_image, labeled_tiles, save_picture
from . import Parser, UsageError, dissect, new_parser, positive_int, seeds_arg
from .export import LoadedGenerator
from .latent import seed_noise, truncate

# forget's negatives when the user marks none: typical faces, far from the small seeds people browse
REFERENCE_SEEDS = range(1_000_000, 1_000_064)
K, SCORE = 8, "diff"  # --k's and --score's defaults (None in the parser: see forget_parser)


def forget_parser() -> Parser:
    p = new_parser("forget", "The paper's section 6.1 for faces: find the feature maps of a generator layer "
                   "that draw a feature (from seeds marked as showing it, and optionally not showing it), "
                   "zero them during generation and show before/after for the same seeds. Or drop channels "
                   "by index.", "forget.png")
    p.add_argument("--layer", type=int, default=-1,
                   help="hidden layer: 0 = 4x4 ... -1 = the last (default -1)")
    p.add_argument("--positive", type=seeds_arg, default=None,
                   help="seeds where the feature shows, e.g. 1,5,9")
    p.add_argument("--negative", type=seeds_arg, default=None,
                   help=f"seeds where it does not (default: the {len(REFERENCE_SEEDS)} reference seeds "
                        f"{REFERENCE_SEEDS.start}-{REFERENCE_SEEDS.stop - 1})")
    # --k and --score default to None, so that one given with --drop-channels (which they do not
    # apply to) can be refused; chosen_channels applies their defaults.
    p.add_argument("--k", type=positive_int, default=None,
                   help=f"how many top-scoring channels to drop (default {K})")
    p.add_argument("--score", choices=dissect.SCORES, default=None,
                   help="diff: standardised mean difference (default); logistic: logistic-regression weights")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                   help="score activations inside this box only (fractions of the image; aligned faces put "
                        "e.g. the mouth near 0.3,0.65,0.7,0.9); default: the whole map")
    p.add_argument("--drop-channels", type=seeds_arg, default=None,
                   help="drop these channels instead, e.g. 3,17")
    p.add_argument("--seeds", type=seeds_arg, default=None,
                   help="seeds to show (default: the positives, then the negatives or 8 reference seeds)")
    return p


def chosen_channels(G: LoadedGenerator, args: argparse.Namespace) -> list[int]:
    if args.drop_channels is not None:
        given = {"--positive": args.positive, "--k": args.k, "--score": args.score, "--box": args.box}
        choosing = [flag for flag, value in given.items() if value is not None]
        if choosing:  # they choose the channels that --drop-channels names: give one way, not both
            raise UsageError(f"give either --drop-channels or {', '.join(choosing)} (which choose the "
                             "channels to drop), not both")
        return args.drop_channels
    if args.positive is None:
        raise UsageError("forget needs --positive SEEDS (where the feature shows) or --drop-channels")
    negative = args.negative or [s for s in REFERENCE_SEEDS if s not in args.positive]
    box = dissect.parse_box(args.box) if args.box else None
    feats = [dissect.channel_means(G.net, seed_noise(s, G.nz, G.device), args.layer, box)
             for s in (args.positive, negative)]
    method, k = args.score or SCORE, args.k or K
    score = dissect.score_channels(*feats, method=method)
    channels = dissect.top_channels(score, k)
    print("channel  score   (" + method + ")")
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
                          (f"after: layer {layer}, {len(channels)} of {size} maps dropped",
                           grid_image(after, nrow))]),
                 args.out)
    print(f"dropped layer {layer} channels {','.join(map(str, channels)) or '(none)'}; wrote {args.out}")
    if channels:
        print(f"to repeat: --layer {layer} --drop-channels {','.join(map(str, channels))}")


def features_parser() -> Parser:
    p = new_parser("features", "The feature maps of one generator layer for a seed (several seeds: their "
                   "mean), one tile per channel labelled with its index, all on one brightness scale (black: "
                   "zero, white: the layer's 99th percentile or more), to choose channels for forget "
                   "--drop-channels.", "features.png")
    p.add_argument("--seeds", type=seeds_arg, default=[0],
                   help="the seed (or seeds, averaged) to show (default 0)")
    p.add_argument("--layer", type=int, default=-1,
                   help="hidden layer: 0 = 4x4 ... -1 = the last (default -1)")
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
    save_picture(compose([(f"seed {seeds}", faces),
                          (f"layer {layer}: {c} maps of {h}x{w}; white >= {top:.2f}", tiles)]),
                 args.out)
    strongest = torch.argsort(maps.mean(dim=(1, 2)), descending=True)[:10].tolist()
    print(f"wrote {c} maps of layer {layer} ({h}x{w}) to {args.out}; strongest channels: {strongest}")


def need_eager(G: LoadedGenerator, command: str) -> None:
    if not G.eager:
        raise UsageError(f"{command} needs the generator's layers: use a run directory, checkpoint or "
                         "generator.pth, not an exported file")
