"""GPU decode without DALI (torchvision.io.decode_jpeg): everything but the device is checked on CPU
(decode_jpeg(device="cpu") is the same call), the device itself where CUDA is."""
import io
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import color_ids, needs_cuda, tiny_args, weights, write_colors
from fastdcgan.data import InputFailure, cache, dali, loaders, nvjpeg
from fastdcgan.data.cache import ensure
from fastdcgan.data.decode import resize_crop_many
from fastdcgan.data.folder import scan
from fastdcgan.data.base import Feed
from fastdcgan.data.nvjpeg import BatchDecoder, NvjpegLoader
from fastdcgan.data.order import epoch_batches
from fastdcgan.data.synthetic import make_faces
from fastdcgan.data.torch import ImageFiles

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Real 178x218 CelebA-layout JPEGs (quality 90)."""
    root = make_faces(tmp_path_factory.mktemp("faces"), n=24, workers=1)
    return sorted((root / "img_align_celeba").glob("*.jpg"))


def plain(files, size):
    ref = ImageFiles(files, size)
    return torch.stack([ref[i] for i in range(len(files))]).float()


@pytest.mark.parametrize("size", [32, 64])
def test_batches_keep_the_plain_paths_geometry(faces, size):
    batch, failed = BatchDecoder(size, CPU)([f.read_bytes() for f in faces])
    assert not failed and batch.shape == (24, size, size, 3) and batch.dtype == torch.uint8
    mad = (batch.float() - plain(faces, size)).abs().mean().item()
    # torchvision's own Resize + CenterCrop on tensors: only the decoder and the rounding differ.
    assert mad < 0.3, mad


def test_mixed_sizes_and_formats_in_one_batch_keep_their_order(tmp_path):
    """A PNG and a BMP (decode_jpeg refuses them: PIL decodes them) and sizes that differ, in one batch."""
    files = write_colors(tmp_path / "a", 3) + write_colors(tmp_path / "b", 2, size=(60, 30))
    png = tmp_path / "c.png"
    Image.open(files[1]).save(png)
    bmp = tmp_path / "d.bmp"
    Image.open(files[3]).save(bmp)
    order = [files[0], png, files[2], bmp, files[4], files[1]]
    decoder = BatchDecoder(16, CPU)
    batch, failed = decoder([f.read_bytes() for f in order])
    assert not failed and decoder.fallbacks == 2
    assert color_ids(batch) == [0, 1, 2, 0, 1, 1]  # write_colors' ids: each folder counts from 0
    assert (batch.float() - plain(order, 16)).abs().mean() < 0.5


def test_a_file_the_device_decoder_refuses_is_decoded_on_the_cpu(faces, monkeypatch):
    """nvJPEG refuses some JPEGs that libjpeg reads: the batch call fails, file by file finds which,
    and PIL decodes that one, with the same geometry."""
    from torchvision import io as tvio
    real = tvio.decode_jpeg
    refused = faces[5].read_bytes()

    def picky(data, **kw):
        many = data if isinstance(data, list) else [data]
        if any(bytes(d.numpy()) == refused for d in many):
            raise RuntimeError("nvjpegDecode failed: NVJPEG_STATUS_JPEG_NOT_SUPPORTED")
        return real(data, **kw)

    monkeypatch.setattr(tvio, "decode_jpeg", picky)
    decoder = BatchDecoder(32, CPU)
    batch, failed = decoder([f.read_bytes() for f in faces[:8]])
    assert not failed and decoder.fallbacks == 1 and batch.shape[0] == 8
    assert (batch.float() - plain(faces[:8], 32)).abs().mean() < 0.3


def test_a_device_error_ends_the_run(faces, monkeypatch):
    from torchvision import io as tvio

    def broken(data, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(tvio, "decode_jpeg", broken)
    with pytest.raises(InputFailure, match="illegal memory access"):
        BatchDecoder(32, CPU)([f.read_bytes() for f in faces[:4]])


def test_files_that_do_not_decode_are_named(tmp_path):
    files = write_colors(tmp_path, 4)
    whole = files[2].read_bytes()
    batch, failed = BatchDecoder(16, CPU)([files[0].read_bytes(), b"not an image", whole[: len(whole) // 3],
                                          "FileNotFoundError: gone", files[3].read_bytes()])
    assert color_ids(batch) == [0, 3] and sorted(failed) == [1, 2, 3]
    assert "FileNotFoundError" in failed[3]


def test_the_cache_built_by_it_matches_the_plain_path_in_file_order(faces, monkeypatch):
    images = scan(faces[0].parent.parent)
    monkeypatch.setattr(cache, "CHUNK", 5)  # 5 chunks decoded on 2 threads at once: their order must hold
    report = ensure(images, 32, CPU, threads=2)  # torchvision's decoder on threads: the fastest here
    assert report.built and report.decoder.startswith("torchvision CPU, 2 threads") and report.rate > 0
    arr = np.load(report.folder / "images.npy").astype(float)
    assert arr.shape == (24, 32, 32, 3)
    per_image = np.abs(arr - plain(images.files, 32).numpy()).mean(axis=(1, 2, 3))
    assert per_image.max() < 0.05  # each image is its own (measured 0.002); a neighbour would be tens
    assert ensure(images, 32, CPU, decoder="dali-cpu" if dali.unavailable_reason() is None
                  else "pil").folder != report.folder


def test_auto_picks_it_on_cuda_without_dali(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.setattr(loaders, "memory_budget", lambda device: (1, "a tiny budget"))
    monkeypatch.setattr(nvjpeg, "unavailable_reason",
                        lambda device: None if device.type == "cuda" else "no CUDA")
    name, why = loaders.choose("auto", 1000, 64, cuda)
    assert name == "nvjpeg" and "GPU decode by torchvision" in why and "nvidia-dali is not importable" in why
    assert loaders.choose("auto", 1000, 64, CPU)[0] == "torch"
    assert cache.decoder_kind(cuda) == "torchvision-cuda"
    monkeypatch.setattr(dali, "unavailable_reason", lambda: None)  # with DALI, DALI
    assert loaders.choose("auto", 1000, 64, cuda)[0] == "dali" and cache.decoder_kind(cuda) == "dali-mixed"


def test_backend_nvjpeg_without_cuda_says_why(celeba, tmp_path, capsys):
    from fastdcgan.train import main
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert main(tiny_args(celeba, tmp_path / "run", data__backend="nvjpeg")) == 2
    err = capsys.readouterr().err
    assert "data.backend=nvjpeg" in err and "CUDA" in err


def test_resize_crop_many_groups_sizes_and_keeps_order():
    rng = torch.Generator().manual_seed(0)
    ims = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=rng) for h, w in
           [(50, 40), (40, 50), (50, 40), (33, 33)]]
    together = resize_crop_many(ims, 16)
    alone = torch.cat([resize_crop_many([im], 16) for im in ims])
    assert torch.equal(together, alone)


@needs_cuda
def test_the_gpu_decoder_matches_the_cpu_decoder(faces):
    cuda = torch.device("cuda")
    datas = [f.read_bytes() for f in faces]
    on_gpu, failed = BatchDecoder(64, cuda)(datas)
    assert not failed and on_gpu.device.type == "cuda"
    on_cpu, _ = BatchDecoder(64, CPU)(datas)
    mad = (on_gpu.cpu().float() - on_cpu.float()).abs().mean().item()
    assert mad < 0.5, mad  # nvJPEG against libjpeg-turbo, float against uint8 resize rounding
    assert (on_gpu.cpu().float() - plain(faces, 64)).abs().mean() < 0.5


@needs_cuda
def test_the_loader_delivers_on_the_gpu_in_order(tmp_path):
    files = write_colors(tmp_path, 16)
    loader = NvjpegLoader(Feed(files, 16, 4, seed=1, device=torch.device("cuda"), threads=2))
    batches = list(loader.epoch(0))
    assert all(b.device.type == "cuda" and b.dtype == torch.uint8 for b in batches)
    assert [color_ids(b.cpu()) for b in batches] == epoch_batches(16, 4, 1, 0).tolist()


@needs_cuda
def test_resume_mid_epoch_with_nvjpeg_is_bit_identical(celeba, tmp_path):
    from fastdcgan.train import main
    whole, split = tmp_path / "whole", tmp_path / "split"
    extra = dict(data__backend="nvjpeg", device="cuda")
    assert main(tiny_args(celeba, whole, train__max_steps=9, **extra)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=5, **extra)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=9, **extra)) == 0
    a, b = weights(whole / "generator.pth"), weights(split / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pil_fallback_reads_any_mode(tmp_path):
    """Grayscale, palette and alpha images reach the batch as RGB (as folder.open_rgb makes them), and
    so does a grayscale JPEG, which the JPEG decoder itself reads (asked for RGB)."""
    rgb = Image.new("RGB", (20, 24), (200, 30, 30))
    datas = []
    for mode, kind in (("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("L", "JPEG")):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, kind)
        datas.append(buf.getvalue())
    decoder = BatchDecoder(8, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch, failed = decoder(datas)
    assert not failed and batch.shape == (4, 8, 8, 3) and decoder.fallbacks == 3
    grey = batch[3].float()
    assert torch.equal(grey[..., 0], grey[..., 1]) and torch.equal(grey[..., 0], grey[..., 2])
    assert (grey - batch[0].float()).abs().mean() < 2  # the same grey as the PNG's, to JPEG's loss
    alone, _ = BatchDecoder(8, CPU)(datas[3:])  # a batch of grey JPEGs only: nothing to broadcast against
    assert torch.equal(alone, batch[3:])


def test_a_file_that_cannot_be_read_says_why():
    assert nvjpeg.read("/nonexistent/x.jpg").startswith("FileNotFoundError: ")


def test_a_batch_of_which_nothing_decodes_names_every_file():
    batch, failed = BatchDecoder(8, CPU)([b"not an image", "FileNotFoundError: gone"])
    assert batch is None and failed[0].startswith("UnidentifiedImageError: ") and failed[1] == \
        "FileNotFoundError: gone"


def test_a_device_error_on_a_files_own_decode_ends_the_run_not_the_file(faces, monkeypatch):
    """The batched call fails because of a file; decoding file by file then meets a CUDA error: that
    ends the run (InputFailure), it is not one more file skipped."""
    from torchvision import io as tvio

    def failing(data, **kw):
        if isinstance(data, list):
            raise RuntimeError("nvjpegDecode failed: NVJPEG_STATUS_JPEG_NOT_SUPPORTED")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(tvio, "decode_jpeg", failing)
    with pytest.raises(InputFailure, match="GPU JPEG decode failed: CUDA error: an illegal memory access"):
        BatchDecoder(32, CPU)([f.read_bytes() for f in faces[:4]])


def test_on_cuda_it_needs_only_torchvisions_decoder():
    assert nvjpeg.unavailable_reason(torch.device("cuda")) == nvjpeg.decoder_missing_reason()
    assert nvjpeg.unavailable_reason(CPU) == "it decodes on a CUDA device and there is none"


@pytest.mark.parametrize("threads", [1, 3])
def test_reading_ahead_as_on_a_gpu_gives_the_chunks_decoding_on_threads_gives(faces, tmp_path, threads):
    """The cache build's two ways (on a GPU: the pool reads ahead, one thread decodes; on CPU: each
    thread reads and decodes) give the same chunks, in file order, with the same failures and count of
    files PIL decoded; both are what one decoder call on every file gives."""
    png = tmp_path / "x.png"
    Image.open(faces[3]).save(png)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    files = [*faces[:11], png, broken, tmp_path / "gone.jpg", *faces[11:]]  # 27 files: chunks of 5, then 2
    whole, failed = BatchDecoder(32, CPU)([nvjpeg.read(f) for f in files])
    want = iter(whole.numpy())
    want = [failed[i] if i in failed else next(want) for i in range(len(files))]
    for read_ahead in (False, True):
        stats = {}
        chunks = list(nvjpeg.decode_chunks(files, 32, CPU, threads, 5, stats, read_ahead=read_ahead))
        assert [len(c) for c in chunks] == [5, 5, 5, 5, 5, 2] and stats == {"cpu_fallbacks": 1}
        got = [x for c in chunks for x in c]
        assert [k for k, x in enumerate(got) if isinstance(x, str)] == [12, 13]
        # a reason names the error and the file (PIL's names the BytesIO it read, which differs each time)
        assert all(g.split(":")[0] == w.split(":")[0] if isinstance(w, str) else np.array_equal(g, w)
                   for g, w in zip(got, want, strict=True))
        # a chunk of which nothing decodes
        assert list(nvjpeg.decode_chunks(files[12:14], 32, CPU, threads, 2, read_ahead=read_ahead))[0][1] \
            .startswith("FileNotFoundError: ")


def test_every_image_of_a_batch_ends_on_the_decoders_device():
    """On a GPU, the files the JPEG decoder does not take (PNG, BMP, ...) are decoded by PIL on the CPU and
    must be moved to the device, and a batch of mixed sizes is assembled there too: a CPU image or batch
    in a CUDA run fails or crosses back to the host. Checked without a GPU on the meta device (tensors
    that have a device and a shape, no data), where every decode here goes PIL's way."""
    meta = torch.device("meta")

    def png(size) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", size, (90, 20, 200)).save(out, "PNG")
        return out.getvalue()

    decoder = BatchDecoder(16, meta)
    images, failed = decoder.decode([png((20, 30)), png((30, 20)), png((20, 30))])
    assert not failed and [im.device for im in images] == [meta] * 3
    assert decoder.fallbacks == 3
    batch, failed = decoder([png((20, 30)), png((30, 20))])  # two sizes: resized apart, assembled
    assert not failed and batch.device == meta and batch.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_data_prefetch_batches_are_read_ahead_of_the_one_decoded(tmp_path, prefetch):
    """While a batch is decoded, data.prefetch more are being read on the read threads (what the setting
    promises for nvjpeg, as for DALI): counted as the reads started once the first batch is out."""
    files = write_colors(tmp_path, 32)
    loader = NvjpegLoader(Feed(files, 16, 4, seed=1, device=CPU, threads=2, prefetch=prefetch))
    rows = []
    real = loader._read_row
    loader._read_row = lambda row: rows.append(row) or real(row)
    batches = loader.epoch(0)
    next(batches)
    loader.pool.shutdown(wait=True)  # every read started has run
    assert len(rows) == 1 + prefetch
    batches.close()
