"""The DALI input backend on CPU: output format, geometry against the plain path, order, sharding,
the reader's file lists (one pipeline across epochs, a new one exactly where a resume starts)."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from conftest import color_ids, needs_cuda, tiny_args, weights, write_colors
from fastdcgan.data import InputFailure
from fastdcgan.data import dali
from fastdcgan.data.base import Feed
from fastdcgan.data.dali import DaliLoader, build_pipeline, is_file_failure, regions_of, unavailable_reason
from fastdcgan.data.folder import find_images, scan
from fastdcgan.data.order import epoch_batches
from fastdcgan.data.synthetic import make_faces
from fastdcgan.data.torch import ImageFiles
from fastdcgan.train import main

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Real 178x218 CelebA-layout JPEGs (quality 90), as the plain and DALI paths both read them."""
    root = make_faces(tmp_path_factory.mktemp("faces"), n=32, workers=1)
    return sorted((root / "img_align_celeba").glob("*.jpg"))


def test_batches_are_uint8_nhwc_channels_last_full_range(faces):
    loader = DaliLoader(Feed(faces, 32, 8, seed=0, device=CPU, threads=2))
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 4
    b = batches[0]
    assert b.shape == (8, 32, 32, 3) and b.dtype == torch.uint8 and b.device == CPU
    assert b.permute(0, 3, 1, 2).is_contiguous(memory_format=torch.channels_last)
    assert b.min() < 40 and b.max() > 215 and b.float().std() > 20  # real pictures, not padding


@pytest.mark.parametrize("size", [32, 64])
def test_geometry_matches_the_plain_path(faces, size):
    loader = DaliLoader(Feed(faces, size, 16, seed=3, device=CPU, threads=2))
    plain = ImageFiles(faces, size)
    for b, batch in enumerate(loader.epoch(0)):
        ref = torch.stack([plain[i] for i in epoch_batches(len(faces), 16, 3, 0)[b].tolist()])
        mad = (batch.float() - ref.float()).abs().mean().item()
        # measured 0.08 (32) and 0.12 (64): JPEG decoders and rounding. A nearest-neighbour or
        # non-antialiased resize measured 2.0-4.9 here, so 0.3 tells a wrong filter apart.
        assert mad < 0.3, mad


def test_decoding_only_the_kept_rows_changes_nothing(faces):
    """The CPU decoder decodes just the rectangle the resize reads (decode.decode_region); against
    decoding every row, at most 1 grey level on a few pixels (float rounding of the shifted region)."""
    files = [str(f) for f in faces]
    for size in (32, 64):
        out = []
        for whole in (True, False):
            pipe = build_pipeline(files, list(range(32)), regions_of([(178, 218)] * 32, size, whole), size,
                                  32, 2, 1, CPU)
            out.append(pipe.run()[0].as_tensor())
        a, b = (torch.from_numpy(np.array(x)).float() for x in out)
        assert (a - b).abs().max() <= 1 and (a - b).abs().mean() < 0.01
        lo, hi = regions_of([(178, 218)], size, whole=False)[0, :4].reshape(2, 2)
        assert hi[0] - lo[0] < 218  # fewer rows than the image has: the point of it


def test_images_of_several_sizes_in_one_batch(tmp_path, faces, monkeypatch):
    """Sizes that differ reach DALI per sample (an external_source of regions beside the reader), in
    step with the reader's files: each image still matches the plain path, across the ends of the
    pipeline's file lists too (the reader reads ahead past a list's end, and so must the regions)."""
    from PIL import Image
    files = []
    for i, (w, h) in enumerate([(178, 218), (100, 130), (218, 178), (64, 64), (150, 90), (178, 218)] * 2):
        files.append(tmp_path / f"{i:02d}.jpg")
        Image.open(faces[i]).resize((w, h)).save(files[-1], quality=92)
    monkeypatch.setattr(dali, "LIST_SAMPLES", 24)  # a list: 2 epochs of 12 images
    loader = DaliLoader(Feed(files, 32, 4, seed=0, device=CPU, threads=2))
    plain = ImageFiles(files, 32)
    for e in range(5):
        for b, batch in enumerate(loader.epoch(e)):
            ref = torch.stack([plain[i] for i in epoch_batches(12, 4, 0, e)[b].tolist()])
            assert (batch.float() - ref.float()).abs().mean() < 0.3, (e, b)
    assert loader.builds == 3


def test_sizes_from_the_scan_are_the_headers(tmp_path):
    write_colors(tmp_path / "a", 3)
    write_colors(tmp_path / "b", 2, size=(60, 30))
    images = scan(tmp_path)
    assert images.sizes == [(40, 48)] * 3 + [(60, 30)] * 2
    # the same as reading headers
    assert np.array_equal(
        DaliLoader(Feed(images.files, 16, 1, seed=0, device=CPU, sizes=images.sizes, threads=1)).regions,
        DaliLoader(Feed(images.files, 16, 1, seed=0, device=CPU, threads=1)).regions)


def test_wide_and_tall_images_keep_their_centre_square(tmp_path):
    # Black thirds on either side (or above and below) of a white centre square: only the white
    # square must survive, cropped, not squeezed in with the black.
    from PIL import Image
    for name, size, box in (("wide.png", (90, 30), (30, 0, 60, 30)), ("tall.jpg", (30, 90), (0, 30, 30, 60))):
        im = Image.new("RGB", size, (0, 0, 0))
        im.paste((255, 255, 255), box)
        im.save(tmp_path / name, quality=95)
    loader = DaliLoader(Feed([tmp_path / "wide.png", tmp_path / "tall.jpg"], 16, 1, seed=0, device=CPU,
                             threads=1))
    for batch in loader.epoch(0):
        assert batch.shape == (1, 16, 16, 3)
        assert batch[0, 2:-2, 2:-2].float().mean() > 245  # the edges may blend with the cut-off border


def test_one_pipeline_serves_epoch_after_epoch_and_a_resume_builds_one_exactly_there(tmp_path, monkeypatch):
    files = write_colors(tmp_path, 24)
    monkeypatch.setattr(dali, "LIST_SAMPLES", 60)  # a list: 3 epochs of 24 images
    loader = DaliLoader(Feed(files, 16, 4, seed=4, device=CPU, threads=1))
    for e in range(7):  # lists run out after epochs 2 and 5: a new pipeline carries on
        assert [color_ids(b) for b in loader.epoch(e)] == epoch_batches(24, 4, 4, e).tolist()
    assert loader.builds == 3
    batches = loader.epoch(7)
    next(batches)  # left after one batch
    assert [color_ids(b) for b in loader.epoch(7, start_batch=1)] == epoch_batches(24, 4, 4, 7).tolist()[1:]
    assert loader.builds == 3  # it went on where the last batch ended: no new pipeline
    assert [color_ids(b) for b in loader.epoch(9, start_batch=4)] == epoch_batches(24, 4, 4, 9).tolist()[4:]
    assert loader.builds == 4  # elsewhere: a new one, whose first batch is the one asked for


def test_a_batch_that_is_not_the_planned_one_ends_the_run(tmp_path):
    files = write_colors(tmp_path, 16)
    loader = DaliLoader(Feed(files, 16, 4, seed=0, device=CPU, threads=1))
    list(loader.epoch(0))
    # the pipeline's list was made for seed 0: its next batch is not seed 1's
    loader.feed = dataclasses.replace(loader.feed, seed=1)
    with pytest.raises(InputFailure, match="out of step"):
        list(loader.epoch(1))


def test_a_corrupt_file_never_reaches_dali(tmp_path):
    files = write_colors(tmp_path, 16)
    good = files[3].read_bytes()
    files[3].write_bytes(good[: len(good) // 3])  # truncated JPEG
    # Given it, a DALI pipeline dies: the point of validating first.
    pipe = build_pipeline([str(f) for f in find_images(tmp_path).files], list(range(16)),
                          regions_of([(40, 48)] * 16, 32, whole=False), 32, 16, 1, 1, CPU)
    with pytest.raises(RuntimeError):
        pipe.run()
    images = scan(tmp_path)
    assert [p.name for p, _ in images.skipped] == ["0003.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even the recovery path is needed
        ids = [i for b in DaliLoader(Feed(images.files, 32, 4, seed=0, device=CPU, threads=1)).epoch(0)
               for i in color_ids(b)]
    assert len(ids) == 12 and 3 not in ids


def test_resume_mid_epoch_with_dali_is_bit_identical(celeba, tmp_path, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(tiny_args(celeba, whole, data__backend="dali", train__max_steps=9)) == 0
    assert "input: backend dali" in capsys.readouterr().out
    assert main(tiny_args(celeba, split, data__backend="dali", train__max_steps=5)) == 0
    assert main(tiny_args(celeba, split, data__backend="dali", train__max_steps=9)) == 0
    a, b = weights(whole / "generator.pth"), weights(split / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def dali_error(path, tmp_path) -> RuntimeError:
    """The error a real CPU pipeline raises on this file."""
    pipe = build_pipeline([str(path)], [0], regions_of([(40, 48)], 16, whole=False), 16, 1, 1, 1, CPU)
    with pytest.raises(RuntimeError) as e:
        pipe.run()
    return e.value


def test_a_files_failure_is_told_from_any_other(tmp_path):
    (tmp_path / "text.jpg").write_text("not a picture")
    write_colors(tmp_path / "c", 1)
    whole = (tmp_path / "c" / "0000.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    for bad in ("text.jpg", "cut.jpg", "gone.jpg"):
        assert is_file_failure(dali_error(tmp_path / bad, tmp_path)), bad
    decoder_hit_by_cuda = str(dali_error(tmp_path / "text.jpg", tmp_path)).replace(
        "nvImageCodec failure: '#4'", "CUDA error: an illegal memory access was encountered")
    for other in ("CUDA error: an illegal memory access was encountered", decoder_hit_by_cuda,
                  "CUDA driver error: out of memory", "Critical error in pipeline: Error in CPU operator "
                  "`nvidia.dali.fn.resize`: something else"):
        assert not is_file_failure(RuntimeError(other)), other


def test_a_failure_that_is_not_a_files_ends_the_epoch_with_input_failure(tmp_path):
    """A CUDA error inside DALI must not be decoded around with PIL: the run must end (and checkpoint)."""
    files = write_colors(tmp_path, 8)
    loader = DaliLoader(Feed(files, 16, 4, seed=0, device=CPU, threads=1))
    batches = loader.epoch(0)
    next(batches)

    class DeadPipeline:
        def run(self):
            raise RuntimeError("Critical error in pipeline:\n"
                               "Error in MIXED operator `nvidia.dali.fn.decoders.image`\nencountered:\n"
                               "CUDA error: an illegal memory access was encountered")

    loader.pipe = DeadPipeline()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "decoding it with PIL" warning either
        with pytest.raises(InputFailure, match="DALI pipeline failed: CUDA error: an illegal memory access"):
            next(batches)


@needs_cuda
def test_the_gpu_decoder_matches_the_cpu_decoder(faces):
    """nvJPEG upsamples chroma as libjpeg-turbo does (jpeg_fancy_upsampling): the mixed decoder's batches
    are the CPU decoder's to within rounding, so the cache and a resumed run do not depend on it."""
    cuda = torch.device("cuda")
    cpu_batches = DaliLoader(Feed(faces, 64, 16, seed=0, device=CPU, threads=2)).epoch(0)
    gpu_batches = DaliLoader(Feed(faces, 64, 16, seed=0, device=cuda, threads=2)).epoch(0)
    for a, b in zip(cpu_batches, gpu_batches, strict=True):
        assert b.device.type == "cuda"
        mad = (a.float() - b.cpu().float()).abs().mean().item()
        assert mad <= 0.5, mad


def gpu_pipelines(monkeypatch) -> tuple[list, dict]:
    """Every pipeline dali.py makes from now on, built as for a GPU with DALI's own build step skipped
    (there is no GPU here), and the decoder's and the resize's arguments as the pipeline gave them:
    {name: (the device it runs on, its keyword arguments)}, what a GPU would run."""
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    made, ops = [], {}
    monkeypatch.setattr(Pipeline, "build", lambda self: None)
    real = dali.build_pipeline

    def recording(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]

    def recorded(name, op, device_of):
        def call(*args, **kw):
            out = op(*args, **kw)
            ops[name] = (device_of(args, kw, out), kw)
            return out
        return call

    monkeypatch.setattr(dali, "build_pipeline", recording)
    monkeypatch.setattr(fn.decoders, "image", recorded("decoder", fn.decoders.image,
                                                       lambda args, kw, out: kw.get("device")))
    monkeypatch.setattr(fn, "resize", recorded("resize", fn.resize, lambda args, kw, out: out.device))
    return made, ops


@pytest.mark.parametrize("caller", ["loader", "cache build"])
def test_the_gpu_pipeline_decodes_whole_images_on_the_ranks_own_gpu(faces, monkeypatch, caller):
    """What a GPU run's DALI pipeline is, checked on CPU: built for the feed's own GPU (cuda:1 for rank 1,
    not GPU 0 for every rank), with the mixed decoder (libjpeg-turbo's chroma upsampling, no EXIF turn),
    which decodes the whole image, so the resize must take plain_path_box of the whole image -- not the
    region relative to the CPU decoder's partial rectangle (a shifted crop on every GPU image). Both
    pipelines dali.py makes: the loader's and the cache build's (dali-mixed)."""
    (made, ops), gpu1 = gpu_pipelines(monkeypatch), torch.device("cuda:1")
    if caller == "loader":
        DaliLoader(Feed(faces[:8], 32, 4, device=gpu1, threads=3, prefetch=5))._build(0, 0)
    else:
        with pytest.raises(InputFailure):  # the pipeline was not built: running it fails, after its making
            next(dali.decode_chunks(faces[:8], 32, gpu1, 3, 4))
    (pipe,) = made
    assert pipe.device_id == 1 and pipe.num_threads == 3
    device, decoder = ops["decoder"]
    assert device == "mixed" and decoder["jpeg_fancy_upsampling"] and not decoder["adjust_orientation"]
    device, resize = ops["resize"]
    left, top, right, bottom = dali.plain_path_box(178, 218, 32)
    assert device == "gpu" and resize["size"] == (32, 32)
    assert resize["roi_start"] == pytest.approx([top, left])  # (y, x)
    assert resize["roi_end"] == pytest.approx([bottom, right])
    if caller == "loader":
        assert pipe.prefetch_queue_depth == 5


def test_a_resume_at_an_epochs_very_end_builds_no_pipeline_for_it(tmp_path):
    """A run resumed after an epoch's last batch asks for that epoch from batch len(): nothing is left of
    it, so no pipeline is built for it (the next epoch builds its own; a build for nothing costs a
    pipeline's start-up, and at a run's end a pipeline that never runs)."""
    files = write_colors(tmp_path, 16)
    loader = DaliLoader(Feed(files, 16, 4, seed=2, device=CPU, threads=1))
    assert list(loader.epoch(3, start_batch=len(loader))) == []
    assert loader.builds == 0 and loader.pipe is None
    assert [color_ids(b) for b in loader.epoch(4)] == epoch_batches(16, 4, 2, 4).tolist()
    assert loader.builds == 1
