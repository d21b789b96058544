"""Sample grids, loss curves and D-output histograms: the pictures a GAN user watches."""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from .losses import REPORTED  # noqa: E402


def sample_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """Images in [-1, 1], NCHW, as one CHW grid in [0, 1] (square-ish unless nrow is given)."""
    nrow = nrow or max(1, int(len(images) ** 0.5 + 0.5))
    return make_grid(images.float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))


def write_grid(grid: torch.Tensor, path: str | os.PathLike) -> None:
    """A sample_grid as a PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Images in [-1, 1], NCHW, as one PNG grid (square-ish unless nrow is given)."""
    write_grid(sample_grid(images, nrow), path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl (none if it is not there)."""
    try:
        return parse_metrics(Path(path).read_text().splitlines())
    except FileNotFoundError:
        return []


def parse_metrics(lines: list[str]) -> list[dict]:
    """metrics.jsonl's lines as rows; a line that does not parse (cut short by a kill mid-write) is left
    out."""
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def plot_losses(metrics_path: str | os.PathLike, out: str | os.PathLike, loss: str = "bce") -> None:
    """G and D losses, and mean D(x) and D(G(z)) as train.loss reports them, against the step."""
    rows = [r for r in read_metrics(metrics_path) if "loss_d" in r]  # FID rows share the file
    if not rows:
        return
    step = [r["step"] for r in rows]
    marker = "o" if len(rows) < 20 else None  # a line through one point draws nothing
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.plot(step, [r["loss_d"] for r in rows], label="D", marker=marker)
    top.plot(step, [r["loss_g"] for r in rows], label="G", marker=marker)
    top.set_ylabel("loss")
    top.set_title("Generator and discriminator loss during training")
    top.legend()
    bottom.plot(step, [r["d_real"] for r in rows], label="D(x)", marker=marker)
    bottom.plot(step, [r["d_fake"] for r in rows], label="D(G(z))", marker=marker)
    if loss == "bce":  # probabilities; the other losses report D's scores, which a [0, 1] axis would cut
        bottom.set_ylim(0, 1)
    bottom.set_xlabel("step")
    bottom.set_ylabel(REPORTED[loss])
    bottom.legend()
    _save(fig, out, {"Description": f"y: {REPORTED[loss]}"})  # the PNG's text says what it shows


def plot_fid(metrics_path: str | os.PathLike, out: str | os.PathLike) -> None:
    """FID against the step, from the metrics rows that have one; the best point marked."""
    rows = [r for r in read_metrics(metrics_path) if r.get("fid") is not None]
    if not rows:
        return
    step, fid = [r["step"] for r in rows], [r["fid"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(step, fid, marker="o")
    best = min(range(len(fid)), key=lambda i: fid[i] if fid[i] == fid[i] else float("inf"))
    ax.annotate(f"best {fid[best]:.1f}", (step[best], fid[best]), textcoords="offset points", xytext=(0, 8),
                ha="center")
    ema = " (EMA generator)" if rows[-1].get("fid_ema") else ""
    title = f"FID on {rows[-1].get('fid_n', '?')} samples{ema}, lower is better"  # as the latest score
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("FID")
    _save(fig, out, {"Title": title})  # the PNG's text says what it shows


def plot_d_outputs(hist: torch.Tensor, epoch: int, out: str | os.PathLike,
                   axis: str = "discriminator output (probability of real)", first: int = 0) -> None:
    """The distribution of D(x) on real images and D(G(z)) on fakes (hist: 2 x bins) over epochs
    first..epoch (first = 0 or epoch: that epoch alone)."""
    bins = hist.shape[1]
    edges = torch.linspace(0, 1, bins + 1)
    centers, width = ((edges[1:] + edges[:-1]) / 2).numpy(), 1.0 / bins
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, label in zip(hist, ("D(x), real", "D(G(z)), fake"), strict=True):
        total = float(row.sum()) or 1.0
        ax.bar(centers, (row / total).numpy(), width=width, alpha=0.6, label=label)
    ax.set_xlim(0, 1)
    ax.set_xlabel(axis)
    ax.set_ylabel("fraction of images")
    title = (f"Discriminator outputs, epochs {first}-{epoch}" if 0 < first < epoch
             else f"Discriminator outputs, epoch {epoch}")
    ax.set_title(title)
    ax.legend()
    _save(fig, out, {"Title": title, "Description": f"x: {axis}"})  # the PNG's text says what it shows


def _save(fig, out, metadata: dict | None = None) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100, metadata=metadata)
    plt.close(fig)


# Figures for the generator experiments (fastdcgan.generate's sub-commands). Images are NCHW in
# [-1, 1]; each helper returns or writes 8-bit RGB, converted as save_image does.

PAD = 2
WHITE = (255, 255, 255)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW floats -> uint8 NHWC, rounded as torchvision's save_image rounds."""
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def grid_image(images: torch.Tensor, nrow: int, pad: int = PAD) -> Image.Image:
    """A grid like save_grid's (nrow images per row, pad pixels apart) as a PIL image, on white
    (save_grid's black would show the empty places of a last row that is not full)."""
    grid = make_grid(images.float().cpu(), nrow=nrow, padding=pad, normalize=True, value_range=(-1, 1),
                     pad_value=1.0)
    return Image.fromarray(grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


def save_gif(frames: torch.Tensor, path: str | os.PathLike, fps: float = 12) -> None:
    """An endlessly looping GIF, one frame per image."""
    pics = [Image.fromarray(f.numpy()) for f in to_uint8(frames)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=round(1000 / fps), loop=0,
                 optimize=False, disposal=1)


def save_mp4(frames: torch.Tensor, path: str | os.PathLike, fps: float, ffmpeg: str) -> None:
    """H.264 MP4 by piping raw RGB frames to ffmpeg (yuv420p, so every player shows it)."""
    import subprocess

    raw = to_uint8(frames)
    n, h, w, _ = raw.shape
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(path)]
    done = subprocess.run(cmd, input=raw.numpy().tobytes(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {done.stderr.decode(errors='replace').strip()}")


def labeled_tiles(maps: torch.Tensor, labels: list[str], tile: int, nrow: int) -> Image.Image:
    """Grayscale maps (N, h, w) in [0, 1] as a grid, each under its label, scaled up by a whole factor
    (nearest) to about `tile` pixels so every activation stays one crisp square."""
    n, h, w = maps.shape
    scale = max(1, round(tile / max(h, w)))
    tw, th, label_h = w * scale, h * scale, 11
    rows = (n + nrow - 1) // nrow
    canvas = Image.new("RGB", (nrow * (tw + PAD) + PAD, rows * (th + label_h + PAD) + PAD), WHITE)
    draw = ImageDraw.Draw(canvas)
    for k, (m, label) in enumerate(zip(maps, labels, strict=True)):
        pic = Image.fromarray(m.mul(255).round().clamp(0, 255).to(torch.uint8).numpy(), "L")
        x, y = PAD + (k % nrow) * (tw + PAD), PAD + (k // nrow) * (th + label_h + PAD)
        draw.text((x, y), label, fill=(0, 0, 0))
        canvas.paste(pic.resize((tw, th), Image.NEAREST).convert("RGB"), (x, y + label_h))
    return canvas


def compose(parts: list[tuple[str, Image.Image]], gap: int = 24) -> Image.Image:
    """Pictures side by side, top-aligned, each with a caption above it."""
    caption = 14
    width = sum(p.width for _, p in parts) + gap * (len(parts) + 1)
    height = max(p.height for _, p in parts) + caption + 2 * PAD
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for text, pic in parts:
        draw.text((x, 1), text, fill=(0, 0, 0))
        canvas.paste(pic, (x, caption))
        x += pic.width + gap
    return canvas


def save_picture(picture: Image.Image, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
