"""Seeds, truncation, slerp and the paper's z arithmetic (fastdcgan.generate.latent)."""
import math

import pytest
import torch

from fastdcgan.generate.latent import (arithmetic, interpolation_path, lerp, parse_seeds, seed_noise, slerp,
                                       truncate, typical_length)
from fastdcgan.model import fixed_noise



def test_seed_lists_and_ranges():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("7, 1,4-6") == [7, 1, 4, 5, 6]
    for bad in ("", "a", "5-3", "1,,2", "1-2-3", "-1", "0-99999999"):
        with pytest.raises(ValueError, match="bad seed list"):
            parse_seeds(bad)


def test_seed_vector_is_the_same_everywhere():
    nz = 16
    alone = seed_noise([5], nz)[0]
    assert torch.equal(seed_noise([3, 5, 9], nz)[1], alone)
    assert torch.equal(fixed_noise(1, nz, 5)[0], alone)  # the plain form's --n 1 --seed 5
    assert torch.equal(interpolation_path(seed_noise([5, 9], nz), 4)[0], alone)


def test_truncation_clips_norms_and_keeps_directions():
    nz = 64
    z = torch.randn(200, nz, 1, 1, generator=torch.Generator().manual_seed(0))
    t = truncate(z, 0.9)
    norms, limit = t.flatten(1).norm(dim=1), 0.9 * math.sqrt(nz)
    assert norms.max() <= limit + 1e-4
    short = z.flatten(1).norm(dim=1) <= limit
    assert 0 < short.sum() < len(z) and torch.equal(t[short], z[short])
    cos = torch.nn.functional.cosine_similarity(t.flatten(1), z.flatten(1))
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    assert torch.equal(truncate(z, None), z)


def test_slerp_endpoints_and_norms():
    nz = 100
    z0, z1 = seed_noise([1, 2], nz).flatten(1)
    z1 = z1 * z0.norm() / z1.norm()  # equal norms: slerp's path stays on the sphere
    assert (torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-5)
            and torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-5))
    ts = torch.linspace(0, 1, 11)
    slerp_norms = torch.stack([slerp(z0, z1, t).norm() for t in ts])
    lerp_norms = torch.stack([lerp(z0, z1, t).norm() for t in ts])
    assert torch.allclose(slerp_norms, z0.norm().expand(11), rtol=1e-5)
    assert lerp_norms[5] < 0.85 * z0.norm()  # nearly orthogonal z: the straight line sags toward 0
    # equal angular steps: consecutive frames are equally far apart
    steps = torch.stack([(slerp(z0, z1, a) - slerp(z0, z1, b)).norm()
                         for a, b in zip(ts[:-1], ts[1:], strict=True)])
    assert torch.allclose(steps, steps[0].expand(10), rtol=1e-4)


def test_interpolation_path_passes_through_every_seed():
    z = seed_noise([1, 2, 3], 16)
    path = interpolation_path(z, 5)
    assert len(path) == 11
    for k in range(3):
        assert torch.allclose(path[5 * k], z[k], atol=1e-6)


def test_arithmetic_semantics():
    a, b, c = seed_noise([1, 2], 16), seed_noise([3, 4, 5], 16), seed_noise([6], 16)
    assert torch.allclose(arithmetic(a, b, c), a.mean(0) - b.mean(0) + c.mean(0))
    assert torch.allclose(arithmetic(a, b[:0], a), a.mean(0, keepdim=True))  # a = c, b empty: a
    assert torch.allclose(arithmetic(a, b[:0], c), (a.mean(0) + c.mean(0)) / 2)
    with pytest.raises(ValueError):
        arithmetic(a[:0], b, c)
    m = typical_length(a.mean(0, keepdim=True))
    assert math.isclose(float(m.norm()), 4.0, rel_tol=1e-5)  # sqrt(16)
