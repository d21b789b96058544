"""FID curves of the quality runs (plain vs fast path, several seeds) into one PNG, and a table.

    python docs/plot_quality.py RUNS_DIR docs/quality_fid.png

RUNS_DIR holds run directories named PATH-sSEED (plain-s0, fast-s0, ...), as docs/quality_cpu.sh
makes them; each run's metrics.jsonl has the FID rows the trainer logged.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fid_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "fid" in r]


def main(runs_dir: str, out: str) -> None:
    curves = defaultdict(dict)  # path -> seed -> [(step, fid)]
    for run in sorted(Path(runs_dir).glob("*-s[0-9]*")):
        if run.is_dir() and (run / "metrics.jsonl").exists():
            path, seed = run.name.rsplit("-s", 1)
            curves[path][int(seed)] = [(r["step"], r["fid"]) for r in fid_rows(run)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {"plain": "tab:blue", "fast": "tab:orange"}
    for path, seeds in sorted(curves.items()):
        for seed, pts in sorted(seeds.items()):
            ax.plot(*zip(*pts, strict=True), marker="o", color=colors.get(path), alpha=0.8,
                    label=f"{path}" if seed == min(seeds) else None)
    n = next(iter(fid_rows(next(p for p in Path(runs_dir).glob("*-s[0-9]*")
                                if (p / "metrics.jsonl").exists()))))["fid_n"]
    ax.set_title(f"FID (n={n}, lower is better) during training, one line per seed")
    ax.set_xlabel("step")
    ax.set_ylabel("FID")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    # the table: per path and step, mean and spread over seeds
    print("| path | step | FID per seed | mean | std | min-max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path, seeds in sorted(curves.items(), reverse=True):
        steps = sorted({s for pts in seeds.values() for s, _ in pts})
        for step in steps:
            vals = [dict(pts)[step] for _, pts in sorted(seeds.items()) if step in dict(pts)]
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            print(f"| {path} | {step} | {', '.join(f'{v:.1f}' for v in vals)} | "
                  f"{statistics.mean(vals):.1f} | {sd:.1f} | {min(vals):.1f}-{max(vals):.1f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
