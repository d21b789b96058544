"""python -m fastdcgan.generate: each sub-command's parser and run, the device, the generator, exit codes.

The usage and the parsing the sub-commands share are in __init__.py; each sub-command is in the
module named for it (features with forget, export with the export tools).
"""
from __future__ import annotations

import sys

import torch

from ..dist import parse_device
from . import UsageError
from .arithmetic import arithmetic_parser, run_arithmetic
from .export import GeneratorLoadError, export_parser, load_generator, run_export
from .forget import features_parser, forget_parser, run_features, run_forget
from .grid import grid_parser, run_grid
from .interpolate import interpolate_parser, run_interpolate


COMMANDS = {
    "grid": (grid_parser, run_grid),
    "interpolate": (interpolate_parser, run_interpolate),
    "arithmetic": (arithmetic_parser, run_arithmetic),
    "forget": (forget_parser, run_forget),
    "features": (features_parser, run_features),
    "export": (export_parser, run_export),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "grid"  # no sub-command: the plain form
    build, run = COMMANDS[command]
    args = build().parse_args(argv)
    try:
        device = parse_device(args.device, "--device")
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
