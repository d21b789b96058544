"""FID's statistics beyond the distance: generated images quantised exactly as a saved PNG holds them,
the protocol line and the cache file it names, the cache's damaged or read-only cases, and two real
processes (a forked rank 1 over gloo) sharing the real and generated images between them."""
import os
import signal
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torchvision.utils import save_image

from conftest import make_celeba
from fastdcgan.data import folder
from fastdcgan.metrics import extractors
from fastdcgan.metrics.frechet import (FeatureSums, Gaussian, describe, fid_noise, frechet_distance,
                                       generator_stats, protocol, quantize, real_batches, real_stats,
                                       stats_key)
from fastdcgan.model import Generator


def test_generated_images_are_quantised_as_a_saved_png_holds_them(tmp_path):
    x = torch.rand(3, 9, 7, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # past both ends too
    x[:, 0, :4] = torch.tensor([-1.0, 1.0, 0.0, -1 + 1 / 127.5]).view(1, 4)
    save_image(x, tmp_path / "g.png", normalize=True, value_range=(-1, 1))
    png = torch.from_numpy(np.array(Image.open(tmp_path / "g.png"))).permute(2, 0, 1)
    q = quantize(x.unsqueeze(0))[0]
    assert q.dtype == torch.uint8 and torch.equal(q, png)
    assert q[0, 0, :4].tolist() == [0, 255, 128, 1]


@pytest.fixture
def faces(tmp_path):
    return folder.scan(make_celeba(tmp_path / "celeba", 10)).files


def test_the_protocol_line_names_what_a_score_depends_on_and_its_real_statistics_file(faces, tiny_fid_net):
    ext = extractors.load(str(tiny_fid_net))
    p = protocol(ext, 500, faces, 32, "valid")
    real_stats(faces, 32, ext, batch=5)
    assert (folder.cache_dir() / "fid" / f"{p['stats']}.npz").is_file()  # "real statistics X" is that file
    assert describe(p) == (f"FID protocol: network {ext.name}; 500 generated images against 10 real "
                           "(split valid, decoded and cropped as in training at 32x32); bilinear to 299x299, "
                           f"align_corners=False, no antialiasing (as pytorch-fid), generated images rounded "
                           f"to 8 bits first; real statistics {p['stats']}")
    assert protocol(ext, 500, faces, 64, "valid")["stats"] != p["stats"]
    other = extractors.Extractor(ext.net, "other-net", ext.prepare, ext.device)
    assert protocol(other, 500, faces, 32, "valid")["stats"] != p["stats"]


def test_a_damaged_cache_file_is_recomputed_and_replaced(faces, tiny_fid_net):
    ext = extractors.load(str(tiny_fid_net))
    first, _ = real_stats(faces, 32, ext, batch=5)
    path = folder.cache_dir() / "fid" / f"{stats_key(faces, 32, ext.name)}.npz"
    path.write_bytes(b"not an npz")
    again, cached = real_stats(faces, 32, ext, batch=5)
    assert not cached and again.n == 10 and np.array_equal(again.mean, first.mean)
    loaded = Gaussian.load(path)
    assert loaded.n == 10 and isinstance(loaded.n, int) and np.array_equal(loaded.cov, first.cov)


def test_a_cache_folder_that_cannot_be_made_only_costs_a_recomputation(faces, tiny_fid_net, monkeypatch,
                                                                       tmp_path):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "file" / "cache"))
    ext = extractors.load(str(tiny_fid_net))
    assert real_stats(faces, 32, ext, batch=5)[1] is False
    assert real_stats(faces, 32, ext, batch=5)[1] is False


def test_statistics_are_saved_into_folders_made_on_the_way(tmp_path):
    g = Gaussian(np.zeros(2), np.eye(2), 5)
    g.save(tmp_path / "a" / "b" / "s.npz", {"images": 5})
    assert Gaussian.load(tmp_path / "a" / "b" / "s.npz").n == 5


def test_one_image_is_no_covariance():
    s = FeatureSums()
    s.add(torch.ones(1, 3))
    with pytest.raises(ValueError, match="FID statistics need at least 2 images, got 1"):
        s.gaussian()
    s.add(torch.zeros(1, 3))
    assert s.gaussian().n == 2


def test_the_refusal_says_which_matrix_and_how_far_off(monkeypatch):
    bad = Gaussian(np.zeros(2), np.diag([1.0, -0.25]), 10)
    with pytest.raises(ValueError, match=r"FID: covariance has imaginary component 0.5 in its square root "
                                         r"\(eigenvalue -0.25\)"):
        bad.sqrt_cov()
    ok = Gaussian(np.zeros(2), np.eye(2), 10)
    other = Gaussian(np.zeros(2), np.diag([1.0, -0.25]), 10)
    other._root = np.eye(2)  # only the product is checked here
    with pytest.raises(ValueError, match="FID: the product of the covariances has imaginary component 0.5"):
        frechet_distance(ok, other)


def test_the_tolerance_is_pytorch_fids_and_exactly_at_it_passes():
    edge = Gaussian(np.zeros(2), np.diag([1.0, -1e-6]), 10)  # sqrt(1e-6) = 1e-3, the bound itself
    assert np.allclose(edge.sqrt_cov(), np.diag([1.0, 0.0]))
    # no features, no eigenvalues
    assert Gaussian(np.zeros(0), np.zeros((0, 0)), 10).sqrt_cov().shape == (0, 0)
    # an eigenvalue of exactly 0
    assert np.allclose(Gaussian(np.zeros(1), np.zeros((1, 1)), 10).sqrt_cov(), 0)


def test_non_finite_statistics_give_nan_not_an_error():
    good = Gaussian(np.zeros(1), np.eye(1), 10)
    assert np.isnan(frechet_distance(good, Gaussian(np.zeros(1), np.array([[np.inf]]), 10)))
    assert np.isnan(frechet_distance(Gaussian(np.array([np.nan]), np.eye(1), 10), good))


def test_generator_statistics_come_from_n_images_of_fixed_noise(tiny_fid_net):
    ext = extractors.load(str(tiny_fid_net))
    torch.manual_seed(0)
    G = Generator(nz=16, ngf=8, image_size=32)
    a = generator_stats(G, 7, ext, batch=3)
    assert a.n == 7 and ext.images_seen == 7
    b = generator_stats(G, 7, ext, batch=3)
    c = generator_stats(G, 7, ext, batch=3, seed=1)
    assert np.array_equal(a.mean, b.mean) and not np.array_equal(a.mean, c.mean)


def test_fid_noise_is_one_seeded_draw_of_the_generators_input_whatever_the_batch(tiny_fid_net):
    z = fid_noise(10, 16, seed=3)
    assert z.shape == (10, 16, 1, 1)  # G's input: a 1x1 latent image
    assert torch.equal(fid_noise(4, 16, seed=3), z[:4]) and not torch.equal(fid_noise(10, 16, seed=4), z)
    ext = extractors.load(str(tiny_fid_net))
    torch.manual_seed(0)
    G = Generator(nz=16, ngf=8, image_size=32)
    a, b = generator_stats(G, 10, ext, batch=3), generator_stats(G, 10, ext, batch=10)
    assert np.allclose(a.mean, b.mean, rtol=1e-5, atol=1e-6)
    assert np.allclose(a.cov, b.cov, rtol=1e-4, atol=1e-6)


# ----- two processes: this one is rank 0, a forked child rank 1 -----

def ranks(tmp_path, work, world=2):
    """work(rank) in this process as rank 0 and in forked children as ranks 1.., one gloo group over
    a file store; returns every rank's result (the children's through files). The children inherit
    everything made before the fork (extractor, generator), as torchrun workers would make them."""
    store = tmp_path / "store"

    def join(rank):
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=30))
    children = {}
    for rank in range(1, world):
        pid = os.fork()
        if pid == 0:  # a child: never returns into pytest
            code = 1
            try:
                torch.set_num_threads(1)  # as DataLoader workers do: no OpenMP pool inherited across fork
                join(rank)
                torch.save(work(rank), tmp_path / f"rank{rank}.pt")
                dist.destroy_process_group()
                code = 0
            finally:
                os._exit(code)
        children[rank] = pid
    try:
        join(0)
        try:
            results = [work(0)]
        finally:
            dist.destroy_process_group()
        for rank, pid in list(children.items()):
            _, status = os.waitpid(pid, 0)
            del children[rank]
            assert os.waitstatus_to_exitcode(status) == 0, f"rank {rank} failed"
        return results + [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(1, world)]
    finally:
        for pid in children.values():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_two_ranks_share_the_images_and_agree_on_every_statistic(tmp_path, faces, tiny_fid_net, monkeypatch):
    ext = extractors.load(str(tiny_fid_net))
    alone, _ = real_stats(faces, 32, ext, batch=4)  # one process, its own cache
    torch.manual_seed(0)
    G = Generator(nz=16, ngf=8, image_size=32)
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "shared-cache"))

    def work(rank):
        counts = [ext.images_seen]

        def count():
            counts.append(ext.images_seen)
            return counts[-1] - counts[-2]
        real, cached = real_stats(faces, 32, ext, batch=4)
        real_seen = count()
        again, cached_again = real_stats(faces, 32, ext, batch=4)
        fake = generator_stats(G, 9, ext, batch=4)
        fake_seen = count()  # the second real_stats was a cache hit: these are the generated images
        sums = FeatureSums()
        if rank == 0:
            sums.add(torch.arange(6.0).view(3, 2))  # rank 1 saw no images: it still takes part
        sums.all_reduce(torch.device("cpu"))
        count()
        os.environ["FASTDCGAN_CACHE"] = str(tmp_path / f"alone-{rank}")  # nothing cached for this one
        unsharded, _ = real_stats(faces, 32, ext, batch=4, shard=False)  # this process alone, every image
        unsharded_fake = generator_stats(G, 9, ext, batch=4, shard=False)
        return dict(real=real, cached=cached, real_seen=real_seen, cached_again=cached_again,
                    fake_seen=fake_seen, fake=fake, n=sums.n,
                    total=None if sums.total is None else sums.total.tolist(),
                    unsharded=(unsharded.n, unsharded_fake.n, count()))
    r0, r1 = ranks(tmp_path, work)
    for r in (r0, r1):
        assert not r["cached"] and r["cached_again"] and r["real"].n == 10 and r["fake"].n == 9
        # the same images in other batches: float32 features agree to rounding
        np.testing.assert_allclose(r["real"].mean, alone.mean, rtol=1e-5)
        np.testing.assert_allclose(r["real"].cov, alone.cov, rtol=1e-4, atol=1e-8)
        assert r["n"] == 3 and r["total"] == [6.0, 9.0]
    assert (r0["real_seen"], r1["real_seen"]) == (5, 5)  # each rank its half of the real images
    assert (r0["fake_seen"], r1["fake_seen"]) == (4, 5)  # 9 generated images as 4 + 5
    assert r0["unsharded"] == r1["unsharded"] == (10, 9, 19)  # shard=False: every image in each process
    np.testing.assert_array_equal(r0["fake"].mean, r1["fake"].mean)
    single = generator_stats(G, 9, ext, batch=4)  # the same 9 images in one process: the same statistics
    np.testing.assert_allclose(single.mean, r0["fake"].mean, rtol=1e-5)
    np.testing.assert_allclose(single.cov, r0["fake"].cov, rtol=1e-4, atol=1e-8)


def test_a_cache_one_rank_lacks_is_recomputed_by_both(tmp_path, faces, tiny_fid_net, monkeypatch):
    """All ranks must take the same branch, or one would wait in a collective forever."""
    ext = extractors.load(str(tiny_fid_net))
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "cache-0"))
    real_stats(faces, 32, ext, batch=5)  # rank 0's cache has them

    def work(rank):
        if rank == 1:
            os.environ["FASTDCGAN_CACHE"] = str(tmp_path / "cache-1")  # a node without them
        seen = ext.images_seen
        stats, cached = real_stats(faces, 32, ext, batch=5)
        return cached, ext.images_seen - seen, stats.n
    assert ranks(tmp_path, work) == [(False, 5, 10), (False, 5, 10)]


def test_a_rank_without_features_takes_the_size_of_the_others(tmp_path):
    def work(rank):
        sums = FeatureSums()
        if rank < 2:  # ranks 0 and 1 saw images, rank 2 none
            sums.add(torch.full((rank + 1, 2), float(rank + 1)))
        sums.all_reduce(torch.device("cpu"))
        return sums.n, sums.total.tolist(), sums.outer.tolist()
    assert ranks(tmp_path, work, world=3) == [(3, [5.0, 5.0], [[9.0, 9.0], [9.0, 9.0]])] * 3


def test_valid_statistics_raise_no_numpy_warning():
    """A score every N steps must not bring a RuntimeWarning (sqrt of a negative) with it."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((60, 4)) + 0.5
    a = Gaussian(x.mean(0), np.cov(x, rowvar=False), 50)
    b = Gaussian(y.mean(0), np.cov(y, rowvar=False), 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frechet_distance(a, b) > 0


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes in /proc")
def test_a_stop_signal_to_the_whole_job_leaves_the_input_workers_of_the_real_statistics_alone(faces):
    """A cluster stops a job by signalling every process (slurmstepd, Ctrl-C): a DataLoader worker
    killed by it would crash the run mid-FID. The trainer stops in its own time; its workers ignore it."""
    before = set(children_of(os.getpid()))
    batches = real_batches(faces, 32, batch=2, workers=1)
    first = next(batches)
    workers = set(children_of(os.getpid())) - before
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.2)
    assert len([first, *batches]) == 5
