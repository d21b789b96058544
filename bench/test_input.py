"""Input backends: images/s into the training device, each over the same JPEG folder.

The plain DataLoader with 1 and N workers (baseline: N = min(8, cores), the workers a user would
give it), DALI on CPU threads (1 and the same N), DALI with GPU decode (CUDA only, N threads),
torchvision's GPU decode without DALI (nvjpeg, CUDA only), and the decode-once cache (its one-off
build with each decoder this machine has, the one the cache picks first). A round is one epoch of
whole batches; epoch 0 is the untimed warm-up (worker start, pipeline build, first fill). On a GPU
each batch is waited for with an event on the consumer's stream (the one the training step would
use) before its time is taken: the latency is the batch's, not a queue's, and DALI's own streams
are not stalled.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from conftest import check_ran
from fastdcgan.data import cache, dali, nvjpeg
from fastdcgan.data.base import Feed
from fastdcgan.data.cache import CacheLoader, ensure
from fastdcgan.data.torch import TorchLoader

CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
BASELINE_WORKERS = max(2, min(8, CORES))
WORKERS = sorted({1, BASELINE_WORKERS})
needs_dali = pytest.mark.skipif(dali.unavailable_reason() is not None, reason=str(dali.unavailable_reason()))
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")


def measure(benchmark, loader, data, device: torch.device) -> list[float]:
    """Per-batch seconds over data.rounds timed epochs, after one untimed epoch (whose batches'
    device and layout are kept in `measure.delivered` for the row's check)."""
    for batch in loader.epoch(0):  # noqa: B007 (the last batch is read after the loop)
        pass
    measure.delivered = {"device": batch.device.type, "dtype": str(batch.dtype).removeprefix("torch."),
                         "nhwc": tuple(batch.shape[1:]) == (data.image_size, data.image_size, 3)}
    times: list[float] = []
    epochs = iter(range(1, 10**6))
    arrived = torch.cuda.Event() if device.type == "cuda" else None

    def one_epoch():
        t = time.perf_counter()
        for _batch in loader.epoch(next(epochs)):
            if arrived is not None:  # the batch is on the device for this stream's next kernel
                arrived.record()
                arrived.synchronize()
            now = time.perf_counter()
            times.append(now - t)
            t = now

    benchmark.pedantic(one_epoch, rounds=data.rounds, iterations=1)
    return times


@pytest.mark.parametrize("workers", WORKERS, ids=[f"{w}w" for w in WORKERS])
def test_torch_dataloader(benchmark, bench_data, bench_record, workers):
    device = torch.device("cuda" if CUDA else "cpu")
    loader = TorchLoader(Feed(bench_data.files, bench_data.image_size, bench_data.batch, seed=0,
                              device=device, workers=workers))
    times = measure(benchmark, loader, bench_data, device)
    row = bench_record("input", f"torch {workers} workers", times, bench_data.batch,
                       baseline=workers == BASELINE_WORKERS)
    check_ran(row, {"device": device.type, "dtype": "uint8", "nhwc": True, "workers": workers},
              {**measure.delivered, "workers": loader.loader.num_workers})


@needs_dali
@pytest.mark.parametrize("threads", WORKERS)
def test_dali_cpu(benchmark, bench_data, bench_record, threads):
    loader = dali.DaliLoader(Feed(bench_data.files, bench_data.image_size, bench_data.batch, seed=0,
                                  device=CPU, threads=threads))
    times = measure(benchmark, loader, bench_data, CPU)
    row = bench_record("input", f"dali cpu {threads} threads", times, bench_data.batch)
    check_ran(row, {"device": "cpu", "dtype": "uint8", "nhwc": True, "threads": threads, "decoder": "cpu"},
              {**measure.delivered, "threads": loader.pipe.num_threads,
               "decoder": "cpu" if loader.pipe.device_id is None else "mixed", "pipelines": loader.builds})


@needs_dali
@needs_cuda
def test_dali_gpu(benchmark, bench_data, bench_record):
    device = torch.device("cuda")
    loader = dali.DaliLoader(Feed(bench_data.files, bench_data.image_size, bench_data.batch, seed=0,
                                  device=device, threads=BASELINE_WORKERS))
    times = measure(benchmark, loader, bench_data, device)
    row = bench_record("input", f"dali mixed {loader.threads} threads", times, bench_data.batch,
                       gpu=torch.cuda.get_device_name(), hw_decoder_load=dali.HW_DECODER_LOAD)
    check_ran(row, {"device": "cuda", "dtype": "uint8", "nhwc": True, "threads": loader.threads,
                    "decoder": "mixed"},
              {**measure.delivered, "threads": loader.pipe.num_threads,
               "decoder": "cpu" if loader.pipe.device_id is None else "mixed"})


@needs_cuda
def test_nvjpeg_gpu(benchmark, bench_data, bench_record):
    device = torch.device("cuda")
    loader = nvjpeg.NvjpegLoader(Feed(bench_data.files, bench_data.image_size, bench_data.batch, seed=0,
                                      device=device, threads=BASELINE_WORKERS))
    times = measure(benchmark, loader, bench_data, device)
    row = bench_record("input", f"nvjpeg (torchvision) {BASELINE_WORKERS} read threads", times,
                       bench_data.batch, gpu=torch.cuda.get_device_name())
    check_ran(row, {"device": "cuda", "dtype": "uint8", "nhwc": True},
              {**measure.delivered, "cpu_fallbacks": loader.decoder.fallbacks})


def build(bench_data, tmp_path_factory, decoder: str | None = None):
    """A cache built from scratch into a fresh folder (never a reused one): (report, seconds)."""
    from fastdcgan.data.folder import scan
    # the files' verdicts and sizes, as the trainer has them (cached: no decode)
    images = scan(bench_data.root)
    assert images.files == bench_data.files
    device = torch.device("cuda" if CUDA else "cpu")
    old = os.environ.get("FASTDCGAN_CACHE")
    os.environ["FASTDCGAN_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    try:
        t = time.perf_counter()
        report = ensure(images, bench_data.image_size, device, decoder=decoder)
        return report, time.perf_counter() - t
    finally:
        if old is None:
            del os.environ["FASTDCGAN_CACHE"]
        else:
            os.environ["FASTDCGAN_CACHE"] = old


@pytest.fixture(scope="module")
def built_cache(bench_data, tmp_path_factory):
    """The cache as the trainer builds it (the fastest decoder here); timed as a row of its own."""
    return build(bench_data, tmp_path_factory)


def test_cache_build(benchmark, bench_data, bench_record, built_cache):
    report, seconds = built_cache
    # the build ran once, in the fixture; --benchmark-only keeps this
    benchmark.pedantic(lambda: None, rounds=1)
    bench_record("input", "cache build (once)", [seconds], report.images, decoder=report.decoder,
                 kind=cache.decoder_kind(torch.device("cuda" if CUDA else "cpu")),
                 note="one pass; p50=p95=whole build")


def _decoders_here() -> list[str]:
    device = torch.device("cuda" if CUDA else "cpu")
    have = {"dali-mixed": CUDA and dali.unavailable_reason() is None,
            "torchvision-cuda": nvjpeg.unavailable_reason(device) is None,
            "torchvision-cpu": nvjpeg.decoder_missing_reason() is None,
            "dali-cpu": dali.unavailable_reason() is None, "pil": True}
    return [d for d in cache.DECODERS if have[d]]


@pytest.mark.parametrize("decoder", _decoders_here())
def test_cache_build_by_decoder(benchmark, bench_data, bench_record, tmp_path_factory, decoder):
    """Each decoder the cache could use here, so that its choice (cache.decoder_kind) stays the fastest."""
    report, seconds = build(bench_data, tmp_path_factory, decoder)
    benchmark.pedantic(lambda: None, rounds=1)
    bench_record("input", f"cache build by {decoder}", [seconds], report.images, decoder=report.decoder)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_cache(benchmark, bench_data, bench_record, built_cache, device):
    device = torch.device(device)
    loader = CacheLoader(Feed(bench_data.files, bench_data.image_size, bench_data.batch, device=device),
                         built_cache[0].folder)
    times = measure(benchmark, loader, bench_data, device)
    row = bench_record("input", f"cache {device.type}", times, bench_data.batch)
    held = "gpu" if loader.gpu_data is not None else "pinned host" if device.type == "cuda" else "host"
    check_ran(row, {"device": device.type, "dtype": "uint8", "nhwc": True,
                    "held": "host" if device.type == "cpu" else "gpu"}, {**measure.delivered, "held": held})
