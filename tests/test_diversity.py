"""The mode-collapse check's arithmetic: spread is the mean distance between two images of a set,
measured after pooling to 16x16, so pixel-level noise is no variety."""
import pytest
import torch

from fastdcgan.metrics.diversity import diversity, spread


def test_spread_is_the_mean_distance_over_all_pairs():
    # three flat 1x16x16 images at 0, 1 and 3: distances 16 * |a - b| = 16, 48, 32, mean 32
    images = torch.stack([torch.full((1, 16, 16), v) for v in (0.0, 1.0, 3.0)])
    assert spread(images) == pytest.approx(32.0, rel=1e-6)
    assert diversity(images[:2], images) == pytest.approx(16.0 / 32.0, rel=1e-6)


def test_noise_finer_than_the_16x16_pooling_is_no_variety():
    face = torch.linspace(-1, 1, 64).view(1, 1, 64).expand(3, 64, 64)
    checker = (torch.arange(64).view(64, 1) + torch.arange(64).view(1, 64)) % 2 * 2 - 1.0  # +-1, alternating
    noisy = torch.stack([face + 0.3 * k * checker for k in range(-2, 3)])  # five copies, each its own noise
    assert torch.cdist(noisy.flatten(1), noisy.flatten(1)).mean() > 10  # far apart pixel by pixel
    assert spread(noisy) < 1e-5
