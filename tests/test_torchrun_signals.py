"""python -m fastdcgan.torchrun stopped by each signal a cluster or a terminal sends its agent: one line
naming that signal, and that signal's exit code (128 + N), as a process ended by it would give.

test_dist.py checks SIGTERM with a training run; an agent that answered every signal with SIGTERM's
code (143) passed it. A batch script or a shell reads 130 as Ctrl-C and 129 as a hang-up, so each
signal is checked here, with a worker that only waits (a few seconds each, no training).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import pathlib, signal, sys, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the agent relays its signal: leave quietly
    signal.signal(s, lambda *_: sys.exit(0))
pathlib.Path(sys.argv[1]).write_text("up")
time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signalled_agent_exits_with_that_signals_code_in_one_line(tmp_path, sig):
    worker, up = tmp_path / "worker.py", tmp_path / "up"
    worker.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, "-m", "fastdcgan.torchrun", "--standalone", "--nproc_per_node=1",
                             str(worker), str(up)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while not up.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert up.exists(), proc.communicate(timeout=30)[0] if proc.poll() is not None else "no worker"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, (proc.returncode, out)
    assert f"torchrun: {sig.name}: the workers were told to stop" in out, out
    assert "Traceback" not in out and "SignalException" not in out, out
