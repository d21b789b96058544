"""Sample grids, loss curves and D-output histograms: the pictures a GAN user watches."""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import save_image  # noqa: E402


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Images in [-1, 1], NCHW, as one PNG grid (square-ish unless nrow is given)."""
    nrow = nrow or max(1, int(len(images) ** 0.5 + 0.5))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().cpu(), path, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def plot_losses(metrics_path: str | os.PathLike, out: str | os.PathLike) -> None:
    """G and D losses, and mean D(x) and D(G(z)), against the step."""
    rows = [r for r in read_metrics(metrics_path) if "loss_d" in r]  # FID rows share the file
    if not rows:
        return
    step = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.plot(step, [r["loss_d"] for r in rows], label="D")
    top.plot(step, [r["loss_g"] for r in rows], label="G")
    top.set_ylabel("loss")
    top.set_title("Generator and discriminator loss during training")
    top.legend()
    bottom.plot(step, [r["d_real"] for r in rows], label="D(x)")
    bottom.plot(step, [r["d_fake"] for r in rows], label="D(G(z))")
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("step")
    bottom.set_ylabel("mean D output")
    bottom.legend()
    _save(fig, out)


def plot_fid(metrics_path: str | os.PathLike, out: str | os.PathLike) -> None:
    """FID against the step, from the metrics rows that have one; the best point marked."""
    rows = [r for r in read_metrics(metrics_path) if r.get("fid") is not None]
    if not rows:
        return
    step, fid = [r["step"] for r in rows], [r["fid"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(step, fid, marker="o")
    best = min(range(len(fid)), key=lambda i: fid[i] if fid[i] == fid[i] else float("inf"))
    ax.annotate(f"best {fid[best]:.1f}", (step[best], fid[best]), textcoords="offset points", xytext=(0, 8), ha="center")
    ema = " (EMA generator)" if rows[-1].get("fid_ema") else ""
    ax.set_title(f"FID on {rows[-1].get('fid_n', '?')} samples{ema}, lower is better")
    ax.set_xlabel("step")
    ax.set_ylabel("FID")
    _save(fig, out)


def plot_d_outputs(hist: torch.Tensor, epoch: int, out: str | os.PathLike) -> None:
    """The epoch's distribution of D(x) on real images and D(G(z)) on fakes (hist: 2 x bins)."""
    bins = hist.shape[1]
    edges = torch.linspace(0, 1, bins + 1)
    centers, width = ((edges[1:] + edges[:-1]) / 2).numpy(), 1.0 / bins
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, label in zip(hist, ("D(x), real", "D(G(z)), fake")):
        total = float(row.sum()) or 1.0
        ax.bar(centers, (row / total).numpy(), width=width, alpha=0.6, label=label)
    ax.set_xlim(0, 1)
    ax.set_xlabel("discriminator output (probability of real)")
    ax.set_ylabel("fraction of images")
    ax.set_title(f"Discriminator outputs, epoch {epoch}")
    ax.legend()
    _save(fig, out)


def _save(fig, out) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
