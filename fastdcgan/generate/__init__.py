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
Exit code 2: a usage error, an unloadable checkpoint or an export that does not match its original, with
one line saying which.
"""  # noqa: E501 (--help prints this docstring as laid out)
# The package: cli.py reads the command line and runs one sub-command, each in the module named for
# it (grid.py, interpolate.py, arithmetic.py, forget.py: forget and features, export.py); latent.py,
# dissect.py and export.py are the generator tools they run on. Here: the usage above (the plain
# form's --help, grid's) and the parsing every sub-command shares.
from __future__ import annotations

import argparse
import math
import sys
import textwrap

from ..config import UsageError  # noqa: F401 (the sub-commands' error: one line, exit 2)
from .latent import parse_seeds

USAGE = __doc__


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


def _number(name: str, kind: type, low: float, words: str, strict: bool = False):
    """An argparse type: a finite `kind` at least `low` (above it when strict), else "expected {words}"."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value
    parse.__name__ = name  # what a flag's type is called (tests/test_every_flag.py reads it)
    return parse


positive_float = _number("positive_float", float, 0, "a finite positive number", strict=True)
positive_int = _number("positive_int", int, 1, "a whole number >= 1")
non_negative_int = _number("non_negative_int", int, 0, "a whole number >= 0")
non_negative_float = _number("non_negative_float", float, 0, "a finite number >= 0")


def new_parser(command: str, summary: str, out: str, sampling: bool = True) -> Parser:
    """A sub-command's parser with the flags every sub-command shares."""
    prog = "python -m fastdcgan.generate" + ("" if command == "grid" else f" {command}")
    # grid's is the laid-out module doc
    description = summary if command == "grid" else textwrap.fill(summary, 100)
    p = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="run directory, checkpoint file, generator.pth or exported .pt")
    p.add_argument("--out", default=out, help=f"output path (default {out})")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA generator weights (G_ema)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    if sampling:
        p.add_argument("--truncation", type=positive_float, default=None, metavar="T",
                       help="clip each z's norm to T * sqrt(nz) (typical norm: T=1); default: no clipping")
    return p
