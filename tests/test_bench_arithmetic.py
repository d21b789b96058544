"""The benchmark's arithmetic on real inputs (bench/conftest.py, bench/gpu_check_runs.py), on CPU.

No test in tests/ ran a benchmark suite's rows (the bench part of gpu_check.py needs CUDA), so a
wrong rate, percentile or speed-up ratio would print without any check failing. Each figure is
checked here against its definition, on batch times chosen so that the plausible slips (mean for
median, a floored percentile index, an inverted ratio, another suite's baseline) give other numbers.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # gpu_check_runs imports gpu_check_common by its bare name
import gpu_check_runs  # noqa: E402


def load_bench_conftest():
    """bench/conftest.py as a module of its own (tests/ has a conftest module too)."""
    spec = importlib.util.spec_from_file_location("bench_conftest", BENCH / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bc = load_bench_conftest()
# 10 batches: a skewed set, whose mean (1.9 s) is not its median (1 s) and whose p95's index, 0.95 x 9
# = 8.55, rounds to the slow last batch but floors to a fast one.
BATCHES = [1.0] * 9 + [10.0]


@pytest.fixture
def record():
    rows_before = list(bc.ROWS)
    yield bc.bench_record.__wrapped__()
    bc.ROWS[:] = rows_before


def test_a_row_is_its_batches_images_over_their_time_with_the_median_and_the_nearest_rank_p95(record):
    row = record("step", "eager", BATCHES, 64, baseline=True, note="x")
    assert row.img_per_s == pytest.approx(64 * 10 / 19.0)
    assert row.p50_ms == pytest.approx(1000 * statistics.median(BATCHES)) == pytest.approx(1000.0)
    assert row.p95_ms == pytest.approx(10_000.0)
    assert row.max_ms == pytest.approx(10_000.0)
    assert row.baseline and row.extra == {"note": "x"} and bc.ROWS[-1] is row


@pytest.mark.parametrize("n", [2, 3, 10, 20, 21, 100])
def test_the_percentile_is_the_value_at_the_rounded_rank(n):
    values = [float(v) for v in range(n, 0, -1)]  # given in reverse: it must sort them
    for q in (0.0, 0.5, 0.95, 1.0):
        assert bc.percentile(values, q) == float(round(q * (n - 1)) + 1), (n, q)


def rel_column(lines: list[str]) -> dict[str, str]:
    """{variant: its 'vs base' cell} from the closing table (one-word variants, so columns split)."""
    return {line.split()[1]: line.split()[3] if line.split()[3].endswith("x") else ""
            for line in lines[2:]}


def test_the_table_gives_each_row_against_its_own_suites_baseline():
    Row = bc.Row
    rows = [Row("step", "eager", 100.0, 1, 1, baseline=True), Row("step", "fast", 250.0, 1, 1),
            Row("input", "torch", 40.0, 1, 1, baseline=True), Row("input", "dali", 10.0, 1, 1),
            Row("input", "build", 0.0, 5, 5),           # a one-off cost: no rate, no ratio
            Row("other", "alone", 70.0, 1, 1)]          # a suite without a baseline: no ratio
    rel = rel_column(bc._table(rows))
    assert rel == {"eager": "1.00x", "fast": "2.50x", "torch": "1.00x", "dali": "0.25x", "build": "",
                   "alone": ""}


def test_a_row_that_does_not_report_a_setting_its_name_claims_fails():
    def row():
        return bc.Row("step", "+ compile", 1.0, 1, 1)
    bc.check_ran(row(), {"compile": "default"}, {"compile": "default", "graphs": False})  # as claimed
    with pytest.raises(AssertionError, match="did not run what its name says"):
        bc.check_ran(row(), {"compile": "default"}, {"compile": "off"})
    with pytest.raises(AssertionError, match="did not run what its name says"):
        bc.check_ran(row(), {"compile": "default", "graphs": True}, {"compile": "default"})  # not said


def test_gpu_checks_speed_up_is_the_row_over_its_suites_baseline():
    rows = [{"suite": "step", "variant": "eager fp32 NCHW", "img_per_s": 200.0, "baseline": True},
            {"suite": "step", "variant": "all", "img_per_s": 900.0, "baseline": False},
            {"suite": "e2e", "variant": "torch fp32", "img_per_s": 50.0, "baseline": True},
            {"suite": "e2e", "variant": "fast preset", "img_per_s": 100.0, "baseline": False}]
    assert gpu_check_runs.versus_baseline(rows, rows[1]) == " = 4.50x eager fp32 NCHW"
    assert gpu_check_runs.versus_baseline(rows, rows[3]) == " = 2.00x torch fp32"
    assert gpu_check_runs.versus_baseline(rows, rows[0]) == ""  # the baseline itself
