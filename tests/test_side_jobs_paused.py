"""Every side job of the loop (a grid, a checkpoint, the epoch plots, an FID score) runs inside a pause
of the img/s timer, at every step it falls on: mid-epoch, at an epoch's end and at the run's end.

test_perf.py checks that a pause counts nowhere; nothing checked that the trainer pauses for each job,
so a checkpoint's or a grid's seconds could sit in the img/s and MFU columns. Each job's call is
recorded with the number of pauses open around it (no timing).
"""
from __future__ import annotations

import contextlib

from conftest import tiny_args, write_tiny_fid_net
from fastdcgan import jobs, perf
from fastdcgan.train import main


def test_every_side_job_runs_inside_a_pause_of_the_timer(celeba, tmp_path, monkeypatch):
    open_pauses, calls = [0], []
    paused = perf.StepTimer.paused

    @contextlib.contextmanager
    def counting_paused(self):
        with paused(self):
            open_pauses[0] += 1
            try:
                yield
            finally:
                open_pauses[0] -= 1
    monkeypatch.setattr(perf.StepTimer, "paused", counting_paused)
    def recorded(real, job):
        def recording(self, *args, **kw):
            calls.append((job, open_pauses[0]))
            return real(self, *args, **kw)
        return recording
    for cls, name in ((jobs.Samples, "save"), (jobs.Checkpoints, "save"), (jobs.Plots, "draw"),
                      (jobs.FID, "score")):
        monkeypatch.setattr(cls, name, recorded(getattr(cls, name), f"{cls.__name__}.{name}"))
    fid_net = write_tiny_fid_net(tmp_path / "fid.pt")
    # 48 images at batch 8: 6 steps an epoch; jobs mid-epoch (steps 2, 3, 4), at epoch ends and at the end
    assert main(tiny_args(celeba, tmp_path / "run", sample__every=3, ckpt__every=4, fid__every=2,
                          fid__n=16, fid__batch=8, fid__weights=fid_net, train__max_steps=10)) == 0
    kinds = {job for job, _ in calls}
    assert kinds == {"Samples.save", "Checkpoints.save", "Plots.draw", "FID.score"}, calls
    assert all(depth > 0 for _, depth in calls), [c for c in calls if not c[1]]
