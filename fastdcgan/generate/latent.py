"""The latent space z: seeds, truncation, interpolation and the paper's vector arithmetic.

Seed convention, used by every sub-command of `python -m fastdcgan.generate` and by
`LoadedGenerator.sample_seeds`: the z of seed s is

    torch.randn(nz, generator=torch.Generator().manual_seed(s))

so seed 5 is the same face in a grid, an interpolation, an arithmetic panel or a forget grid. It is
also the first vector of `fixed_noise(n, nz, s)`, the plain form's noise (`--n N --seed s`), which
draws all n vectors from the one seed s.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MAX_SEEDS = 100_000  # a typo like 0-99999999 should fail fast, not fill memory


def parse_seeds(text: str) -> list[int]:
    """'0-63' -> [0..63]; '1,5,9' -> [1, 5, 9]; mixed '1,4-6' -> [1, 4, 5, 6]. Order kept, ranges
    inclusive."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise ValueError(f"bad seed list {text!r}: {part!r} is not a seed (N) or range (N-M); "
                             "use e.g. 0-63 or 1,5,9") from None
        if first < 0 or last < 0:
            raise ValueError(f"bad seed list {text!r}: seeds are non-negative integers")
        if last < first:
            raise ValueError(f"bad seed list {text!r}: range {part!r} runs backwards")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ValueError(f"bad seed list {text!r}: more than {MAX_SEEDS} seeds")
        seeds.extend(range(first, last + 1))
    return seeds


def seed_noise(seeds: Sequence[int], nz: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z for each seed by the seed convention above, shape (len(seeds), nz, 1, 1)."""
    if not seeds:
        return torch.empty(0, nz, 1, 1, device=device)
    z = torch.stack([torch.randn(nz, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return z.view(len(seeds), nz, 1, 1).to(device)


def truncate(z: torch.Tensor, truncation: float | None) -> torch.Tensor:
    """Clip each z's norm to truncation * sqrt(nz); the direction is kept.

    sqrt(nz) is the typical norm of a standard normal z, so truncation=1 trims only the draws longer
    than typical (about half), and 0.5 sets every z to half the typical length: less variety, fewer
    broken faces. None or 0 leaves z as it is.
    """
    if not truncation:
        return z
    if truncation < 0:
        raise ValueError(f"truncation must be positive, got {truncation}")
    flat = z.flatten(1)
    limit = truncation * math.sqrt(flat.shape[1])
    scale = (limit / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return z * scale.view(-1, *([1] * (z.dim() - 1)))


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    return z0 + (z1 - z0) * t


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation (Shoemake; White 2016 for GANs): along the great circle from z0 to z1.

    Straight lines between Gaussian z pass near the origin, where z almost never lies (the middle of
    a lerp between two typical z is about 0.71 times as long), so faces there look washed out;
    slerp keeps the norm when the endpoints share it. Falls back to lerp for nearly parallel z.
    """
    a, b = z0.flatten().double(), z1.flatten().double()
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return lerp(z0, z1, t)
    t = torch.as_tensor(t, dtype=torch.float64)
    w0 = torch.sin((1 - t) * omega) / torch.sin(omega)
    w1 = torch.sin(t * omega) / torch.sin(omega)
    return (w0 * z0.double() + w1 * z1.double()).to(z0.dtype)


def interpolation_path(z: torch.Tensor, frames: int, method: str = "slerp") -> torch.Tensor:
    """Walk through the z in order, `frames` steps per segment, ending on the last z.

    Returns ((len(z) - 1) * frames + 1, *z.shape[1:]): frame k * frames is exactly z[k].
    """
    if len(z) < 2:
        raise ValueError("interpolation needs at least two z")
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    step = {"slerp": slerp, "linear": lerp}[method]
    out = []
    for z0, z1 in zip(z[:-1], z[1:], strict=True):
        out += [z0] + [step(z0, z1, i / frames) for i in range(1, frames)]
    out.append(z[-1])
    return torch.stack(out)


def concept_mean(z: torch.Tensor) -> torch.Tensor:
    """The paper's concept vector: the mean z of a few samples that show the concept (they used 3)."""
    return z.mean(0, keepdim=True)


def typical_length(z: torch.Tensor) -> torch.Tensor:
    """Each z rescaled to norm sqrt(nz), the typical length of a standard normal z.

    A mean of k z is about 1/sqrt(k) as long as one z, and the generator draws washed-out faces
    from such short z; to show what a concept mean looks like we keep its direction, not its length.
    """
    flat = z.flatten(1)
    scale = math.sqrt(flat.shape[1]) / flat.norm(dim=1).clamp_min(1e-12)
    return z * scale.view(-1, *([1] * (z.dim() - 1)))


def arithmetic(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """mean(a) - mean(b) + mean(c), the paper's figure 7 (smiling woman - neutral woman + neutral man).

    Its weights sum to one (1 - 1 + 1), so the result is an affine combination of z and keeps their
    scale. With b empty we keep that property and return the midpoint (mean(a) + mean(c)) / 2 rather
    than mean(a) + mean(c), which would be twice as long as a z; so a = c with b empty returns a.
    """
    if len(a) == 0 or len(c) == 0:
        raise ValueError("arithmetic needs at least one seed for a and for c")
    if len(b) == 0:
        return (concept_mean(a) + concept_mean(c)) / 2
    return concept_mean(a) - concept_mean(b) + concept_mean(c)


def jitter(z: torch.Tensor, n: int, scale: float, seed: int = 0) -> torch.Tensor:
    """z followed by n - 1 copies with uniform noise in [-scale, scale] (the paper used 0.25 and 8 copies)."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand((n - 1, *z.shape[1:]), generator=g) * 2 - 1) * scale
    return torch.cat([z, z + noise.to(z.device)])
