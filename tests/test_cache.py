"""The decode-once cache: build, reuse, invalidation, interrupted builds, batches, auto, prepare."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, tiny_args, weights, write_colors
from fastdcgan.data import cache, dali, loaders, nvjpeg
from fastdcgan.data.base import Feed
from fastdcgan.data.cache import CacheLoader, ensure
from fastdcgan.data.dali import DaliLoader
from fastdcgan.data.folder import ImageList, scan
from fastdcgan.data.order import HFlip, epoch_batches
from fastdcgan.data.synthetic import make_faces
from fastdcgan.data.torch import ImageFiles
from fastdcgan.train import main

CPU = torch.device("cpu")
needs_dali = pytest.mark.skipif(dali.unavailable_reason() is not None, reason=str(dali.unavailable_reason()))


@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "faces", n=24, workers=1)


def test_build_then_reuse(faces):
    images = scan(faces)
    first = ensure(images, 32, CPU)
    assert first.built and first.images == 24
    assert first.decoder.startswith("torchvision CPU")  # the fastest decoder here (cache.decoder_kind)
    arr = np.load(first.folder / "images.npy", mmap_mode="r")
    assert arr.shape == (24, 32, 32, 3) and arr.dtype == np.uint8
    index = json.loads((first.folder / "index.json").read_text())
    assert index["version"] == cache.FORMAT_VERSION and index["image_size"] == 32
    name, size, mtime = index["files"][5]
    assert name == "img_align_celeba/000006.jpg" and size == (faces / name).stat().st_size
    again = ensure(scan(faces), 32, CPU)
    assert not again.built and again.folder == first.folder
    assert ensure(images, 64, CPU).folder != first.folder  # another setting, another cache


# One process asking for the cache: waits for a start file (all start together), prints built and folder.
ASK = """import sys, time
from pathlib import Path
import torch
from fastdcgan.data.cache import ensure
from fastdcgan.data.folder import scan
Path(sys.argv[2] + ".ready." + sys.argv[3]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.005)
slow = lambda i: time.sleep(1)  # a build of a second or more: the others ask while it runs
r = ensure(scan(Path(sys.argv[1])), 32, torch.device("cpu"), progress=slow)
print(r.built, r.folder)
"""


def test_processes_that_ask_for_one_cache_at_once_build_it_once(faces, tmp_path):
    """The ranks on a node (or prepare beside a training run) ask for the same cache together: one builds
    it under the lock, the others wait and reuse it. Built by each, the builds would race in one folder,
    and each one's clean-up of stale temporary folders could delete another's build under way."""
    start, n = tmp_path / "start", 3
    procs = [subprocess.Popen([sys.executable, "-c", ASK, str(faces), str(start), str(i)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    t = time.monotonic()
    while len(list(tmp_path.glob("start.ready.*"))) < n and time.monotonic() - t < 120:
        time.sleep(0.01)
    start.touch()
    said = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), said
    assert sorted(s[0] for s in said) == ["False"] * (n - 1) + ["True"], said
    assert len({s[1] for s in said}) == 1


@needs_dali
def test_contents_match_the_dali_backend_and_the_plain_path(faces):
    images = scan(faces)
    arr = np.load(ensure(images, 64, CPU, decoder="dali-cpu").folder / "images.npy")
    order = epoch_batches(24, 8, 0, 0)
    batch = next(iter(DaliLoader(Feed(images.files, 64, 8, seed=0, device=CPU, threads=1)).epoch(0)))
    assert np.array_equal(batch.numpy(), arr[order[0].numpy()])  # the same pipeline made both
    plain = ImageFiles(images.files, 64)
    ref = np.stack([plain[i].numpy() for i in range(24)]).astype(float)
    assert np.abs(arr - ref).mean() < 0.3  # measured 0.12; a nearest or non-antialiased DALI resize 2.1-2.9
    default = np.load(ensure(images, 64, CPU).folder / "images.npy").astype(float)  # torchvision's
    assert np.abs(default - ref).mean() < 0.05  # measured 0.002: libjpeg-turbo and torchvision's resize both


DALI_CHUNKS = """
import json, sys, torch
from pathlib import Path
from fastdcgan.data import dali
files, sizes, seen = [Path(f) for f in sys.argv[2:]], json.loads(sys.argv[1]), []
for chunk in (16, 72):
    stats = {}
    chunks = list(dali.decode_chunks(files, 32, torch.device("cpu"), 1, chunk, stats, sizes))
    seen.append({"sizes": [len(c) for c in chunks], "stats": stats,
                 "failed": [i for i, x in enumerate(sum(chunks, [])) if isinstance(x, str)]})
print(json.dumps(seen))
"""


@needs_dali
def test_dali_builds_whole_chunks_then_the_rest_never_repeating_a_file_in_a_batch(faces):
    """The DALI build decodes whole chunks, then the rest with a batch of its own size. A batch was once
    filled up by repeating the list's files (24 files in chunks of 72: each three times), which put a
    file that does not decode three times in one batch, and that crashed DALI 2.4's CPU decoder (a
    segfault, measured 3 times in 3) instead of raising. In a process of its own, so a crash fails this
    test, not the session."""
    images = scan(faces)
    images.files[20].write_bytes(b"not an image any more")  # after the scan; in the 8 after chunk 1's 16
    script = [sys.executable, "-c", DALI_CHUNKS, json.dumps(images.sizes), *map(str, images.files)]
    out = subprocess.run(script, capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [
        {"sizes": [16, 8], "stats": {"pil_chunks": 1}, "failed": [20]},
        {"sizes": [24], "stats": {"pil_chunks": 1}, "failed": [20]}]


@needs_dali
def test_without_dali_pil_builds_the_same_images(faces, monkeypatch, tmp_path):
    with_dali = np.load(ensure(scan(faces), 32, CPU, decoder="dali-cpu").folder / "images.npy").astype(float)
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "other-cache"))
    monkeypatch.setattr(dali, "unavailable_reason", lambda: "nvidia-dali is not importable (test)")
    monkeypatch.setattr(nvjpeg, "decoder_missing_reason",
                        lambda: "torchvision.io.decode_jpeg is not importable (test)")
    report = ensure(scan(faces), 32, CPU, threads=1)
    assert report.built and report.decoder.startswith("PIL")
    with_pil = np.load(report.folder / "images.npy").astype(float)
    # measured 0.29: PIL decodes in JPEG draft mode (DCT scaling to 2x the size; decode_pil), DALI at
    # full size. A nearest-neighbour PIL resize measured 4.5, bicubic 1.3, a nearest DALI resize 5.0.
    assert np.abs(with_pil - with_dali).mean() < 0.6


def test_a_changed_file_builds_a_new_cache(faces):
    old = ensure(scan(faces), 32, CPU)
    f = faces / "img_align_celeba" / "000004.jpg"
    f.write_bytes((faces / "img_align_celeba" / "000009.jpg").read_bytes())
    new = ensure(scan(faces), 32, CPU)
    assert new.built and new.folder != old.folder
    arr = np.load(new.folder / "images.npy")
    assert np.array_equal(arr[3], arr[8])  # the new cache holds the new picture
    (faces / "img_align_celeba" / "000010.jpg").unlink()
    assert ensure(scan(faces), 32, CPU).images == 23


def test_a_file_rewritten_at_the_same_size_builds_a_new_cache(faces):
    """An edited picture often keeps its size (a retouch, a re-export at the same quality): the key
    holds each file's modification time too, or the run would train on the stale pixels."""
    old = ensure(scan(faces), 32, CPU)
    f = faces / "img_align_celeba" / "000004.jpg"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # inside the entropy-coded data before the EOI marker: still a JPEG, other pixels
    f.write_bytes(bytes(data))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # a later second, whatever the clock
    new = ensure(scan(faces), 32, CPU)
    assert new.built and new.folder != old.folder


def test_an_interrupted_build_never_looks_complete(faces):
    # A build killed (SIGKILL) after its first chunk, in another process.
    code = ("import os, signal, torch; from fastdcgan.data import cache, folder; cache.CHUNK = 8; "
            f"cache.ensure(folder.scan({str(faces)!r}), 32, torch.device('cpu'), 1, "
            "lambda done: os.kill(os.getpid(), signal.SIGKILL))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ, capture_output=True)
    assert r.returncode == -9, r.stderr
    folder = cache.location(cache.index_of(scan(faces), 32, cache.decoder_kind(CPU)))
    assert not folder.exists() and list(folder.parent.glob(f".tmp-{folder.name}-*"))  # only its temp folder
    report = ensure(scan(faces), 32, CPU)
    assert report.built and cache.is_complete(folder) and report.images == 24


def test_corrupt_files_are_left_out(faces):
    (faces / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    report = ensure(scan(faces), 32, CPU)
    index = json.loads((report.folder / "index.json").read_text())
    assert report.images == 23 and "img_align_celeba/000002.jpg" not in [f[0] for f in index["files"]]


CPU_DECODERS = [kind for kind in ("torchvision-cpu", "dali-cpu", "pil")
                if kind != "dali-cpu" or dali.unavailable_reason() is None]


@pytest.mark.parametrize("decoder", CPU_DECODERS)
@pytest.mark.parametrize("k", [1, 2])  # files broken
def test_files_that_break_after_the_scan_are_left_out_of_the_build_and_named_on_reuse(faces, decoder, k):
    """A file that passed the scan and fails when the cache is built (rewritten; or unreadable, an I/O
    error: here a folder where the file was, IsADirectoryError, an OSError that is not FileNotFoundError)
    is left out and named, with every decoder. The other images keep their order: each row is the image
    a cache of the good files alone holds (the corrupt-file test above breaks its file before the scan,
    which never reaches the build). A reuse names the same files. One file or two: the array is cut to
    the images kept however few are missing (one left out must not leave a black image at the end)."""
    images = scan(faces)
    broken = [images.files[2], images.files[9]][:k]
    broken[0].write_bytes(b"not an image any more")
    if k > 1:
        broken[1].unlink()
        broken[1].mkdir()
    report = ensure(images, 32, CPU, threads=1, decoder=decoder)
    names = [str(f.relative_to(images.root)) for f in broken]
    assert report.built and report.images == 24 - k and [name for name, _ in report.skipped] == names
    good = [k for k, f in enumerate(images.files) if f not in broken]
    alone = ensure(ImageList(images.root, [images.files[k] for k in good], "folder",
                             sizes=[images.sizes[k] for k in good]), 32, CPU, threads=1, decoder=decoder)
    got, want = (np.load(r.folder / "images.npy").astype(np.float32) for r in (report, alone))
    # a chunk DALI fails on is decoded by PIL: a fraction of a grey level apart; another image is tens
    assert got.shape == want.shape and np.abs(got - want).mean(axis=(1, 2, 3)).max() < 2.0
    again = ensure(images, 32, CPU, threads=1, decoder=decoder)
    assert not again.built and again.skipped == report.skipped


def test_a_build_that_leaves_files_out_counts_every_file_read_and_warns_on_every_reuse(faces):
    """The progress bar ends at the number of files read, skipped ones included; the warning that names
    the files left out is said by the build and again by each launch that reuses the cache (a resumed
    run's console must still say its data is short)."""
    images = scan(faces)
    images.files[5].write_bytes(b"not an image any more")
    done, said = [], []
    cache.build_cache(images, 32, CPU, 1, said.append)
    assert cache.ensure(images, 32, CPU, 1, progress=done.append, decoder="pil").built
    assert done == sorted(done) and done[-1] == 24
    cache.build_cache(images, 32, CPU, 1, said.append)
    first = images.files[5].relative_to(images.root)
    warning = f"warning: 1 files did not decode while building the cache and are left out (first: {first}"
    assert [line.startswith(warning) for line in said] == [False, True, False, True], said
    assert said[0].startswith("input: cache built: 23 images")
    assert said[2].startswith("input: cache reused: 23 images")
    assert "refused" not in said[0]  # a file nothing decodes is not one "decoded with PIL"


def test_hflip_mirrors_a_seeded_half_and_resumes_exactly(faces):
    folder = ensure(scan(faces), 32, CPU).folder
    feed = Feed(scan(faces).files, 32, 8, seed=0, device=CPU)
    plain, flipped = CacheLoader(feed, folder), HFlip(CacheLoader(feed, folder))
    a, b = torch.cat(list(plain.epoch(0))), torch.cat(list(flipped.epoch(0)))
    same = [torch.equal(x, y) for x, y in zip(a, b, strict=True)]
    mirrored = [torch.equal(x.flip(1), y) for x, y in zip(a, b, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and 4 <= sum(mirrored) <= 20
    assert torch.equal(torch.cat(list(flipped.epoch(0, start_batch=1))), b[8:])
    assert not torch.equal(torch.cat(list(flipped.epoch(1))), torch.cat(list(plain.epoch(1))))


def test_resume_mid_epoch_with_the_cache_and_hflip_is_bit_identical(celeba, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    extra = dict(data__backend="cache", data__hflip=True)  # the flips must resume exactly too
    assert main(tiny_args(celeba, whole, train__max_steps=9, **extra)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=5, **extra)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=9, **extra)) == 0
    a, b = weights(whole / "generator.pth"), weights(split / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_picks_the_cache_when_it_fits_then_dali_then_torch(monkeypatch):
    name, why = loaders.choose("auto", 1000, 64, CPU)
    assert name == "cache" and "fits" in why and "available RAM" in why
    monkeypatch.setattr(cache, "HOST_FRACTION", 1e-9)
    monkeypatch.setattr(dali, "unavailable_reason", lambda: None)  # as where DALI imports
    name, why = loaders.choose("auto", 1000, 64, CPU)
    assert name == "dali" and "exceeds" in why
    monkeypatch.setattr(dali, "unavailable_reason", lambda: "nvidia-dali is not importable (test)")
    assert loaders.choose("auto", 1000, 64, CPU)[0] == "torch"
    assert loaders.choose("cache", 10**9, 128, CPU)[0] == "cache"  # an explicit choice is taken as given


def test_auto_through_the_trainer_says_what_it_picked(celeba, tmp_path, capsys):
    assert main(tiny_args(celeba, tmp_path / "run", data__backend="auto", train__max_steps=2)) == 0
    out = capsys.readouterr().out
    assert "input: backend cache (auto: 48 images at 32px = 0.1 MiB fits the budget" in out
    assert "input: cache built: 48 images" in out


def test_the_cpu_cache_budget_is_shared_by_a_nodes_ranks(monkeypatch):
    """Each rank on a node holds its own copy of the cache in RAM: the budget is the host's share divided
    among them (LOCAL_WORLD_SIZE, set by torchrun), and the reason printed says so."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    one, _ = cache.memory_budget(CPU)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    four, what = cache.memory_budget(CPU)
    assert four == pytest.approx(one / 4, rel=0.05) and what.endswith(" / 4 ranks")


def test_a_nodes_cores_are_shared_by_its_ranks(faces, monkeypatch):
    """As the memory budget is: data.dali_threads=0 (and a cache build's threads=0) is one thread per core
    this process may use, divided among the node's ranks, which each start their own threads."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    feed = Feed(scan(faces).files, 32, 4, device=CPU, threads=0)
    for ranks, threads in ((None, 8), ("1", 8), ("2", 4), ("4", 2), ("16", 1)):
        if ranks is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
        assert dali.default_threads() == threads
        if dali.unavailable_reason() is None:
            assert DaliLoader(feed).threads == threads
    assert ensure(scan(faces), 32, CPU, decoder="pil").decoder.startswith("PIL, 1 processes")  # 16 ranks


def test_auto_weighs_the_cache_at_the_image_size_trained(monkeypatch):
    """data.backend=auto: the cache when N x S x S x 3 bytes fit the budget, with S the size trained at
    (a 128px CelebA is 4 times a 64px one) and N the images scanned."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    budget = cache.nbytes(1000, 64)
    monkeypatch.setattr(cache, "_host_available", lambda: int(budget / cache.HOST_FRACTION))
    assert cache.memory_budget(CPU)[0] == budget
    picked = {(n, size): loaders.choose("auto", n, size, CPU)[0] == "cache"
              for n, size in ((1000, 64), (1000, 32), (1000, 128), (1001, 64), (250, 128))}
    assert picked == {(1000, 64): True, (1000, 32): True, (1000, 128): False, (1001, 64): False,
                      (250, 128): True}


def test_the_cache_is_held_on_the_gpu_when_it_fits_at_the_size_trained(monkeypatch):
    """On CUDA the cache is served from GPU memory when N x S x S x 3 bytes fit the GPU's budget, S the
    size trained at: the CPU-checkable part of CacheLoader.open's choice (a budget given, a CUDA device
    named; nothing runs on it). Weighed at another size, a 128px cache would be taken for a quarter of its
    bytes and fill the GPU."""
    budget = cache.nbytes(1000, 64)
    monkeypatch.setattr(cache, "memory_budget", lambda device: (budget, "given") if device.type == "cuda"
                        else pytest.fail("weighed against the host"))
    cuda = torch.device("cuda")
    fits = {(n, size): cache.fits_the_gpu(Feed([], size, 8, device=cuda), n)
            for n, size in ((1000, 64), (1000, 32), (1000, 128), (1001, 64), (250, 128))}
    assert fits == {(1000, 64): True, (1000, 32): True, (1000, 128): False, (1001, 64): False,
                    (250, 128): True}
    assert not cache.fits_the_gpu(Feed([], 32, 8, device=CPU), 1)  # the host serves a CPU run


def test_the_trainer_reuses_the_cache_prepare_built(celeba, tmp_path, capsys):
    """What README promises of prepare: decode once ahead, and the trainer's cache backend finds it (the
    same images, size, decoder and data folder make the same cache)."""
    from fastdcgan.prepare import main as prepare
    assert prepare([str(celeba), "--image-size", "32", "--device", "cpu"]) == 0
    assert "cache built" in capsys.readouterr().out
    assert main(tiny_args(celeba, tmp_path / "run", data__backend="cache", train__max_steps=1)) == 0
    assert "input: cache reused: 48 images" in capsys.readouterr().out


def test_prepare_builds_reuses_and_reports(faces):
    (faces / "img_align_celeba" / "000003.jpg").write_bytes(b"")
    write_colors(faces / "tiny", 1, size=(16, 16))[0].rename(faces / "img_align_celeba" / "000005.jpg")
    r = run_cli("fastdcgan.prepare", faces, "--image-size", "32")
    assert r.returncode == 0, r.stderr
    assert "cache built" in r.stdout and "images      23 at 32x32" in r.stdout
    assert "1 images smaller than 32x32, upscaled" in r.stdout
    assert "skipped     1 files" in r.stdout and "000003.jpg" in r.stdout
    r = run_cli("fastdcgan.prepare", faces, "--image-size", "32")
    assert r.returncode == 0 and "cache reused" in r.stdout
    r = run_cli("fastdcgan.prepare", faces / "nope")
    assert r.returncode == 2 and "not found" in r.stderr


@needs_dali
def test_the_decoder_is_part_of_the_key(faces):
    """A cache built by one decoder is never served as another's (they differ by a fraction of a grey
    level; the GPU decoder too, unless told to upsample chroma as libjpeg does)."""
    images = scan(faces)
    by_dali = ensure(images, 32, CPU, decoder="dali-cpu")
    by_pil = ensure(images, 32, CPU, decoder="pil")
    assert by_dali.built and by_pil.built and by_dali.folder != by_pil.folder
    assert by_dali.decoder.startswith("DALI CPU") and by_pil.decoder.startswith("PIL")
    assert not ensure(images, 32, CPU, decoder="pil").built  # each reused as itself
    assert cache.decoder_kind(CPU) == "torchvision-cpu"  # the default here
    assert cache.decoder_kind(torch.device("cuda")) == "dali-mixed"


def test_without_dali_or_torchvisions_decoder_pil_builds(faces, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali now raises ImportError
    assert cache.decoder_kind(CPU) == "torchvision-cpu"
    assert cache.decoder_kind(torch.device("cuda")) == "torchvision-cuda"  # GPU decode without DALI, not PIL
    monkeypatch.setitem(sys.modules, "torchvision.io", None)  # a torchvision without its decoders
    assert cache.decoder_kind(CPU) == "pil" and cache.decoder_kind(torch.device("cuda")) == "pil"
    report = ensure(scan(faces), 32, CPU, threads=1)
    assert report.built and report.decoder.startswith("PIL") and "DALI unavailable" in report.decoder


def test_backend_dali_without_dali_says_how_to_install(celeba, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    assert main(tiny_args(celeba, tmp_path / "run", data__backend="dali")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.backend=dali" in err[0] and "pip install nvidia-dali-cuda130" in err[0]


def test_auto_without_dali_picks_another_backend_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.setattr(cache, "HOST_FRACTION", 1e-9)
    name, why = loaders.choose("auto", 1000, 64, CPU)
    assert name == "torch" and "exceeds the cache budget" in why and "nvidia-dali is not importable" in why
    assert "\n" not in why


@pytest.mark.parametrize("memory", ["device", "host"])
def test_every_way_the_cache_serves_gives_the_epochs_order_and_resumes_at_the_batch_asked_for(faces, memory):
    """Both of CacheLoader's gathers: from device memory (where a CUDA run holds the cache; its code run
    here on a CPU tensor) and from host RAM. Each gives the epoch's order, and a resume at batch k gives
    exactly the rest of it -- not the epoch again from its first batch."""
    folder = ensure(scan(faces), 32, CPU).folder
    arr = np.load(folder / "images.npy")
    one = CacheLoader(Feed(scan(faces).files, 32, 4, seed=1, device=CPU), folder)
    if memory == "device":
        one.gpu_data = torch.from_numpy(one.host)  # the device-memory branch, on the CPU
    whole = list(one.epoch(2))
    order = epoch_batches(24, 4, 1, 2).numpy()
    assert [b.numpy().tolist() for b in whole] == [arr[row].tolist() for row in order]
    rest = list(one.epoch(2, start_batch=3))
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(rest, whole[3:], strict=True))


def test_a_build_removes_the_temp_folders_of_dead_builds_and_no_live_one(faces):
    """A build tidies the temp folders that builds which died left (untouched for an hour), never the
    folder another process is building into right now (its build would fail or, worse, rename a
    half-removed folder into place)."""
    import shutil
    import time
    import uuid

    arrays = cache.cache_dir() / "arrays"
    live, dead = arrays / f".tmp-live-{uuid.uuid4().hex}", arrays / f".tmp-dead-{uuid.uuid4().hex}"
    for folder in (live, dead):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"being written")
    old = time.time() - 7200
    for path in (dead / "images.npy", dead):
        os.utime(path, (old, old))
    try:
        assert ensure(scan(faces), 32, CPU).built
        assert live.is_dir() and (live / "images.npy").is_file()
        assert not dead.exists()
    finally:
        shutil.rmtree(live, ignore_errors=True)  # the session's cache folder is shared by the tests


def test_each_decoder_kind_decodes_on_the_device_it_names(monkeypatch):
    """The cache's decoder kinds, on a machine with a GPU: dali-mixed and torchvision-cuda decode on the
    run's GPU (a build that ran them on the CPU would be slow and key its CPU images as the GPU's), the
    CPU kinds on the CPU whatever the run's device. Checked on the device each kind's decode_chunks is
    given (nothing is decoded, so no GPU is needed); pil's pool has no device."""
    gpu = torch.device("cuda:1")
    images = ImageList(REPO, [REPO / "a.jpg"], "folder", sizes=[(178, 218)])
    want = {"dali-mixed": gpu, "torchvision-cuda": gpu, "torchvision-cpu": CPU, "dali-cpu": CPU, "pil": None}
    assert set(want) == set(cache.DECODERS)
    for module in (dali, nvjpeg):
        monkeypatch.setattr(module, "decode_chunks", lambda files, size, device, *rest: device)
    for kind, device in want.items():
        _, given = cache._decoder(kind, images, 32, gpu, 2, {})
        if not isinstance(given, torch.device):  # pil: its pool's generator, not started
            given.close()
            given = None
        assert given == device, kind


def test_prepares_threads_reach_the_build(faces, capsys):
    """prepare --threads is the build's threads (or processes), not only the scan's: the summary's
    decoder says how many decoded. A number no default here gives."""
    from fastdcgan.prepare import main as prepare
    threads = max(3, dali.default_threads() + 1)
    assert prepare([str(faces), "--image-size", "32", "--device", "cpu", "--threads", str(threads)]) == 0
    out = capsys.readouterr().out
    assert "cache built" in out and f", {threads} threads)" in out, out


def test_a_cache_that_left_files_out_counts_the_batches_it_serves(faces):
    """len() of a cache that left files out (they broke after the scan) counts the images it holds, not
    the files scanned: 22 of 24 in batches of 4 are 5 batches, not 6. The trainer plans its epochs, and
    places a resume inside one, by len(); one batch too many would shift every resumed position."""
    images = scan(faces)
    for f in images.files[2], images.files[9]:
        f.write_bytes(b"not an image any more")
    one = CacheLoader.open(Feed(images.files, 32, 4, seed=3, device=CPU, sizes=images.sizes,
                                root=images.root), say=lambda line: None)
    assert len(one) == len(list(one.epoch(0))) == 5


def test_prepare_says_a_decoder_failure_in_one_line_and_exits_1(faces, monkeypatch, capsys):
    """A decoder failing for another reason than a file (here torchvision's decoder hit by a CUDA error)
    ends prepare as it ends the trainer's cache build: one line naming it, exit 1, not a traceback; torch's
    CUDA errors are several lines (the generic advice after the first is left out)."""
    from torchvision import io as tvio

    from fastdcgan.prepare import main as prepare
    if cache.decoder_kind(CPU) != "torchvision-cpu":
        pytest.skip("the CUDA error is put into torchvision's decoder, not the one used here")

    def broken(data, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\n"
                           "CUDA kernel errors might be asynchronously reported at some other API call, "
                           "so the stacktrace below might be incorrect.\n"
                           "For debugging consider passing CUDA_LAUNCH_BLOCKING=1")

    monkeypatch.setattr(tvio, "decode_jpeg", broken)
    assert prepare([str(faces), "--image-size", "32", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "illegal memory access" in err and len(err.splitlines()) == 1, err


@needs_dali
def test_a_dali_build_of_images_of_several_sizes_gives_each_pipeline_its_own_regions(faces, tmp_path):
    """A DALI cache build runs whole chunks, then the rest, each a pipeline of its own: each is given the
    regions of its own files (from where the last one stopped), so images of several sizes come out
    as one pipeline over them all gives them -- none redone by PIL after a region that does not fit."""
    from PIL import Image

    from fastdcgan.data.folder import header_sizes
    faces_jpgs = sorted((faces / "img_align_celeba").glob("*.jpg"))
    files = []
    for i, (w, h) in enumerate([(178, 218), (100, 130), (218, 178), (64, 64), (150, 90), (120, 200)] * 2):
        files.append(tmp_path / f"{i:02d}.jpg")
        Image.open(faces_jpgs[i]).resize((w, h)).save(files[-1], quality=92)
    sizes, stats = header_sizes(files), {}
    chunked = [im for c in dali.decode_chunks(files, 32, CPU, 1, 5, stats, sizes) for im in c]  # 5, 5, 2
    whole = [im for c in dali.decode_chunks(files, 32, CPU, 1, 12, None, sizes) for im in c]
    assert stats["pil_chunks"] == 0
    assert len(chunked) == 12 and all(np.array_equal(a, b) for a, b in zip(chunked, whole, strict=True))


def test_a_dali_install_that_fails_to_import_is_unavailable_not_a_crash(monkeypatch):
    """A broken DALI install raises more than ImportError at import (an OSError for a CUDA library it
    cannot load, say): DALI is then unavailable, with the reason and how to install it, and auto picks
    another backend; the launch does not end in a traceback."""
    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "nvidia.dali":
                raise OSError("libcuda.so.1: cannot open shared object file")
            return None

    monkeypatch.delitem(sys.modules, "nvidia.dali", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    why = dali.unavailable_reason()
    assert why.startswith("nvidia-dali is not importable (OSError: libcuda.so.1") and "pip install" in why
    monkeypatch.setattr(cache, "HOST_FRACTION", 1e-9)
    assert loaders.choose("auto", 1000, 64, CPU)[0] == "torch"
