"""The loader contract (fastdcgan/data/base.py), one test per rule, run on every input backend:
the one seeded order every backend shares, each rank its disjoint share with the partial last global
batch dropped, a resume at any batch, an abandoned epoch, the one-batch check, a file broken after
the scan replaced by the next. Every field of the Feed a backend is given, on every backend:
test_every_feed_field.py. The backends' own matters (DALI's pipelines, the cache's build, the
GPU decoders) are in test_dali.py, test_cache.py and test_nvjpeg.py."""
import shutil

import pytest
import torch

from conftest import color_ids, make_celeba, runs_here, tiny_args, write_colors
from fastdcgan import config, fid, train
from fastdcgan.config import UsageError
from fastdcgan.data import folder
from fastdcgan.data.base import Feed
from fastdcgan.data.folder import scan
from fastdcgan.data.loaders import BACKENDS, make_loader
from fastdcgan.data.order import epoch_batches, flip_masks
from fastdcgan.metrics import frechet

CPU = torch.device("cpu")


def ids(batch: torch.Tensor, batch_size: int = 4, size: int = 16) -> list[int]:
    """color_ids of a batch in the contract's form (uint8, batch x size x size x 3, on the CPU): every
    batch any test here meets is checked for it, so a stand-in batch of another size or type (a file
    replaced mid-epoch, decoded by a fallback) fails whichever test meets it."""
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (batch_size, size, size, 3), batch.shape
    assert batch.device == CPU
    return color_ids(batch)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return runs_here(request.param)


def loader(backend: str, files, batch: int, seed: int, rank: int = 0, world: int = 1, image_size: int = 16):
    feed = Feed(files, image_size, batch, seed=seed, device=CPU, rank=rank, world=world, threads=1)
    return BACKENDS[backend].open(feed, say=lambda line: None)  # the cache: built (or reused) first


def test_ranks_take_disjoint_shares_of_the_shared_order_and_drop_the_partial_batch(backend, tmp_path):
    files = write_colors(tmp_path, 43)  # 5 global batches of 2 x 4, and 3 images left over
    seen = []
    for rank in range(2):
        one = loader(backend, files, 4, seed=3, rank=rank, world=2)
        assert len(one) == 5
        batches = [ids(b) for b in one.epoch(1)]
        assert batches == epoch_batches(43, 4, 3, 1, rank, 2).tolist()  # the order every backend shares
        seen += [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 40


def test_an_epoch_is_seeded_reshuffled_and_resumes_at_any_batch(backend, tmp_path):
    files = write_colors(tmp_path, 24)
    one = loader(backend, files, 4, seed=5)

    def order(epoch, start=0):
        return [ids(b) for b in one.epoch(epoch, start)]

    e0 = order(0)
    assert e0 == epoch_batches(24, 4, 5, 0).tolist() and sorted(i for b in e0 for i in b) == list(range(24))
    assert order(1) != e0                   # reshuffled each epoch
    assert order(0, start=4) == e0[4:]      # a resume at batch 4 sees exactly the rest
    assert order(0) == e0                   # reproducible
    other = [ids(b) for b in loader(backend, files, 4, seed=6).epoch(0)]
    assert other != e0                      # seeded


def test_an_abandoned_epoch_leaves_the_next_ones_whole(backend, tmp_path):
    files = write_colors(tmp_path, 24)
    one = loader(backend, files, 4, seed=2)
    first = one.epoch(0)
    next(first)  # left after one batch, as max_steps or a stop signal leaves it
    first.close()
    assert [ids(b) for b in one.epoch(0)] == epoch_batches(24, 4, 2, 0).tolist()
    assert [ids(b) for b in one.epoch(1)] == epoch_batches(24, 4, 2, 1).tolist()


def test_fewer_images_than_one_global_batch_is_a_usage_error(backend, tmp_path):
    files = write_colors(tmp_path, 7)
    with pytest.raises(UsageError, match=r"^7 usable images are fewer than one batch "
                                         r"\(train.batch_size=4 x 2 processes\)$"):
        loader(backend, files, 4, seed=0, world=2)


def test_a_file_broken_or_removed_after_the_scan_is_replaced_by_the_next(backend, tmp_path):
    if backend == "cache":
        pytest.skip("the cache reads each file once, when it is built: test_cache.py's corrupt-file test")
    files = write_colors(tmp_path, 16)
    one = loader(backend, scan(tmp_path).files, 4, seed=0)
    good = files[5].read_bytes()
    files[5].write_bytes(good[: len(good) // 3])  # truncated while "training"
    files[9].unlink()
    files[12].unlink()  # unreadable: an I/O error (an OSError, not FileNotFoundError), here a folder
    files[12].mkdir()
    with pytest.warns(UserWarning, match="skipping") as said:
        batches = [ids(b) for b in one.epoch(0)]
    for got, want in zip(batches, epoch_batches(16, 4, 0, 0).tolist(), strict=True):
        assert got == [i + 1 if i in (5, 9, 12) else i for i in want]
    # each skip says why: the removed file's warning carries the OS's own reason
    assert any("0009.jpg" in str(w.message) and "No such file or directory" in str(w.message) for w in said)
    with pytest.warns(UserWarning, match="skipping"):
        assert len(list(one.epoch(1))) == 4  # and the epochs after it go on
    # a whole batch broken: each of its files is replaced by the next one that decodes
    lost = epoch_batches(16, 4, 0, 2)[1].tolist()
    for i in lost:
        files[i].write_bytes(b"not an image any more")
    broken = {5, 9, 12, *lost}

    def stand_in(i):
        while i % 16 in broken:
            i += 1
        return i % 16

    with pytest.warns(UserWarning, match="skipping"):
        batches = [ids(b) for b in one.epoch(2)]
    assert batches[1] == [stand_in(i) for i in lost]


def test_hflip_mirrors_the_seeded_half_of_every_backends_batches(backend, tmp_path):
    """data.hflip works with every backend (README): the trainer's make_loader gives, on each, that
    backend's own batches with flip_masks' choice of images mirrored, whichever backend a run picks."""
    if BACKENDS[backend].unavailable(CPU):  # the trainer's own choice refuses it here (nvjpeg: CUDA only)
        pytest.skip(BACKENDS[backend].unavailable(CPU))
    images = scan(make_celeba(tmp_path / "faces", 16))  # a gradient and an ellipse: mirrored, they differ

    def batches(hflip: bool) -> list[torch.Tensor]:
        cfg = config.build(None, [f"data.backend={backend}", f"data.hflip={str(hflip).lower()}",
                                  "data.image_size=32", "train.batch_size=4", "data.workers=0",
                                  "data.dali_threads=1", "train.seed=3"])
        return list(make_loader(cfg, images, CPU, say=lambda line: None).epoch(1))

    plain, flipped = batches(False), batches(True)
    masks = flip_masks(len(plain), 4, 3, 1)
    assert masks.any() and not masks.all()
    for mask, p, f in zip(masks, plain, flipped, strict=True):
        assert torch.equal(f, torch.where(mask.view(-1, 1, 1, 1), p.flip(2), p))
    assert not torch.equal(torch.stack(plain), torch.stack(flipped))


def test_hflip_mirrors_each_of_four_ranks_own_choice(tmp_path):
    """Each rank mirrors its own choice of images, every two of four ranks apart: two ranks cannot tell
    "each rank its own" from "rank 0 apart from the rest" (ranks 1 to 3 alike)."""
    images = scan(make_celeba(tmp_path / "faces", 96))
    chosen = []

    def batches(hflip: bool, rank: int) -> list[torch.Tensor]:
        cfg = config.build(None, ["data.backend=torch", f"data.hflip={str(hflip).lower()}", "data.workers=0",
                                  "data.image_size=32", "train.batch_size=4", "train.seed=3"])
        return list(make_loader(cfg, images, CPU, rank, 4, say=lambda line: None).epoch(1))

    for rank in range(4):
        plain, flipped = batches(False, rank), batches(True, rank)
        mirrored = torch.stack([(f != p).flatten(1).any(1) for p, f in zip(plain, flipped, strict=True)])
        assert torch.equal(mirrored, flip_masks(len(plain), 4, 3, 1, rank)), rank
        chosen.append(mirrored)
    for a in range(4):
        for b in range(a):
            assert not torch.equal(chosen[a], chosen[b]), f"ranks {b} and {a} mirror the same images"


def test_a_device_failure_while_replacing_a_file_ends_the_epoch_at_once():
    """A file that no longer decodes is replaced by the next one (first_that_decodes, which every backend
    uses), but a failure of the device (InputFailure: a CUDA error in nvJPEG) is not the file's fault: it
    ends the epoch at once, naming itself, instead of being warned about and tried on every other file
    of the dataset in turn (then ending with a message that hides the CUDA error)."""
    import warnings

    from fastdcgan.data import InputFailure
    from fastdcgan.data.base import first_that_decodes

    tried = []

    def decode(path):
        tried.append(path)
        raise InputFailure("GPU JPEG decode failed: CUDA error: an illegal memory access was encountered")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipping" warning either
        with pytest.raises(InputFailure, match="CUDA error"):
            first_that_decodes(["a.jpg", "b.jpg", "c.jpg"], 1, decode)
    assert tried == ["b.jpg"]


def test_data_workers_sizes_every_pool_that_reads_the_images(celeba, tiny_fid_net, tmp_path, monkeypatch):
    """data.workers is the number of processes of every pool that reads the data set, not the training
    loader's alone (test_every_setting.py's probe): the data scan's check of each file, and the decode of
    FID's real images, in training and in `python -m fastdcgan.fid` on its checkpoint. A pool given
    another number (the default: all the CPUs, or one) runs where the user did not ask. 3: neither the
    default of 0 nor this machine's CPU count."""
    sized = []
    check_all, real_batches = folder._check_all, frechet.real_batches

    def scan_pool(paths, workers):
        sized.append(("scan", workers))
        return check_all(paths, workers)

    def fid_pool(files, size, batch, workers=0):
        sized.append(("FID's real images", workers))
        return real_batches(files, size, batch, workers)
    monkeypatch.setattr(folder, "_check_all", scan_pool)
    monkeypatch.setattr(frechet, "real_batches", fid_pool)
    run = tmp_path / "run"
    assert train.main(tiny_args(celeba, run, data__workers=3, train__max_steps=1, fid__every=1, fid__n=8,
                                fid__weights=tiny_fid_net)) == 0
    shutil.rmtree(folder.cache_dir())  # the files' verdicts and FID's statistics: the tool makes its own
    assert fid.main(["--checkpoint", str(run), "--n", "8", "--weights", str(tiny_fid_net)]) == 0
    assert sized == [("scan", 3), ("FID's real images", 3)] * 2
