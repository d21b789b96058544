"""The numbers of the speed columns, on a clock the test moves: images/s, data and compute time per
step, pauses and restarts; the warm-up's end and its costs; the FLOPs a step is credited with."""
import copy
import json

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_args
from fastdcgan import perf, train
from fastdcgan.model import build_models


class Clock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now

    def wait(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(perf, "time", c)
    return c


def run_steps(timer, clock, n, data_s, compute_s):
    for _ in range(n):
        clock.wait(data_s)
        timer.got_batch()
        clock.wait(compute_s)
        timer.step_done()


def test_a_window_reports_images_per_second_and_data_and_compute_per_step(clock):
    timer = perf.StepTimer(torch.device("cpu"))
    run_steps(timer, clock, 3, 0.002, 0.008)
    out = timer.read(batch_size=4)
    assert out == pytest.approx({"img_per_s": 12 / 0.030, "data_ms": 2.0, "compute_ms": 8.0})
    run_steps(timer, clock, 2, 0.010, 0.030)  # the next window starts at the read
    assert timer.read(batch_size=4) == pytest.approx({"img_per_s": 8 / 0.080, "data_ms": 10.0,
                                                      "compute_ms": 30.0})


def test_a_read_with_no_step_gives_nothing_and_starts_the_window_anew(clock):
    timer = perf.StepTimer(torch.device("cpu"))
    clock.wait(5.0)  # a warm-up that ended right at a log line
    assert timer.read(batch_size=4) == {}
    run_steps(timer, clock, 1, 0.0, 0.01)
    assert timer.read(batch_size=4)["img_per_s"] == pytest.approx(400)


def test_pauses_and_restarts_count_nowhere_on_a_cpu(clock):
    timer = perf.StepTimer(torch.device("cpu"))  # no sync given: a CPU step is done when it returns
    run_steps(timer, clock, 1, 0.001, 0.009)
    with timer.paused():
        clock.wait(1.0)  # a sample grid, a checkpoint
    run_steps(timer, clock, 1, 0.001, 0.009)
    assert timer.read(batch_size=1) == pytest.approx({"img_per_s": 100, "data_ms": 1.0, "compute_ms": 9.0})
    run_steps(timer, clock, 2, 0.5, 0.5)  # compile warm-up steps
    timer.restart()
    run_steps(timer, clock, 1, 0.001, 0.009)
    assert timer.read(batch_size=1) == pytest.approx({"img_per_s": 100, "data_ms": 1.0, "compute_ms": 9.0})


def test_no_peak_and_so_no_utilisation_on_a_cpu():
    assert perf.peak_flops(torch.device("cpu"), "fp32") is None


def new_graphs(k):
    counters["stats"]["unique_graphs"] += k  # what torch.compile does when it compiles


def test_the_warm_up_ends_at_the_first_step_after_the_first_that_compiles_nothing(clock):
    start = perf.compiled_graphs()
    w = perf.Warmup(True, setup_s=1.234, max_steps=10)
    for graphs, ended in ((0, False), (2, False), (1, False), (0, True)):
        new_graphs(graphs)
        clock.wait(1.2345)
        assert w.take_costs() == {}
        assert w.step_done() is ended
    assert perf.compiled_graphs() == start + 3
    assert w.take_costs() == {"setup_s": 1.23, "warmup_s": 4.94, "warmup_steps": 4,
                              "warmup_graphs": start + 3}
    assert w.take_costs() == {} and w.step_done() is False


def test_a_warm_up_that_keeps_compiling_ends_at_its_limit(clock):
    w = perf.Warmup(True, setup_s=0.0, max_steps=3)
    for ended in (False, False, True):
        new_graphs(1)
        assert w.step_done() is ended
    assert w.take_costs()["warmup_steps"] == 3
    w = perf.Warmup(True, setup_s=0.0)  # the trainer's: at most 10 steps
    for step in range(1, 11):
        new_graphs(1)
        assert w.step_done() is (step == 10)


def test_without_a_warm_up_the_first_row_gets_the_set_up_time_only(clock):
    w = perf.Warmup(False, setup_s=2.5)
    assert w.step_done() is False
    assert w.take_costs() == {"setup_s": 2.5} and w.take_costs() == {}


def test_the_step_flops_of_the_papers_model():
    """2.27 GFLOP per image at 64x64, ngf = ndf = 64 (perf.py's docstring, BENCHMARKS.md)."""
    G, D = build_models(100, 64, 64, 64)
    assert perf.step_flops(G, D, 100, 64) / 1e9 == pytest.approx(2.27, abs=0.005)


def test_each_extra_update_adds_its_own_passes_and_the_models_are_left_alone():
    """An extra D update adds G's forward and D's forward and backward on two batches; an extra G
    update adds G's forward, D's forward and input gradient, and G's backward: each the same again."""
    G, D = build_models(16, 16, 16, 32)
    before = [p.detach().clone() for p in [*G.parameters(), *D.parameters()]]
    G_forward = copy.deepcopy(G)
    f = {(d, g): perf.step_flops(G, D, 16, 32, d, g) for d, g in ((1, 1), (2, 1), (3, 1), (1, 2), (1, 3))}
    d_update, g_update = f[2, 1] - f[1, 1], f[1, 2] - f[1, 1]
    assert f[3, 1] - f[2, 1] == d_update and f[1, 3] - f[1, 2] == g_update
    assert 0 < g_update < d_update < f[1, 1]
    # the first G update reuses the D update's fakes; each later one draws its own: one G forward more
    with FlopCounterMode(display=False) as counter:
        G_forward.to("meta")(torch.empty(2, 16, 1, 1, device="meta"))
    g_phase = f[1, 1] - d_update
    assert g_update == g_phase + counter.get_total_flops() / 2
    after = [*G.parameters(), *D.parameters()]  # counted on copies: the models are untouched
    assert all(p.device.type == "cpu" and p.requires_grad and torch.equal(p, q)
               for p, q in zip(after, before, strict=True))


def test_mfu_is_against_the_peak_of_the_precision_the_run_trains_in(celeba, tmp_path, monkeypatch):
    """A GPU's peak depends on the precision (bf16 runs twice TF32's rate on an H100): the trainer asks for
    the peak of the precision it resolved and trains in, not another. Here each precision's peak is known
    and different, so the MFU per img/s of each run gives away the peak it was measured against."""
    peaks = {"fp32": 1e12, "bf16": 2e12, "fp16": 4e12}
    monkeypatch.setattr(perf, "peak_flops", lambda device, precision: peaks[precision])
    per_img_s = {}  # MFU per img/s: FLOPs per image over the peak, the same FLOPs in every run
    for precision in ("fp32", "bf16", "fp16", "auto"):
        run = tmp_path / precision
        assert train.main(tiny_args(celeba, run, precision=precision, train__batch_size=4,
                                    train__max_steps=3, log__every=1)) == 0
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        per_img_s[precision] = [r["mfu"] / r["img_per_s"] for r in rows if "mfu" in r]
    fp32 = per_img_s["fp32"][0]
    against = {p: [pytest.approx(fp32 / x, rel=1e-6) for x in v] for p, v in per_img_s.items()}
    assert against == {"fp32": [1.0] * 3, "bf16": [2.0] * 3, "fp16": [4.0] * 3, "auto": [1.0] * 3}, per_img_s
