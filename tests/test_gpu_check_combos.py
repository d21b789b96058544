"""bench/gpu_check.py's combos verdict: every figure it compares with eager fp32 fails the combo when
it is off by more than its bound (on CPU, real training runs of the tiny model, a few seconds).

test_gpu_check.py runs the combos part on CPU, where every combo matches, so a comparison that was
never made (the EMA's, say) would pass it unnoticed. Here the combo's own run is trained for real
and one of its figures is then moved past the bound, as a broken fast path would move it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_check_steps as steps  # noqa: E402

COMBO = steps.Combo(channels_last=False, ema=True)  # eager fp32 NCHW with an EMA: its own reference


def offset(run: dict, figure: str, by: float) -> None:
    if figure == "loss":
        run["losses"] = run["losses"] + by
    elif figure == "param":
        run["params"] = run["params"] + by
    else:
        run["ema"] = run["ema"] + by


@pytest.fixture
def check(monkeypatch, one_thread):
    """check(figure, by): check_combo(COMBO) on CPU with the combo's run (the second trained; the first
    is the reference) moved by `by` in one figure."""
    real = steps.train_combo

    def run(figure: str | None = None, by: float = 0.0) -> dict:
        calls = []

        def train(c, cuda, watch_syncs):
            out = real(c, cuda, watch_syncs)
            calls.append(c)
            if figure and len(calls) == 2:
                offset(out, figure, by)
            return out
        monkeypatch.setattr(steps, "train_combo", train)
        result = steps.check_combo(COMBO, cuda=False)
        assert calls == [COMBO.reference(), COMBO]
        return result
    return run


def test_a_combo_equal_to_its_reference_passes(check):
    r = check()
    assert r["ok"], r
    assert r["loss_diff"] == 0 and r["param_max"] == 0 and r["ema_mean"] == 0


@pytest.mark.parametrize("figure", ["loss", "param", "ema"])
def test_each_figure_past_its_bound_fails_the_combo(check, figure):
    loss_tol, _, param_tol = steps.tolerances(COMBO, False, 0)
    r = check(figure, 3 * (loss_tol if figure == "loss" else param_tol))
    assert not r["ok"], (figure, r)
    said = {"loss": "loss diff", "param": "param_max diff", "ema": "EMA mean diff"}[figure]
    assert said in r["error"], r["error"]


@pytest.mark.parametrize("at", range(steps.WARMUP, steps.STEPS))
def test_a_graph_compiled_at_any_timed_step_fails_the_combo(monkeypatch, one_thread, at):
    """The combo's graphs are counted when its warm-up ends, before its first timed step: a recompile at
    any step after that (here a graph compiled during that step of the combo's own run) is reported."""
    from fastdcgan.step import GANStep
    real_step, calls = GANStep.step, []

    def step(self, batch):
        calls.append(None)
        real_step(self, batch)
        if len(calls) == steps.STEPS + 1 + at:  # the combo's run (the reference's came first), step `at`
            torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(2))
    monkeypatch.setattr(GANStep, "step", step)
    r = steps.check_combo(COMBO, cuda=False)
    assert len(calls) == 2 * steps.STEPS
    assert r["graphs_total"] == r["graphs_after_warmup"] + 1, r
    assert not r["ok"] and "recompiled after warm-up" in r["error"], r


def test_the_warm_up_and_the_timed_steps_are_timed_apart(monkeypatch, one_thread):
    """warmup_s spans the WARMUP steps, step_ms is the mean of the steps after them: on a clock that
    advances 10 s in each warm-up step and 1 s in each timed one (the step itself is real)."""
    import time
    import types

    from fastdcgan.step import GANStep
    clock, calls, real_step = [0.0], [], GANStep.step

    def step(self, batch):
        real_step(self, batch)
        clock[0] += 10.0 if len(calls) < steps.WARMUP else 1.0
        calls.append(None)
    monkeypatch.setattr(GANStep, "step", step)
    monkeypatch.setattr(steps, "time", types.SimpleNamespace(perf_counter=lambda: clock[0],
                                                             monotonic=time.monotonic))
    r = steps.train_combo(COMBO, cuda=False, watch_syncs=False)
    assert len(calls) == steps.STEPS
    assert r["warmup_s"] == 10.0 * steps.WARMUP and r["step_ms"] == 1000.0, r
