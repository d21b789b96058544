"""A compiled run's img/s windows leave the compile warm-up out: the first log row after the warm-up
times only the steps after it (perf.Warmup, Run._loop's timer.restart).

test_perf_accounting.py checks Warmup and StepTimer apart; nothing checked that the trainer restarts
its timer when the warm-up ends, so the compile's tens of seconds could sit in the first img/s row.
The check counts steps, not seconds: each window's step count, as StepTimer.read sees it.
"""
from __future__ import annotations

import json

import torch

from conftest import tiny_args
from fastdcgan import perf
from fastdcgan.train import main


def test_the_first_window_after_a_compile_warm_up_times_only_the_steps_after_it(celeba, tmp_path,
                                                                                monkeypatch):
    windows = []  # the steps in each window, at each read
    read = perf.StepTimer.read

    def counting_read(self, batch_size):
        windows.append(self.steps)
        return read(self, batch_size)
    monkeypatch.setattr(perf.StepTimer, "read", counting_read)
    torch._dynamo.reset()
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, compile="default", log__every=4, train__max_steps=8)) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]
    warm = rows[0]["warmup_steps"]  # the warm-up ends inside the first window (2 steps on CPU)
    assert 2 <= warm < 4, rows[0]
    assert windows == [4 - warm, 4], (windows, warm)
