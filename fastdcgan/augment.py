"""DiffAugment (Zhao et al. 2020): differentiable augmentations of every image D sees, real and fake.

The same policy is applied to the reals and the fakes of the D phase and to the fakes of the G
phase; each call draws its own random parameters per image, as the paper does. G learns through
the augmentation (every operation is differentiable), so it is not taught to draw augmented images.
The parameters come from the global torch generator of the images' device (the CPU's or the CUDA
one), which checkpoints save: a run is reproducible from its seed and resumes exactly; a CUDA graph
captures the draws like the step's noise. The operations, as in the paper's code:

- color: brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5), per image;
- translation: a shift of up to 1/8 of the image side in each direction, zeros where nothing moved in;
- cutout: a zeroed square of half the image side, centred anywhere in the image (clipped at its edges).

They are applied in that order, whatever the order of the names in data.augment.
"""
from __future__ import annotations

import torch

AUGMENTATIONS = ("color", "translation", "cutout")  # data.augment's names, in the order they are applied


def parse(policy: str) -> tuple[str, ...]:
    """'translation,color' -> ('color', 'translation'): the names in the order they are applied."""
    names = {p.strip() for p in policy.split(",") if p.strip()}
    unknown = names - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(sorted(unknown))} "
                         f"(choose from {', '.join(AUGMENTATIONS)})")
    return tuple(p for p in AUGMENTATIONS if p in names)


def augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """x (N, C, H, W) in [-1, 1] with each augmentation of `policy` (from parse) applied."""
    if "color" in policy:
        x = color(x)
    if "translation" in policy:
        x = translation(x)
    if "cutout" in policy:
        x = cutout(x)
    return x


def color(x: torch.Tensor) -> torch.Tensor:
    brightness, saturation, contrast = torch.rand(3, x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)
    x = x + (brightness - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (saturation * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (contrast + 0.5) + mean


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Image i moved down by dy[i] and right by dx[i] pixels (negative: up, left), zeros where it left."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy.view(n, 1, 1)  # where each pixel comes from
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx.view(n, 1, 1)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    i = torch.arange(n, device=x.device).view(n, 1, 1)
    moved = x[i, :, rows.clamp(0, h - 1), cols.clamp(0, w - 1)]  # (N, H, W, C): indexed dimensions first
    return (moved * inside.unsqueeze(-1)).permute(0, 3, 1, 2)


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n,), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n,), device=x.device)
    return translate(x, dy, dx)


def cut_out(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Image i with the rectangle of `size` (height, width) whose top-left pixel is (top[i], left[i])
    set to zero; the part of it outside the image is ignored."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - top.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - left.view(n, 1, 1)
    hole = (rows >= 0) & (rows < size[0]) & (cols >= 0) & (cols < size[1])
    return x * ~hole.unsqueeze(1)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # the paper's draw: the square's centre anywhere in the image (one more place for an even side)
    top = torch.randint(0, h + 1 - sh % 2, (n,), device=x.device) - sh // 2
    left = torch.randint(0, w + 1 - sw % 2, (n,), device=x.device) - sw // 2
    return cut_out(x, top, left, (sh, sw))
