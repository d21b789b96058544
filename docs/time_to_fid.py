"""Time to FID on this machine (QUALITY.md): train recipes x seeds, score their checkpoints, tabulate.

    python docs/time_to_fid.py train  --out runs/ttf --data ../shared/data/celeba-2k
    python docs/time_to_fid.py score  --out runs/ttf        # FID of each kept checkpoint, resumable
    python docs/time_to_fid.py report --out runs/ttf        # table (markdown) and docs/time_to_fid_*.png

Training and scoring are apart on purpose. Each run trains alone (nothing else timed on the machine)
and keeps a checkpoint every --every steps; each checkpoint records the run's wall-clock seconds
(start, cache, compile and pauses included). The FID of those checkpoints is computed afterwards with
`python -m fastdcgan.fid` (n samples, noise seed 0, the EMA generator where the recipe has one), so
the clock counts training only, never the measuring, and the scoring can run while the machine is busy
or in a later session. A threshold's time is the first checkpoint at or below it: resolved to --every.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # fastdcgan from this checkout, installed or not
# recipe -> (config file, extra settings, seeds). Same model size (32x32, ngf = ndf = 32) for all.
PAPER = "configs/celeba64.toml"  # the paper's loss, rates and batch 128, shrunk to the CPU model
SPEED = "configs/speedrun-cpu.toml"
# The losses were first compared before the EMA had its warm-up: those runs (nowarmup-*) keep it off, as
# trained, and their BCE baseline is speedrun-nowarmup. speedrun-hinge and -wgan-gp have it, as speedrun.
NO_WARMUP = ["model.ema_warmup=false"]
CPU_MODEL = ["data.image_size=32", "model.ngf=32", "model.ndf=32"]
RECIPES = {
    "paper": (PAPER, CPU_MODEL, (0, 1, 2)),
    # the paper's batch 128 with the speedrun's EMA: the batch's share of the speedrun's gain apart from
    # the EMA's (configs/speedrun.toml keeps batch 128 on the GPU, for throughput)
    "paper-ema": (PAPER, [*CPU_MODEL, "model.ema=0.999"], (0, 1, 2)),
    "speedrun": (SPEED, [], (0, 1, 2)),  # BCE, EMA 0.999 with its warm-up, batch 64
    "speedrun-nowarmup": (SPEED, NO_WARMUP, (0, 1, 2)),
    "nowarmup-lsgan": (SPEED, ["train.loss=lsgan", *NO_WARMUP], (0, 1, 2)),  # the first candidate
    "nowarmup-hinge": (SPEED, ["train.loss=hinge", *NO_WARMUP], (0,)),
    "nowarmup-wgan-gp": (SPEED, ["train.loss=wgan-gp", *NO_WARMUP], (0,)),
    "speedrun-hinge": (SPEED, ["train.loss=hinge"], (0, 1, 2)),
    "speedrun-wgan-gp": (SPEED, ["train.loss=wgan-gp"], (0,)),
}
THRESHOLDS = (250.0, 200.0, 150.0, 120.0, 100.0)


def runs(out: Path, only: list[str]) -> list[tuple[str, int, Path]]:
    return [(name, seed, out / f"{name}-s{seed}") for name, (_, _, seeds) in RECIPES.items()
            if not only or name in only for seed in seeds]


def train(args) -> None:
    for name, seed, run in runs(args.out, args.only):
        if (run / "STATUS").exists() and (run / "STATUS").read_text().startswith("finished"):
            print(f"{run.name}: finished before, kept", flush=True)
            continue
        cfg, extra, _ = RECIPES[name]
        cmd = [sys.executable, "-m", "fastdcgan.train", "--config", cfg, *extra, f"data.root={args.data}",
               f"train.seed={seed}", f"train.run_dir={run}", "train.resume=never", "train.epochs=100000",
               f"train.max_steps={args.steps}", f"ckpt.every={args.every}", "ckpt.keep=1000", "fid.every=0",
               "device=cpu"]
        print(f"{run.name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        args.out.mkdir(parents=True, exist_ok=True)
        with open(f"{run}.log", "w") as log:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        print(f"{run.name}: exit {rc} in {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            sys.exit(f"{run.name} failed: see {run}.log")
        kept = {s for s in range(args.every, args.steps + 1, args.every)}
        for f in (run / "checkpoints").glob("step_*.pt"):  # the epoch ends' checkpoints are not scored
            if int(f.stem.split("_")[1]) not in kept:
                f.unlink()


@functools.cache  # score and report ask for each checkpoint more than once; each read is megabytes
def checkpoint_meta(path: Path) -> dict:
    from fastdcgan import checkpoint
    s = checkpoint.load(path)
    c = s["config"]
    return {"step": s["step"], "wall_s": s["wall_s"], "ema": c["model"]["ema"] > 0,
            "images": s["step"] * c["train"]["batch_size"] * s.get("world", 1)}


def scored(run: Path, n: int, ema: bool | None = None) -> dict[int, dict]:
    """step -> fid.jsonl row at n samples; of the EMA generator where the run has one, unless ema=False
    (the raw G of the same checkpoints: what EMA changes)."""
    rows = ([json.loads(x) for x in (run / "fid.jsonl").read_text().splitlines()]
            if (run / "fid.jsonl").exists() else [])
    if ema is None:
        ema = (run / "generator_ema.pth").exists()
    return {r["step"]: r for r in rows if r["n"] == n and r["ema"] == ema}


def score(args) -> None:
    """Breadth first: every run's checkpoint at the first step asked, then the next step, so that an
    interrupted scoring (it is resumable) leaves every run with a curve of the same points."""
    weights = os.environ.get("FASTDCGAN_FID_WEIGHTS", "")
    todo = [(run, ck) for _, _, run in runs(args.out, args.only)
            for ck in (run / "checkpoints").glob("step_*.pt")]
    if args.raw:  # the raw G of the runs that have an EMA generator
        todo = [(run, ck) for run, ck in todo if checkpoint_meta(ck)["ema"]]
    order = args.steps_to_score or sorted({int(ck.stem.split("_")[1]) for _, ck in todo})
    for step in order:
        for run, ck in todo:
            ema = checkpoint_meta(ck)["ema"] and not args.raw
            if int(ck.stem.split("_")[1]) != step or step in scored(run, args.n, ema):
                continue
            cmd = [sys.executable, "-m", "fastdcgan.fid", "--checkpoint", str(ck), "--n", str(args.n),
                   "--device", "cpu", *(["--ema"] if ema else []),
                   *(["--weights", weights] if weights else [])]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{ck}: {out.stderr.strip().splitlines()[-1]}")
            print(f"{run.name} step {step}: FID {float(out.stdout.split()[-1]):.1f}", flush=True)


def curves(out: Path, n: int, ema: bool | None = None) -> dict[str, dict[int, list[dict]]]:
    """recipe -> seed -> rows (step, images, wall_s, fid) in step order, for the scored checkpoints: of
    the generator each run samples with, or with ema=False of G itself (only runs that have an EMA)."""
    found: dict[str, dict[int, list[dict]]] = {}
    for name, seed, run in runs(out, []):
        rows = []
        for step, r in sorted(scored(run, n, ema).items()):
            ck = run / "checkpoints" / f"step_{step:08d}.pt"
            if ck.exists():
                rows.append(checkpoint_meta(ck) | {"fid": r["fid"]})
        if rows and (ema is None or rows[0]["ema"]):
            found.setdefault(name, {})[seed] = rows
    return found


def time_to(rows: list[dict], threshold: float) -> dict | None:
    return next((r for r in rows if r["fid"] <= threshold), None)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1 or min(values) == max(values):
        return f"{values[0]:.0f}"
    return f"{statistics.mean(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def report(args) -> None:
    found, raw = curves(args.out, args.n), curves(args.out, args.n, ema=False)
    print("| recipe | seeds | steps scored | " + " | ".join(f"FID <= {t:g}" for t in THRESHOLDS)
          + " | last FID |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in THRESHOLDS) + " | --- |")
    for name, seeds in found.items():
        cells = []
        for t in THRESHOLDS:
            hits = [time_to(rows, t) for rows in seeds.values()]
            got = [h for h in hits if h]
            cell = "-" if not got else (f"{spread([h['wall_s'] for h in got])} s, "
                                        f"{spread([h['images'] / 1000 for h in got])}k img")
            if got and len(got) < len(hits):
                cell += f", {len(got)} of {len(hits)} seeds"
            cells.append(cell)
        last = spread([rows[-1]["fid"] for rows in seeds.values()])
        steps = sorted({r["step"] for rows in seeds.values() for r in rows})
        print(f"| {name} | {len(seeds)} | {', '.join(map(str, steps))} | " + " | ".join(cells)
              + f" | {last} |")
    print("\n| recipe | seed | step | FID of the EMA generator | of G without EMA |\n"
          "| --- | --- | --- | --- | --- |")
    for recipe, seeds in raw.items():
        for seed, rows in seeds.items():
            ema = {r["step"]: r["fid"] for r in found[recipe][seed]}
            for r in rows:
                print(f"| {recipe} | {seed} | {r['step']} | {ema.get(r['step'], float('nan')):.1f} | "
                      f"{r['fid']:.1f} |")
    plot(found, args.plots)


def plot(found: dict, prefix: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # one per recipe, in RECIPES order; strict=False: the palette may hold more colours than there are recipes
    colours = dict(zip(RECIPES, plt.get_cmap("tab10").colors, strict=False))
    for x, label in (("wall_s", "wall-clock seconds on 2 CPU cores (training only)"),
                     ("images", "images seen")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, seeds in found.items():
            for i, rows in enumerate(seeds.values()):
                ax.plot([r[x] for r in rows], [r["fid"] for r in rows], marker="o", ms=3, alpha=0.8,
                        color=colours[name], label=name if i == 0 else None)
        ax.set_xlabel(label)
        ax.set_ylabel("FID (1,000 samples, 32x32)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(f"{prefix}_{x.split('_')[0]}.png")
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "score", "report"))
    p.add_argument("--out", type=Path, default=Path("runs/ttf"))
    p.add_argument("--data", default="../shared/data/celeba-2k")
    p.add_argument("--only", nargs="*", default=[], choices=list(RECIPES), help="recipes (default: all)")
    p.add_argument("--steps", type=int, default=3000, help="training steps per run")
    p.add_argument("--every", type=int, default=500, help="steps between the checkpoints kept for scoring")
    p.add_argument("--n", type=int, default=1000, help="generated images per FID")
    p.add_argument("--steps-to-score", type=int, nargs="*", default=[],
                   help="the steps to score, in this order (default: all, in step order)")
    p.add_argument("--raw", action="store_true", help="score: G, not its EMA, of the runs that have one")
    p.add_argument("--plots", type=Path, default=Path("docs/time_to_fid"), help="PNG prefix for report")
    args = p.parse_args()
    args.out, args.data = args.out.resolve(), str(Path(args.data).resolve())
    {"train": train, "score": score, "report": report}[args.what](args)


if __name__ == "__main__":
    main()
