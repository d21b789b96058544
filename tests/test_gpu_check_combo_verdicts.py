"""bench/gpu_check_steps.py's combos verdicts beside test_gpu_check_combos.py's: a loss that is not finite
in either column fails a combo, every combo's parameter bound is one a missed Adam update exceeds, and a
combo that failed is the part's failure even when the part's time then ran out for the rest.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_check  # noqa: E402
import gpu_check_common as common  # noqa: E402
import gpu_check_steps as steps  # noqa: E402

COMBO = steps.Combo(channels_last=False)  # eager fp32 NCHW: its own reference


@pytest.mark.parametrize("column", [0, 1], ids=["loss_d", "loss_g"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_loss_not_finite_in_either_column_fails_the_combo(monkeypatch, one_thread, column, value):
    """A NaN makes the loss difference NaN, which no `>` bound catches: the finite check must."""
    real, calls = steps.train_combo, []

    def train(c, cuda, watch_syncs):
        out = real(c, cuda, watch_syncs)
        calls.append(c)
        if len(calls) == 2:  # the combo's run, not its reference's
            out["losses"][steps.STEPS - 2, column] = value
        return out
    monkeypatch.setattr(steps, "train_combo", train)
    r = steps.check_combo(COMBO, cuda=False)
    assert not r["ok"] and f"non-finite loss at step {steps.STEPS - 2}" in r["error"], r


def all_combos() -> list[tuple[steps.Combo, bool]]:
    return ([(c, True) for c in steps.combo_list(True) + steps.autotune_list(True)]
            + [(c, False) for c in steps.combo_list(False)])


@pytest.mark.parametrize("combo, cuda", all_combos(), ids=lambda x: getattr(x, "slug", str(x)))
def test_every_combos_parameter_bound_is_below_what_one_missed_update_moves(combo, cuda):
    """One Adam step moves a weight by about lr: a bound at lr / 2 or under (the mean, or the max on CPU)
    sees a missed or doubled update; fp16's grows only by the updates its scaler skipped."""
    loss_tol, key, bound = steps.tolerances(combo, cuda, skipped_updates=0)
    assert key in ("param_mean", "param_max") and 0 < bound <= steps.LR / 2, (combo.name, bound)
    assert 0 < loss_tol <= 0.1
    if combo.precision == "fp16":
        assert steps.tolerances(combo, cuda, 3)[2] == pytest.approx(steps.LR * 3.5)


def test_a_combo_that_failed_fails_the_part_even_when_its_time_then_ran_out(tmp_path, monkeypatch):
    """The first combo fails (its numbers past a bound); the part's time is then spent, so the rest are not
    run. The failure is the code's: the part must not say its only failure was time."""
    ctx = common.Ctx(tmp_path, tmp_path, "", "", False, time.monotonic() + 300)
    ran = []

    def combo(cmd, timeout, log=None, env=None, watch=None):
        slug = cmd[cmd.index("--combo") + 1]
        ran.append(slug)
        (tmp_path / "combos" / f"{slug}.json").write_text(json.dumps(
            {"ok": False, "error": "loss diff 3.0e-03 > 1e-05", "loss_diff": 3e-3}))
        ctx.deadline = time.monotonic()  # the part's time is spent
        return 0, []
    monkeypatch.setattr(steps, "run_cmd", combo)
    r = steps.combos(ctx)
    assert len(ran) == 1 and r["status"].startswith("failed: 1 combos failed"), r["status"]
    assert r["details"]["out_of_time"] is False
    record = dict(r, seconds=5.0)
    assert not gpu_check.ran_out_of_time(record, 180.0)
