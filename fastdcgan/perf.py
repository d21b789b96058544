"""What a step costs and how close it runs to the hardware: FLOPs, peak rates, data vs compute time.

FLOPs per image are counted once, by running the step's passes on the meta device under torch's
FlopCounterMode: convolutions and transposed convolutions, forward and backward, as the step runs
them (G forward per D update and per extra G update; D forward on real, detached fake and fake;
backward through D for both phases and through G for the G phase; no weight gradients for D in the
G phase). Elementwise work (BatchNorm, activations, Adam) is left out, as MFU figures usually do.
At 64x64 with ngf = ndf = 64 that is 2.27 GFLOP per image.

Utilisation = FLOPs per image x images per second / peak, with the peak the dense tensor-core rate
of the precision in use (PEAK_TFLOPS; fp32 uses the TF32 rate only where TF32 is enabled).
"""
from __future__ import annotations

import contextlib
import copy
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets, matched against the device's name in
# this order (the first key found in the name wins, so the specific variants come first). "tf32" is
# the tensor-core rate fp32 convolutions run at under cuDNN's default (allow_tf32 = True).
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "H200 NVL": {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "GH200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},   # SXM: "NVIDIA H100 80GB HBM3"
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},   # SXM: "NVIDIA H200"
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def step_flops(G: nn.Module, D: nn.Module, nz: int, image_size: int, d_steps: int = 1,
               g_steps: int = 1) -> float:
    """FLOPs of one training step, per image."""
    Gm, Dm = copy.deepcopy(G).to("meta"), copy.deepcopy(D).to("meta")
    n = 2
    with FlopCounterMode(display=False) as counter:
        real = torch.empty(n, 3, image_size, image_size, device="meta")
        for _ in range(d_steps):
            fake = Gm(torch.empty(n, nz, 1, 1, device="meta"))
            (Dm(real).sum() + Dm(fake.detach()).sum()).backward()
        Dm.requires_grad_(False)
        for i in range(g_steps):
            if i > 0:
                fake = Gm(torch.empty(n, nz, 1, 1, device="meta"))
            Dm(fake).sum().backward()
    return counter.get_total_flops() / n


def peak_for(name: str, precision: str, tf32: bool) -> float | None:
    """Peak FLOP/s of the GPU called `name` at this precision, or None when it is not in the table.

    The step is convolutions, and cuDNN runs fp32 convolutions on TF32 tensor cores unless told not
    to (torch.backends.cudnn.allow_tf32, on by default): then the TF32 rate is fp32's ceiling.
    """
    if precision == "fp32" and tf32:
        precision = "tf32"
    for key, rates in PEAK_TFLOPS.items():
        if key in name:
            return rates[precision] * 1e12
    return None


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of the device at this precision, or None when unknown (CPUs, unlisted GPUs):
    MFU is given only against a known peak."""
    if device.type != "cuda":
        return None
    return peak_for(torch.cuda.get_device_name(device), precision, torch.backends.cudnn.allow_tf32)


class StepTimer:
    """Throughput of the training loop, and its time split into waiting for input and computing.

    Time spent on side work (samples, checkpoints, plots, FID) inside `paused()` counts nowhere. On
    CUDA the steps run ahead of the host, so a pause first waits for the device (`sync`): the work of
    the window's steps is counted in the window, and the pause's own GPU work (sampling, FID) is
    waited for before the next window starts. The compute time comes from CUDA events around each
    step, from a pool made once and reused, read only by `read()` (one sync per log line, never per
    step); on CPU a step is synchronous and the host clock suffices.
    """

    def __init__(self, device: torch.device, sync=None):
        self.cuda = device.type == "cuda"
        self.sync = sync or ((lambda: torch.cuda.synchronize(device)) if self.cuda else (lambda: None))
        self.pool: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # grows to a window's steps once
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start = self.mark = now
        self.steps, self.data, self.compute = 0, 0.0, 0.0

    def got_batch(self) -> None:
        now = time.perf_counter()
        self.data += now - self.mark
        self.mark = now
        if self.cuda:
            if self.steps == len(self.pool):
                self.pool.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self.pool[self.steps][0].record()

    def step_done(self) -> None:
        if self.cuda:
            self.pool[self.steps][1].record()
        else:
            self.compute += time.perf_counter() - self.mark
        self.steps += 1
        self.mark = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        self.sync()  # the window's steps end here, not inside the pause
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sync()  # the pause's device work ends before the window goes on
            spent = time.perf_counter() - t
            self.start += spent
            self.mark += spent

    def restart(self) -> None:
        """Drop everything so far (a compile warm-up) from the figures."""
        self.sync()
        self._reset(time.perf_counter())

    def read(self, batch_size: int) -> dict[str, float]:
        """img_per_s, and data_ms and compute_ms per step, since the last read; then start anew.
        Nothing when no step was timed (a log line right at the end of the warm-up)."""
        if not self.steps:
            self._reset(time.perf_counter())
            return {}
        if self.cuda:
            self.pool[self.steps - 1][1].synchronize()
            self.compute = sum(a.elapsed_time(b) for a, b in self.pool[:self.steps]) / 1000
        now = time.perf_counter()
        out = {"img_per_s": self.steps * batch_size / max(now - self.start, 1e-9),
               "data_ms": 1000 * self.data / self.steps, "compute_ms": 1000 * self.compute / self.steps}
        self._reset(now)
        return out


def compiled_graphs() -> int:
    """How many graphs torch.compile has made in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


class Warmup:
    """The compile/capture warm-up, and what the set-up cost: the first log row after it says so once.

    With compile or CUDA graphs the warm-up lasts until a step compiles no new graph (at least two
    steps, at most max_steps), so no recompile lands in a timed window. `costs` is what that first row
    gets: setup_s (scan, cache build, models) and, after a warm-up, warmup_s, warmup_steps, warmup_graphs.
    """

    def __init__(self, needed: bool, setup_s: float, max_steps: int = 10):
        self.pending, self.max_steps = needed, max_steps
        self.start, self.steps, self.graphs = time.perf_counter(), 0, compiled_graphs()
        self.costs = {"setup_s": round(setup_s, 2)}

    def step_done(self) -> bool:
        """Count a step; True when this step ended the warm-up."""
        if not self.pending:
            return False
        self.steps += 1
        before, self.graphs = self.graphs, compiled_graphs()
        if self.steps < self.max_steps and (self.steps == 1 or self.graphs != before):
            return False
        self.pending = False
        self.costs.update(warmup_s=round(time.perf_counter() - self.start, 2), warmup_steps=self.steps,
                          warmup_graphs=self.graphs)
        return True

    def take_costs(self) -> dict:
        """The costs, once the warm-up is over, for one log row; then nothing."""
        if self.pending:
            return {}
        costs, self.costs = self.costs, {}
        return costs
