"""Peak rates by GPU name, and the step timer's accounting around pauses."""
import time

import pytest
import torch

from conftest import needs_cuda
from fastdcgan.perf import StepTimer, peak_for



@pytest.mark.parametrize("name, precision, tf32, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", True, 989),    # SXM
    ("NVIDIA H100 PCIe", "bf16", True, 756),
    ("NVIDIA H100 NVL", "bf16", True, 835),
    ("NVIDIA H200", "bf16", True, 989),
    ("NVIDIA H200 NVL", "fp16", True, 835),
    ("NVIDIA GH200 480GB", "bf16", True, 989),
    ("NVIDIA A100-SXM4-80GB", "bf16", True, 312),
    ("NVIDIA H100 80GB HBM3", "fp32", True, 494),    # cuDNN's default: fp32 convolutions on TF32
    ("NVIDIA H100 80GB HBM3", "fp32", False, 67),
    ("NVIDIA H100 PCIe", "fp32", True, 378),
])
def test_peak_rates_by_name(name, precision, tf32, tflops):
    assert peak_for(name, precision, tf32) == tflops * 1e12


def test_no_peak_for_an_unknown_gpu():
    assert peak_for("NVIDIA GeForce RTX 4090", "bf16", True) is None


def test_a_pause_ends_its_window_and_its_own_device_work_counts_nowhere():
    """Steps run ahead of the host on a GPU. `sync` stands for waiting on the device: here it sleeps
    for the device work still queued. A window of 5 steps of 0.05 s device time each is at most
    5 x 10 / 0.25 = 200 img/s; the 0.1 s pause and its 0.3 s of device work (a sample grid) count
    nowhere. Without the sync at the pause's start the steps' work would hide in the pause (~1000
    img/s); without the one at its end, the pause's work would land in the window (~90 img/s)."""
    queued: list[float] = []

    def sync():
        time.sleep(sum(queued))
        queued.clear()

    timer = StepTimer(torch.device("cpu"), sync=sync)
    for _ in range(4):
        timer.got_batch()
        queued.append(0.05)
        timer.step_done()
    with timer.paused():
        time.sleep(0.1)
        queued.append(0.3)
    timer.got_batch()
    queued.append(0.05)
    timer.step_done()
    sync()  # what read() does on CUDA: wait for the last step's event, queued behind the pause's work
    img_per_s = timer.read(batch_size=10)["img_per_s"]
    assert 150 < img_per_s <= 200, img_per_s


@needs_cuda
def test_cuda_events_come_from_a_pool_made_once():
    timer = StepTimer(torch.device("cuda"))
    x = torch.randn(1024, 1024, device="cuda")
    for _ in range(3):
        for _ in range(5):
            timer.got_batch()
            x = x @ x.T / 1024
            timer.step_done()
        pool = [id(e) for pair in timer.pool for e in pair]
        out = timer.read(batch_size=1)
        assert out["compute_ms"] > 0
    assert len(timer.pool) == 5 and [id(e) for pair in timer.pool for e in pair] == pool
