"""Seeds, truncation, slerp and the paper's z arithmetic (fastdcgan.generate.latent)."""
import math

import pytest
import torch

from fastdcgan.generate.latent import (MAX_SEEDS, arithmetic, interpolation_path, jitter, lerp, parse_seeds,
                                       seed_noise, slerp, truncate, typical_length)
from fastdcgan.model import fixed_noise


def test_seed_lists_and_ranges():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0") == parse_seeds("0-0") == [0]  # seed 0 is a seed
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("7, 1,4-6") == [7, 1, 4, 5, 6]
    for bad in ("", "a", "5-3", "1,,2", "1-2-3", "-1", "0-99999999"):
        with pytest.raises(ValueError, match="bad seed list"):
            parse_seeds(bad)


@pytest.mark.parametrize("text, reason", [
    ("1,x", "'x' is not a seed"), ("4-2", "range '4-2' runs backwards"), ("0--1", "non-negative"),
    (f"0-{MAX_SEEDS}", f"more than {MAX_SEEDS} seeds"), (f"7,0-{MAX_SEEDS - 1}", f"more than {MAX_SEEDS}")])
def test_a_bad_seed_list_is_refused_with_its_reason(text, reason):
    with pytest.raises(ValueError, match=f"bad seed list {text!r}: .*{reason}"):
        parse_seeds(text)


def test_the_seed_limit_is_inclusive_and_no_seeds_is_an_empty_batch():
    assert len(parse_seeds(f"0-{MAX_SEEDS - 1}")) == len(parse_seeds(f"7,1-{MAX_SEEDS - 1}")) == MAX_SEEDS
    assert seed_noise([], 16).shape == (0, 16, 1, 1)


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
    assert torch.equal(truncate(z, None), z) and torch.equal(truncate(z, 0), z)
    with pytest.raises(ValueError, match="positive"):
        truncate(z, -0.5)


def test_truncation_and_typical_length_act_on_each_z_of_any_shape():
    lengths = torch.tensor([[0.1], [1], [2], [3], [4], [5]])
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(1)) * lengths
    for shape in ((6, 16), (6, 16, 1, 1)):
        zs = z.view(shape)
        assert torch.allclose(typical_length(zs).flatten(1).norm(dim=1), torch.full((6,), 4.0))
        t = truncate(zs, 0.5).flatten(1).norm(dim=1)  # limit 0.5 * 4 = 2: the three longest are cut
        assert torch.allclose(t, torch.minimum(z.norm(dim=1), torch.tensor(2.0)))
    # short z (norms under 1, as a strong truncation leaves them) scale along: no unit floor anywhere
    short = seed_noise([1, 2], 16) * 0.05
    assert torch.allclose(truncate(short, 0.02), truncate(short * 20, 0.4) / 20)
    assert torch.allclose(slerp(short[0], short[1], 0.3), slerp(20 * short[0], 20 * short[1], 0.3) / 20)


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


def test_slerp_keeps_the_norm_at_any_angle_and_is_lerp_for_parallel_z():
    z0 = seed_noise([1], 64).flatten()
    other = seed_noise([2], 64).flatten()
    other = other - (other @ z0) / (z0 @ z0) * z0  # orthogonal to z0
    for degrees in (10, 45, 90, 170):
        a = math.radians(degrees)
        z1 = math.cos(a) * z0 + math.sin(a) * other * z0.norm() / other.norm()
        mid = slerp(z0, z1, 0.5)
        assert math.isclose(float(mid.norm()), float(z0.norm()), rel_tol=1e-4), degrees
        assert math.isclose(float(torch.nn.functional.cosine_similarity(mid, z0, dim=0)), math.cos(a / 2),
                            abs_tol=1e-4), degrees
    for k in range(20):  # parallel: arccos of a cosine that rounds above 1 must not give NaN
        z = seed_noise([k], 64).flatten()
        assert torch.allclose(slerp(z, 3 * z, 0.25), lerp(z, 3 * z, 0.25)), k


def test_interpolation_path_passes_through_every_seed():
    z = seed_noise([1, 2, 3], 16)
    path = interpolation_path(z, 5)
    assert len(path) == 11
    for k in range(3):
        assert torch.allclose(path[5 * k], z[k], atol=1e-6)
    assert torch.allclose(path[7], slerp(z[1], z[2], 0.4))  # the frames between are evenly spaced in t
    linear = interpolation_path(z, 4, "linear")
    assert torch.allclose(linear[1], 0.75 * z[0] + 0.25 * z[1])
    assert torch.equal(interpolation_path(z, 1), z)  # one step a segment: the seeds themselves
    with pytest.raises(ValueError, match="frames must be at least 1"):
        interpolation_path(z, 0)
    with pytest.raises(ValueError, match="at least two z"):
        interpolation_path(z[:1], 4)


def test_jitter_is_z_then_seeded_uniform_copies_within_the_scale():
    z = seed_noise([3], 16)
    j = jitter(z, 8, 0.25, seed=1)
    assert j.shape == (8, 16, 1, 1) and torch.equal(j[0], z[0])
    noise = j[1:] - z
    assert noise.abs().max() <= 0.25 and noise.min() < -0.2 and noise.max() > 0.2  # both signs, whole range
    assert len({tuple(n.flatten().tolist()) for n in noise}) == 7  # each copy its own noise
    assert torch.equal(jitter(z, 8, 0.25, seed=1), j) and not torch.equal(jitter(z, 8, 0.25, seed=2), j)


def test_arithmetic_semantics():
    a, b, c = seed_noise([1, 2], 16), seed_noise([3, 4, 5], 16), seed_noise([6], 16)
    assert torch.allclose(arithmetic(a, b, c), a.mean(0) - b.mean(0) + c.mean(0))
    assert arithmetic(a, b, c).shape == arithmetic(a, b[:0], c).shape == (1, 16, 1, 1)  # one z, as G takes it
    assert torch.allclose(arithmetic(a, b[:0], a), a.mean(0, keepdim=True))  # a = c, b empty: a
    assert torch.allclose(arithmetic(a, b[:0], c), (a.mean(0) + c.mean(0)) / 2)
    for empty in ((a[:0], b, c), (a, b, c[:0])):
        with pytest.raises(ValueError, match="at least one seed for a and for c"):
            arithmetic(*empty)
    m = typical_length(a.mean(0, keepdim=True))
    assert math.isclose(float(m.norm()), 4.0, rel_tol=1e-5)  # sqrt(16)
