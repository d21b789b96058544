"""The benchmark suites' own rows (bench/test_step.py, test_input.py, test_train.py) and the figures of
bench/conftest.py that test_bench_arithmetic.py does not read (max, one-off costs, the table's columns,
the CPU clock), on CPU at tiny sizes.

No test ran a suite's functions, so a row that timed its warm-up, counted from the epoch's start, named
another row its baseline or trained at another size than the row says would print unnoticed. Here each
suite's functions run for real on a few tiny images; only pytest-benchmark's `benchmark` fixture is stood
in for (it calls what it is given, `rounds` times, as pedantic does).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_colors

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str, bench_conftest=None):
    """A file of bench/ as a module of its own; its `from conftest import ...` gets bench/conftest.py
    (tests/conftest.py holds that name in this process)."""
    spec = importlib.util.spec_from_file_location(f"bench_suite_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    saved = sys.modules.get("conftest")
    try:
        if bench_conftest is not None:
            sys.modules["conftest"] = bench_conftest
        spec.loader.exec_module(module)
    finally:
        if saved is not None:
            sys.modules["conftest"] = saved
    return module


bc = load("conftest")


class Benchmark:
    """pytest-benchmark's fixture as the suites use it: pedantic(fn, rounds, iterations=1) calls fn
    `rounds` times; the wall time of those calls is kept."""
    def __init__(self):
        self.wall = 0.0

    def pedantic(self, fn, rounds=1, iterations=1, **_):
        t = time.perf_counter()
        for _ in range(rounds * iterations):
            fn()
        self.wall += time.perf_counter() - t


@pytest.fixture
def record():
    """bench/conftest.py's bench_record, its rows kept apart for the test."""
    before = list(bc.ROWS)
    yield bc.bench_record.__wrapped__()
    bc.ROWS[:] = before


def tiny(root: Path, files: list[Path], **kw) -> object:
    sizes = dict(batch=8, image_size=32, rounds=2, size="small", width=8, steps=2) | kw
    return bc.BenchData(root, files, **sizes)


# ----- bench/conftest.py -----

def test_a_rows_max_is_its_slowest_batch_wherever_it_came(record):
    row = record("step", "x", [1.0, 10.0, 2.0, 1.0], 8)
    assert row.max_ms == pytest.approx(10_000.0) and row.p50_ms == pytest.approx(1500.0)


def test_a_one_off_cost_is_its_seconds_in_milliseconds_beside_no_rate():
    before = list(bc.ROWS)
    try:
        row = bc.bench_record_once.__wrapped__()("e2e", "build", 2.5, images=10)
    finally:
        bc.ROWS[:] = before
    assert (row.img_per_s, row.p50_ms, row.p95_ms, row.max_ms) == (0.0, 2500.0, 2500.0, 2500.0)
    assert row.extra == {"images": 10}


def test_the_tables_columns_hold_the_figures_their_headings_name():
    rows = [bc.Row("step", "eager", 1000.0, 1.25, 2.5, 5.0, baseline=True),
            bc.Row("step", "fast", 2000.0, 0.5, 0.75, 3.0)]
    head, _, *lines = bc._table(rows)
    names = ["img/s", "vs base", "p50 ms", "p95 ms", "max ms"]
    ends = [head.index(n) + len(n) for n in names]  # the columns are right-aligned under their headings
    for row, line in zip(rows, lines, strict=True):
        cells = [line[: e].split()[-1] for e in ends]
        assert cells == [f"{row.img_per_s:,.0f}", f"{row.img_per_s / 1000:.2f}x", f"{row.p50_ms:.2f}",
                         f"{row.p95_ms:.2f}", f"{row.max_ms:.2f}"], (head, line)


def test_timed_calls_on_cpu_time_each_call_alone():
    pauses = iter([0.15, 0.02, 0.02, 0.02])
    times = bc.timed_calls(lambda: time.sleep(next(pauses)), 4, torch.device("cpu"))
    assert len(times) == 4
    for got, slept in zip(times, [0.15, 0.02, 0.02, 0.02], strict=True):
        assert slept <= got < slept + 0.1, times


# ----- bench/test_step.py -----

def test_the_step_suites_baseline_is_eager_fp32_nchw_and_only_it(tmp_path, record):
    suite = load("test_step", bc)
    data = tiny(tmp_path, [], rounds=1)
    rows = []
    for name in ("+ channels_last", "eager fp32 NCHW"):
        suite.test_step(Benchmark(), data, record, name)
        rows.append(bc.ROWS[-1])
    assert {r.variant: r.baseline for r in rows} == {"+ channels_last": False, "eager fp32 NCHW": True}
    for r in rows:
        assert r.suite == "step" and r.extra["ngf"] == 8 and r.extra["device"] == "cpu"


# ----- bench/test_input.py -----

@pytest.fixture
def folder(tmp_path):
    files = write_colors(tmp_path / "images", 24)
    return tmp_path / "images", files


def test_the_input_suites_baseline_is_the_dataloader_with_the_workers_a_user_gives_it(folder, record):
    suite = load("test_input", bc)
    data = tiny(*folder, rounds=1)
    for workers in suite.WORKERS:
        suite.test_torch_dataloader(Benchmark(), data, record, workers)
    rows = {r.variant: r for r in bc.ROWS[-len(suite.WORKERS):]}
    assert suite.BASELINE_WORKERS == max(2, min(8, suite.CORES)) and len(rows) == len(suite.WORKERS) >= 2
    assert {v: r.baseline for v, r in rows.items()} == {
        f"torch {w} workers": w == suite.BASELINE_WORKERS for w in suite.WORKERS}
    for w in suite.WORKERS:
        assert rows[f"torch {w} workers"].extra["workers"] == w


def test_each_batch_of_the_input_suite_is_timed_from_the_one_before(folder):
    """measure(): one sample per batch of each timed epoch, each the time since the last batch arrived, so
    that they add up to (at most) the timed epochs' wall time."""
    from fastdcgan.data.base import Feed
    from fastdcgan.data.torch import TorchLoader
    suite = load("test_input", bc)
    data = tiny(*folder, rounds=3)
    loader = TorchLoader(Feed(data.files, data.image_size, data.batch, seed=0, device=torch.device("cpu"),
                              workers=0))
    bench = Benchmark()
    times = suite.measure(bench, loader, data, torch.device("cpu"))
    assert len(times) == data.rounds * (len(data.files) // data.batch)
    assert all(t > 0 for t in times) and sum(times) <= bench.wall, (times, bench.wall)
    assert suite.measure.delivered == {"device": "cpu", "dtype": "uint8", "nhwc": True}


# ----- bench/test_train.py -----

def test_the_trainer_suite_times_the_windows_after_the_first_at_the_size_it_names(folder, tmp_path, capsys):
    suite = load("test_train", bc)
    data = tiny(*folder, batch=4)
    plain = ["data.backend=torch", "data.workers=0", "precision=fp32", "compile=off", "channels_last=false",
             "cuda_graphs=false", "model.nz=16", "device=cpu"]
    seconds, once, ran = suite.run_trainer(tmp_path, data, plain, capsys)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["img_per_s"] for r in rows if "img_per_s" in r]
    assert len(speeds) == suite.WINDOWS + 1
    assert seconds == pytest.approx([data.batch / s for s in speeds[1:]])  # the first window dropped
    assert ran["backend"] == "torch" and ran["workers"] == 0
    from fastdcgan.config import tomllib
    cfg = tomllib.loads((run / "config.toml").read_text())
    assert (cfg["data"]["image_size"], cfg["train"]["batch_size"], cfg["model"]["ngf"], cfg["model"]["ndf"]) \
        == (data.image_size, data.batch, data.width, data.width)


@pytest.mark.parametrize("per_batch, unit", [(0.5, "min"), (0.0005, "s")])
def test_the_first_epoch_adds_every_one_off_cost_to_the_epoch(tmp_path, record, per_batch, unit):
    """In the unit of the epoch beside it, also where the costs take the sum past 120 s."""
    suite = load("test_train", bc)
    data = tiny(tmp_path, [], batch=10)
    row = suite.record(record, "fast preset", [per_batch] * 2, data, once={"setup_s": 50.0, "warmup_s": 60.0})
    epoch = suite.CELEBA / (10 / per_batch)
    assert row.img_per_s == pytest.approx(10 / per_batch)
    scale = 60 if unit == "min" else 1
    assert row.extra["celeba_epoch"] == f"{epoch / scale:.1f} {unit}"
    assert row.extra["first_epoch"] == f"{(epoch + 110.0) / scale:.1f} {unit}"
