"""How varied a set of samples is, against real images: a cheap check for mode collapse.

FID needs a feature network and thousands of samples; a collapsed generator (a grid of near copies of
a few faces) shows plainly in pixel space. The spread of a set is the mean distance between two of its
images, each average-pooled to 16x16 (so that fine noise does not count as variety); the diversity of
samples is their spread over that of real images: about 1 for samples as varied as the data, near 0
for one face repeated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def spread(images: torch.Tensor) -> float:
    """Mean pairwise L2 distance of N >= 2 images (N x C x H x W, any range), pooled to 16x16."""
    x = images.float()
    if x.shape[-1] > 16:
        x = F.adaptive_avg_pool2d(x, 16)
    x = x.flatten(1)
    n = len(x)
    return (torch.cdist(x, x).sum() / (n * (n - 1))).item()


def diversity(samples: torch.Tensor, reals: torch.Tensor) -> float:
    """spread(samples) / spread(reals), both in the same range (e.g. [-1, 1])."""
    return spread(samples) / spread(reals)
