"""bench/gpu_check.py keeps to its budget: a part gets at most the budget left, and one the budget's end
cuts short is `not finished (budget)`, not a part that ran on past it (on a lent GPU machine the lease
ends there, and the summary with it).

test_gpu_check.py checks the parts that are not started once the budget is spent; here a part is
started with less time left than its own limit (combos: 180 s on its own, ~1 minute on 2 cores).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILL_GRACE_S = 5  # gpu_check.KILL_GRACE_S


def test_a_part_started_near_the_budgets_end_is_stopped_there(tmp_path):
    budget = 22  # combos alone: it starts at once (MIN_PART_S = 20), with far less than the minute it needs
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
           "FASTDCGAN_FID_WEIGHTS": ""}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out), "--work",
                           str(tmp_path / "work"), "--only", "combos", "--budget-s", str(budget)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    results = json.loads((out / "results.json").read_text())
    combos = {p["name"]: p for p in results["parts"]}["combos"]
    # started, it is given the budget left, not its own 180 s (the start line says which) ...
    limit = float(re.search(r"combos: start \(limit (\d+) s\)", proc.stdout)[1])
    assert limit <= budget, proc.stdout[-3000:]
    assert results["elapsed_s"] <= budget + KILL_GRACE_S + 5, results["elapsed_s"]
    # ... and, cut short there (as on 2 cores, where it needs about a minute), it is the budget's, not a
    # failure of the code; a machine fast enough to finish it in time reports it passed
    if not combos["status"].startswith("ok"):
        assert combos["status"].startswith("not finished (budget)"), (combos["status"], proc.stdout[-3000:])
        assert proc.returncode == 3, proc.stdout[-3000:]


def test_a_part_that_failed_only_for_want_of_time_ran_out_of_it():
    """What gpu_check calls the budget's (ran_out_of_time), not the code's: a part killed at its limit or
    giving up just before it, or one whose only failure is the work its time did not reach, however
    early it said so (on a loaded machine the combos part has under 10 s left for a combo long before
    its limit). A real failure beside work not reached stays a failure."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check
    spent = "failed: 4 not run (the part's time was spent)"
    mixed = "failed: 1 combos failed: eager: loss differs; 3 not run (the part's time was spent)"
    cases = [("failed: timeout after 22 s", 22.0, {}, True), ("failed: exit 1: boom", 15.0, {}, True),
             (spent, 3.0, {"out_of_time": True}, True), (mixed, 3.0, {"out_of_time": False}, False),
             ("failed: exit 1: boom", 3.0, {}, False), ("ok", 22.0, {}, False)]
    for status, seconds, details, want in cases:
        record = {"status": status, "seconds": seconds, "details": details}
        assert gpu_check.ran_out_of_time(record, 22.0) == want, status


def test_the_combos_part_says_when_its_only_failure_is_the_time_it_lacked(tmp_path):
    """What ran_out_of_time reads: the combos part, left too little time for any combo, says its failure
    is only that (out_of_time); a part with a real failure does not (test_gpu_check_combos.py)."""
    import time
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check_steps as steps
    from gpu_check_common import Ctx
    ctx = Ctx(tmp_path, tmp_path, "", "", False, deadline=time.monotonic() + 5)
    r = steps.combos(ctx)
    assert r["status"].startswith("failed") and r["details"]["out_of_time"] is True, r["status"]
