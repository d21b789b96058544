"""The training step alone: each fast switch added to the eager fp32 NCHW step, on one device batch.

No input pipeline: the same uint8 batch is already on the device, so the rows differ only in the
step. Compilation and CUDA-graph capture happen in the untimed warm-up. On a GPU each step is timed
with CUDA events; MFU = step FLOPs x img/s / the device's peak (fastdcgan/perf.py).
bf16 rows run only on CUDA: this project's CPUs have no native bf16 (autocast measured ~20x slower).
"""
from __future__ import annotations

import pytest
import torch

from conftest import check_ran, timed_calls
from fastdcgan import perf
from fastdcgan.model import build_models
from fastdcgan.step import GANStep, StepOptions, make_optimizers
from fastdcgan.state import configure_backends

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
NZ = 100

# name: (channels_last, precision, compile, cuda_graphs)
VARIANTS = {
    "eager fp32 NCHW": (False, "fp32", "off", False),
    "+ channels_last": (True, "fp32", "off", False),
    "+ bf16 autocast": (True, "bf16", "off", False),
    "+ compile": (True, "fp32", "default", False),
    "+ compile + bf16": (True, "bf16", "default", False),
    "+ cuda graphs (bf16)": (True, "bf16", "off", True),
    "all: compile + graphs + bf16": (True, "bf16", "default", True),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def needs(channels_last, precision, compile, graphs):
    if (precision == "bf16" or graphs) and not CUDA:
        return "needs CUDA (bf16 has no native support on this CPU; graphs are CUDA-only)"
    return None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_step(benchmark, bench_data, bench_record, name):
    channels_last, precision, compile, graphs = VARIANTS[name]
    why = needs(*VARIANTS[name])
    if why:
        pytest.skip(why)
    configure_backends(DEVICE)  # as the trainer runs it: cuDNN's benchmark mode on CUDA
    torch.manual_seed(0)
    size, width = bench_data.image_size, bench_data.width
    G, D = build_models(NZ, width, width, size)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    G.to(DEVICE, memory_format=fmt)
    D.to(DEVICE, memory_format=fmt)
    opt_g, opt_d = make_optimizers(G, D, 2e-4, 2e-4, (0.5, 0.999), compiled=compile != "off", graphs=graphs)
    torch._dynamo.reset()
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=NZ, amp_dtype=DTYPES[precision],
                                                  channels_last=channels_last, compile=compile,
                                                  cuda_graphs=graphs))
    batch = torch.randint(0, 256, (bench_data.batch, size, size, 3), dtype=torch.uint8, device=DEVICE)
    for _ in range(3):  # warm-up: compile, capture, allocator, cudnn algorithm choice
        gan.step(batch)
    if CUDA:
        torch.cuda.synchronize()
    times: list[float] = []
    benchmark.pedantic(lambda: times.extend(timed_calls(lambda: gan.step(batch), bench_data.steps, DEVICE)),
                       rounds=bench_data.rounds, iterations=1)
    row = bench_record("step", name, times, bench_data.batch, baseline=name == "eager fp32 NCHW",
                       ngf=width, device=DEVICE.type)
    check_ran(row, dict(zip(("channels_last", "precision", "compile", "graphs"), VARIANTS[name],
                            strict=True)), what_ran(gan))
    peak = perf.peak_flops(DEVICE, precision)
    if peak:
        flops = perf.step_flops(G, D, NZ, size)
        row.extra["mfu"] = f"{row.img_per_s * flops / peak:.1%}"


def what_ran(gan: GANStep) -> dict:
    """The step's configuration as its objects show it, not as it was asked for."""
    convs = [p for m in (gan.G, gan.D) for p in m.parameters() if p.dim() == 4]
    return {"channels_last": all(p.is_contiguous(memory_format=torch.channels_last) for p in convs),
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[gan.options.amp_dtype],
            "compile": ("default" if isinstance(gan.run_G, torch._dynamo.eval_frame.OptimizedModule)
                        else "off"),
            "graphs": gan.graph is not None}
