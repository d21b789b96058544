"""arithmetic: the paper's figure 7, z vector arithmetic on faces, shown with its inputs."""
from __future__ import annotations

import argparse

import torch

from ..plots import compose, grid_image, save_picture
from . import Parser, new_parser, non_negative_float, positive_int, seeds_arg
from .export import LoadedGenerator
from .latent import arithmetic, jitter, seed_noise, truncate, typical_length


def arithmetic_parser() -> Parser:
    p = new_parser("arithmetic", "The paper's figure 7: mean z of the a seeds - mean of b + mean of c "
                   "(e.g. smiling woman - neutral woman + neutral man), shown with its inputs, and the "
                   "result with small noise added. With no --b: (a + c) / 2. Picking seeds from CelebA "
                   "attributes automatically needs an attribute classifier, which fastdcgan does not ship: "
                   "mark them by eye in a grid.", "arithmetic.png")
    p.add_argument("--a", type=seeds_arg, required=True, help="seeds showing concept a (the paper used 3)")
    p.add_argument("--b", type=seeds_arg, default=[], help="seeds showing concept b, subtracted (optional)")
    p.add_argument("--c", type=seeds_arg, required=True, help="seeds showing concept c, added")
    p.add_argument("--n", type=positive_int, default=9,
                   help="result images, the exact one in the middle (default 9)")
    p.add_argument("--noise", type=non_negative_float, default=0.25,
                   help="uniform noise scale around the result (default 0.25)")
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
    parts.append((f"= {formula} (middle: exact)",
                  grid_image(G(truncate(result, args.truncation)), nrow=side)))
    save_picture(compose(parts), args.out)
    print(f"wrote {formula} with its inputs and {args.n} results to {args.out}")
