"""Frechet Inception Distance: feature statistics, their on-disk cache, and the distance.

    extractor = extractors.load(cfg.fid.weights, device)
    real, cached = real_stats(files, image_size, extractor)        # computed once per dataset, then cached
    score = frechet_distance(real, generator_stats(G, 10_000, extractor))

Statistics are kept as sufficient sums (n, sum of features, sum of outer products, float64 on the
device), so shards add up: under DDP every rank runs its share of the images and one all_reduce
of the sums gives every rank the statistics of the whole set.

Real images go through the training input's plain decode + Resize + CenterCrop at data.image_size
(uint8), generated ones are quantised to uint8 as a PNG would store them (no file written); from
uint8 on both take the same path: the extractor's resize to 299 (bilinear) and its network.
Real statistics are cached under cache_dir()/fid/, keyed by the file list (paths, sizes, mtimes),
the image size and the extractor (its file's content hash), so any change recomputes them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

from .. import checkpoint
from ..data.folder import cache_dir
from .extractors import Extractor

CACHE_VERSION = 1
IMAG_TOL = 1e-3  # pytorch-fid's bound on the imaginary residue of the matrix square root


@dataclass
class Gaussian:
    """Mean and covariance (float64) of n feature vectors."""
    mean: np.ndarray
    cov: np.ndarray
    n: int
    _root: np.ndarray | None = field(default=None, repr=False, compare=False)

    def sqrt_cov(self) -> np.ndarray:
        """The symmetric square root of cov, computed once (the real statistics' serves every evaluation)."""
        if self._root is None:
            w, v = scipy.linalg.eigh(self.cov)
            _check_residue(w, "covariance")
            self._root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        return self._root

    def save(self, path: Path, meta: dict) -> None:
        checkpoint.atomic_write(path, lambda f: np.savez(f, mean=self.mean, cov=self.cov, n=self.n,
                                                         meta=json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> Gaussian:
        with np.load(path) as z:
            return cls(z["mean"], z["cov"], int(z["n"]))


class FeatureSums:
    """n, sum of x and sum of x x^T over feature vectors x, in float64 where the features are."""

    def __init__(self):
        self.n = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def add(self, features: torch.Tensor) -> None:
        f = features.detach().double()
        if self.total is None:
            self._alloc(f.shape[1], f.device)
        self.n += len(f)
        self.total += f.sum(0)
        self.outer.addmm_(f.T, f)

    def _alloc(self, dim: int, device: torch.device) -> None:
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def merge(self, other: FeatureSums) -> FeatureSums:
        """Add another shard's sums into these: what all_reduce does across ranks."""
        if other.total is not None:
            if self.total is None:
                self._alloc(len(other.total), other.total.device)
            self.total += other.total
            self.outer += other.outer
        self.n += other.n
        return self

    def all_reduce(self, device: torch.device) -> None:
        """Sum over all ranks of the default process group; a rank that saw no images still takes part."""
        import torch.distributed as dist
        dim = torch.tensor([0 if self.total is None else len(self.total)], device=device)
        dist.all_reduce(dim, op=dist.ReduceOp.MAX)
        if self.total is None:
            self._alloc(int(dim.item()), device)
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=device)
        for t in (n, self.total, self.outer):
            dist.all_reduce(t)
        self.n = int(n.item())

    def gaussian(self) -> Gaussian:
        if self.n < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.n}")
        n, total, outer = self.n, self.total.cpu().numpy(), self.outer.cpu().numpy()
        mean = total / n
        cov = (outer - n * np.outer(mean, mean)) / (n - 1)
        return Gaussian(mean, (cov + cov.T) / 2, n)  # symmetric up to the matmul's summation order


def _check_residue(eigenvalues: np.ndarray, what: str) -> None:
    """Eigenvalues of a PSD matrix are >= 0 up to rounding; the square root of a negative one is the
    imaginary part sqrtm would return. Raise above pytorch-fid's tolerance, as it does."""
    worst = float(eigenvalues.min()) if len(eigenvalues) else 0.0
    if worst < 0 and np.sqrt(-worst) > IMAG_TOL:
        raise ValueError(f"FID: {what} has imaginary component {np.sqrt(-worst):.3g} in its square root "
                         f"(eigenvalue {worst:.3g}): the statistics are not a valid covariance")


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """|mu_a - mu_b|^2 + tr(A) + tr(B) - 2 tr((AB)^1/2), in float64; NaN if either is non-finite.

    tr((AB)^1/2) is the sum of square roots of the eigenvalues of A^1/2 B A^1/2: that matrix is
    symmetric PSD and has AB's eigenvalues, so eigvalsh gives them real and accurate, where
    sqrtm(A @ B) of the non-symmetric product returns complex rounding noise. Pass the fixed
    statistics (the real ones) as `a`: their square root is computed once and kept.
    """
    if not all(np.isfinite(x).all() for x in (a.mean, a.cov, b.mean, b.cov)):
        return float("nan")
    root = a.sqrt_cov()
    eig = scipy.linalg.eigvalsh(root @ b.cov @ root)
    _check_residue(eig, "the product of the covariances")
    diff = a.mean - b.mean
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt)


# ----- image streams -----

def quantize(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8, rounded as save_image (and so a PNG) stores it."""
    return ((images.float() + 1) * 127.5 + 0.5).clamp_(0, 255).to(torch.uint8)


def real_batches(files: list[Path], image_size: int, batch: int, workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 NCHW batches of the files through the training input's decode + Resize + CenterCrop."""
    from torch.utils.data import DataLoader

    from ..data.torch import ImageFiles
    from ..stop import leave_stop_signals_to_the_trainer
    # Its own generator: the loader's seed draw must not move the global RNG (exact resume).
    loader = DataLoader(ImageFiles(files, image_size), batch_size=batch, num_workers=workers,
                        generator=torch.Generator(), worker_init_fn=leave_stop_signals_to_the_trainer)
    for b in loader:
        yield b.permute(0, 3, 1, 2)


def fid_noise(n: int, nz: int, seed: int) -> torch.Tensor:
    """The z of FID's n generated images, drawn at once from its own seeded generator (never the global
    RNG: evaluation must not change training). One draw for the whole set, so the score does not
    depend on the batch size or the number of processes that generate it."""
    return torch.randn(n, nz, 1, 1, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def fake_batches(G: nn.Module, z: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """G's images of z (eval mode, restored after) as uint8 NCHW on G's device, `batch` at a time."""
    device = next(G.parameters()).device
    was_training = G.training
    G.eval()
    try:
        for chunk in z.split(batch):
            yield quantize(G(chunk.to(device)))
    finally:
        G.train(was_training)


def feature_sums(batches: Iterable[torch.Tensor], extractor: Extractor) -> FeatureSums:
    sums = FeatureSums()
    for b in batches:
        sums.add(extractor(b))
    return sums


# ----- statistics -----

def shard_of(shard: bool | None = None) -> tuple[int, int]:
    """(rank, world size) to split work by: the process group's when one is up (or shard=True)."""
    import torch.distributed as dist
    on = (dist.is_available() and dist.is_initialized()) if shard is None else shard
    return (dist.get_rank(), dist.get_world_size()) if on else (0, 1)


def stats_key(files: list[Path], image_size: int, extractor_name: str) -> str:
    h = hashlib.sha1(json.dumps([CACHE_VERSION, extractor_name, image_size]).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def protocol(extractor: Extractor, n: int, real: list[Path], image_size: int, split: str) -> dict:
    """What a score was measured with, pinned beside it: FIDs are comparable only where all of these
    agree (n above all: fewer samples score higher)."""
    return {"network": extractor.name, "generated": n, "real": len(real), "split": split,
            "image_size": image_size,
            "resize": f"{extractor.resize}, generated images rounded to 8 bits first",
            "stats": stats_key(real, image_size, extractor.name)}


def describe(p: dict) -> str:
    return (f"FID protocol: network {p['network']}; {p['generated']} generated images against "
            f"{p['real']} real (split {p['split']}, decoded and cropped as in training at "
            f"{p['image_size']}x{p['image_size']}); {p['resize']}; real statistics {p['stats']}")


def real_stats(files: list[Path], image_size: int, extractor: Extractor, batch: int = 100, workers: int = 0,
               shard: bool | None = None) -> tuple[Gaussian, bool]:
    """Statistics of the real images, from the cache when it has them; (stats, came from the cache)."""
    rank, world = shard_of(shard)
    path = cache_dir() / "fid" / f"{stats_key(files, image_size, extractor.name)}.npz"
    cached = None
    try:
        cached = Gaussian.load(path) if path.is_file() else None
    except (OSError, ValueError, KeyError):
        pass  # a damaged cache file is recomputed and replaced
    if world > 1:  # all ranks must agree, or some would wait in all_reduce forever
        import torch.distributed as dist
        hit = torch.tensor([int(cached is not None)], device=extractor.device)
        dist.all_reduce(hit, op=dist.ReduceOp.MIN)
        cached = cached if hit.item() else None
    if cached is not None:
        return cached, True
    sums = feature_sums(real_batches(files[rank::world], image_size, batch, workers), extractor)
    if world > 1:
        sums.all_reduce(extractor.device)
    stats = sums.gaussian()
    if rank == 0:
        meta = {"images": len(files), "first": str(files[0]) if files else "", "image_size": image_size,
                "extractor": extractor.name, "created": time.time()}
        try:
            stats.save(path, meta)
        except OSError:
            pass  # a read-only cache only costs a recomputation next time
    if world > 1:  # the file is complete before any rank looks for it again
        import torch.distributed as dist
        dist.barrier()
    return stats, False


def generator_stats(G: nn.Module, n: int, extractor: Extractor, batch: int = 100, seed: int = 0,
                    shard: bool | None = None) -> Gaussian:
    """Statistics of n images of G from fid_noise(n, G.nz, seed); under DDP each rank makes its
    contiguous share of the same n, so every split of the work scores the same images."""
    rank, world = shard_of(shard)
    z = fid_noise(n, G.nz, seed)[rank * n // world:(rank + 1) * n // world]
    sums = feature_sums(fake_batches(G, z, batch), extractor)
    if world > 1:
        sums.all_reduce(extractor.device)
    return sums.gaussian()
