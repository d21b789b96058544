"""Every way a run is stopped: the STOP file, a second Ctrl-C, a cluster's SIGTERM to every process
of the run, and torchrun's SIGTERM with slow steps.

Real processes, real signals; the tests poll for what they wait on (log rows, files, the signal
disposition in /proc) and never sleep a fixed time for correctness.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_celeba, tiny_args, wait_for_step
from fastdcgan import checkpoint
from fastdcgan.train import main
from test_dist import torchrun

# A step of ngf=ndf=64 at 64x64, batch 8, takes about 0.8 s of one core here: slow enough that a stop
# checked every 10 steps (the old design) would come 10+ s late, and torchrun kills 30 s after SIGTERM.
SLOW = dict(data__image_size=64, model__nz=100, model__ngf=64, model__ndf=64, log__every=1)
NEVER = dict(train__epochs=1000, ckpt__every=100000, sample__every=100000)


def start(root: Path, run: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastdcgan.train",
                             *tiny_args(root, run, **{**NEVER, **extra})],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def poll(condition, timeout: float, what: str) -> None:
    t = time.time()
    while not condition():
        if time.time() - t > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.005)


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler installed for sig (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    raise AssertionError("no SigCgt line")


def test_touching_stop_stops_a_single_process_run(celeba, tmp_path):
    run = tmp_path / "run"
    proc = start(celeba, run)
    wait_for_step(run, 4, proc)
    (run / "STOP").touch()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    state, step = (run / "STATUS").read_text().split()
    assert state == "stopped" and int(step) >= 4
    assert f"stopped by STOP file at step {step};" in out
    assert checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"] == int(step)


def _second_ctrl_c(celeba, tmp_path, while_checkpointing: bool):
    run = tmp_path / "run"
    proc = start(celeba, run, **SLOW)
    wait_for_step(run, 1, proc)
    proc.send_signal(signal.SIGINT)
    # The first Ctrl-C is handled (its handler gives SIGINT back to the default action) ...
    poll(lambda: not catches(proc.pid, signal.SIGINT) or proc.poll() is not None, 30, "first signal handled")
    if while_checkpointing:  # ... and the stop's checkpoint is being written
        poll(lambda: any((run / "checkpoints").glob("*.tmp")) or proc.poll() is not None, 60,
             "checkpoint started")
    t = time.time()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT, out  # killed by the signal itself: no checkpoint, no exit 75
    assert time.time() - t < 5  # at once, not after the step or the checkpoint
    assert (run / "STATUS").read_text().split()[0] == "running"
    return run


def test_a_second_ctrl_c_kills_at_once_in_a_slow_step(celeba, tmp_path):
    run = _second_ctrl_c(celeba, tmp_path, while_checkpointing=False)
    assert checkpoint.latest(run / "checkpoints") is None


def test_a_second_ctrl_c_kills_at_once_while_checkpointing(celeba, tmp_path):
    run = _second_ctrl_c(celeba, tmp_path, while_checkpointing=True)
    assert list((run / "checkpoints").glob("*.tmp"))  # killed mid-write: a partial temp file ...
    assert checkpoint.latest(run / "checkpoints") is None  # ... that is never taken for a checkpoint


def process_tree(pid: int) -> list[int]:
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(p for k in kids for p in process_tree(int(k)))]


def test_sigterm_to_every_process_of_the_run_twice_still_checkpoints(celeba, tmp_path):
    """How a cluster ends a job: slurmstepd sends SIGTERM to every process of the step, the input
    workers included, and torchrun relays another copy to its workers. Neither a worker's death nor
    the repeated signal may cost the stop's checkpoint (both did: a RuntimeError from the DataLoader,
    then the default action of the second SIGTERM)."""
    run = tmp_path / "run"
    proc = start(celeba, run, **SLOW, data__workers=2)
    wait_for_step(run, 1, proc)
    tree = process_tree(proc.pid)
    assert len(tree) == 3, tree  # the trainer and its 2 DataLoader workers

    def signal_all():
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):  # gone already: nothing of it to test
                os.kill(pid, signal.SIGTERM)

    signal_all()
    poll(lambda: any((run / "checkpoints").glob("*.tmp")) or proc.poll() is not None, 60,
         "checkpoint started")
    assert proc.poll() is None, proc.stdout.read()  # the second copy arrives while the checkpoint is written
    signal_all()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    state, step = (run / "STATUS").read_text().split()
    assert state == "stopped" and int(step) >= 1
    assert f"stopped by SIGTERM at step {step};" in out
    assert checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"] == int(step)
    assert not [p for p in tree if Path(f"/proc/{p}").exists() and "zombie" not in
                Path(f"/proc/{p}/status").read_text()]  # the workers are gone with it


def test_sigterm_to_torchrun_stops_slow_steps_in_time(tmp_path):
    """torchrun relays SIGTERM to its workers and kills them 30 s later: with slow steps every rank
    must still agree within a step or two, checkpoint at the same step and exit 75 well before that."""
    root, run = make_celeba(tmp_path / "celeba", 400), tmp_path / "run"  # 25 steps per epoch at 2 x 8
    proc = torchrun("-m", "fastdcgan.train", *tiny_args(root, run, **NEVER, **SLOW))
    wait_for_step(run, 2, proc)
    at_signal = logged_steps(run)[-1]
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    seconds = time.time() - t
    state, step = (run / "STATUS").read_text().split()
    assert state == "stopped", out
    assert at_signal < int(step) <= at_signal + 3, out  # within a step or two of the signal
    saved = checkpoint.list_checkpoints(run / "checkpoints")
    assert [checkpoint.load(p)["step"] for p in saved] == [int(step)]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step_s = (rows[-1]["time"] - rows[0]["time"]) / max(len(rows) - 1, 1)
    assert seconds < 20, f"{seconds:.1f} s to stop at {step_s:.1f} s per step\n{out}"


def test_the_ranks_check_for_a_stop_at_the_steps_rank_0_schedules_and_see_it_there(tmp_path, monkeypatch):
    """Under several processes the ranks ask each other at the steps rank 0 spaces about STOP_CHECK_S
    apart: at every step when a step takes longer, every ~STOP_CHECK_S / step time steps when faster
    (the pace measured from the launch's first two steps), and never at a step between (a check one
    step late is a stop one slow step late, which a launcher's grace period may not have). The same
    from whatever step the launch starts (a resumed one): paced from step 0, a launch resumed at step
    10,000 would put its second check up to 10,000 steps off. One rank's side, on a clock the test
    moves: no process group, so the collective gives back its own answer."""
    from fastdcgan import dist as fdist
    from fastdcgan import stop as fstop
    clock = [0.0]
    monkeypatch.setattr(fstop.time, "perf_counter", lambda: clock[0])
    asked = []
    agree = fdist.agree
    monkeypatch.setattr(fdist, "agree", lambda *a: (asked.append(step - start), agree(*a))[1])
    file = tmp_path / "STOP"
    for start in (0, 10_000):
        for seconds, expected in ((2.0, list(range(1, 11))), (fstop.STOP_CHECK_S / 4, [1, 2, 6, 10])):
            clock[0] += 100.0  # the launch's set-up, or a long wait before it
            s, asked[:] = fstop.Stop(file, fdist.Env(rank=0, world=2)), []
            for step in range(start + 1, start + 11):
                clock[0] += seconds
                assert s.requested(step) is None
            assert asked == expected, (start, seconds, asked)
        s, asked[:] = fstop.Stop(file, fdist.Env(rank=0, world=2)), []
        for step in range(start + 1, start + 11):  # the file appears after step 2's check: step 6's sees it
            clock[0] += fstop.STOP_CHECK_S / 4
            if step == start + 3:
                file.touch()
            if s.requested(step):
                break
        assert (step - start, asked) == (6, [1, 2, 6]) and s.requested(step + 1, now=True) == "STOP file"
        file.unlink()


@pytest.mark.parametrize("restarts", [0, 1, 2])
def test_workers_torchrun_restarts_after_a_stop_stop_at_once_and_a_new_launch_trains(celeba, tmp_path,
                                                                                   monkeypatch, restarts):
    """RUN_DIR/STOP, left by a stop: workers torchrun restarts in that launch (TORCHELASTIC_RESTART_COUNT
    1 or more: a rank failed after the stop) find it, keep it and stop before training, in an allocation
    being taken away; a new launch (count 0) clears it and trains on."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=2)) == 0
    (run / "STOP").write_text("stopped by SIGTERM at step 2\n")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restarts))
    code = main(tiny_args(celeba, run, train__max_steps=4))
    latest = checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"]
    assert (code, latest, (run / "STOP").exists()) == ((0, 4, False) if restarts == 0 else (75, 2, True))
