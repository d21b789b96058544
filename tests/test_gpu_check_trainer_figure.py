"""gpu_check's trainer part: its figure is the median img/s of the run's log rows after the first (the
first window holds the set-up's first steps), and the row list it reports is every row.

The part's commands are the trainer's two launches (stopped by SIGTERM, then resumed); here they are
stood in for by what they leave in the run directory (metrics.jsonl rows, STATUS, the weights and a
grid), so that the figure is checked on rows whose first is far off the rest. test_gpu_check.py runs
the part only on an empty folder, where it fails before any row.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_check_common as common  # noqa: E402
import gpu_check_runs as runs  # noqa: E402

# (step, img/s): the first launch's rows (the first one slow: the set-up's first steps), then the resumed
ROWS = [[(5, 12.0), (10, 1000.0)], [(15, 1200.0), (20, 1100.0), (60, 1300.0)]]


def test_the_figure_is_the_median_of_the_rows_after_the_first(tmp_path, monkeypatch):
    ctx = common.Ctx(tmp_path / "out", tmp_path / "work", str(tmp_path / "faces"), "", False,
                     time.monotonic() + 300)
    ctx.out.mkdir()
    run = ctx.work / "trainer-run"
    launches = []

    def launch(cmd, timeout, log=None, env=None, watch=None):
        """What one launch of the trainer leaves: its rows, and STATUS (stopped, then finished)."""
        rows = ROWS[len(launches)]
        launches.append(cmd)
        (run / "samples").mkdir(parents=True, exist_ok=True)
        with open(run / "metrics.jsonl", "a") as f:
            for step, speed in rows:
                f.write(json.dumps({"step": step, "img_per_s": speed, "loss_d": 1.0, "loss_g": 1.0}) + "\n")
        (run / "samples" / f"step_{rows[-1][0]:08d}.png").write_bytes(b"png")
        if len(launches) == 1:
            (run / "STATUS").write_text("stopped 10\n")
            return 75, ["stopped by SIGTERM at step 10"]
        (run / "generator.pth").write_bytes(b"weights")
        (run / "STATUS").write_text("finished 60\n")
        return 0, ["done: 60 steps"]
    monkeypatch.setattr(runs, "run_cmd", launch)
    result = runs.trainer(ctx)
    assert len(launches) == 2 and result["status"] == "ok", result
    speeds = [speed for rows in ROWS for _, speed in rows]
    assert result["figure"] == f"{statistics.median(speeds[1:]):,.0f} img/s", result["figure"]
    assert [r["img_per_s"] for r in result["details"]["rows"]] == speeds
