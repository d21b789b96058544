"""What the parts of bench/gpu_check.py share: their results, how they run commands, their Ctx.

A part gets a Ctx (where to write, the data, CUDA or not, its deadline) and returns a result:
ok(figure, **details), failed(why, figure, **details) or skipped(why). It runs in a process of its
own; the commands it starts run in process groups of their own, killed at their time limits and
when the part is told to stop (SIGTERM). The parts themselves, one function each: gpu_check_steps.py
(cuda-tests, combos, resume, autotune: the test suites and the training step's checks) and
gpu_check_runs.py (env, trainer, bench, input, fid: the machine, and fastdcgan's commands run whole).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().with_name("gpu_check.py")
PY = sys.executable


# ----- results, commands, processes -----

def ok(figure: str, **details) -> dict:
    return {"status": "ok", "figure": figure, "details": details}


def failed(why: str, figure: str = "", **details) -> dict:
    return {"status": "failed: " + clip(why, 300), "figure": figure, "details": details}


def skipped(why: str) -> dict:
    return {"status": "skipped: " + why, "figure": "", "details": {}}


def clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def last_meaningful(lines: list[str]) -> str:
    """The last line that says something (not blank, not a row of ^^^ under a traceback's line)."""
    for line in reversed(lines):
        if re.search(r"[A-Za-z0-9]", line) and not line.startswith("[gpu_check:"):
            return clip(line.strip(), 240)
    return "no output"


def error_line(lines: list[str]) -> str:
    """A command's own error line (`error: ...`, a pytest FAILED line), else its last meaningful line."""
    for line in reversed(lines):
        if line.startswith(("error:", "FAILED ", "ERROR ")) or re.match(r"\w+(Error|Exception): ", line):
            return clip(line, 240)
    return last_meaningful(lines)


LIVE: set[subprocess.Popen] = set()  # commands running now, killed with their groups on SIGTERM


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def on_sigterm(signum, frame) -> None:
    """A part told to stop (its time is up) takes the commands it started with it."""
    for proc in list(LIVE):
        kill_group(proc)
    os._exit(128 + signum)


def raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_cmd(cmd: list, timeout: float, log: Path | None = None, env: dict | None = None,
            watch=None) -> tuple[int | None, list[str]]:
    """Run cmd from the repository root in its own process group; its output goes to log (else to this
    process's output, the part's log) and is returned as lines. rc is None when it ran out of time.
    watch(proc, lines), if given, is called every 50 ms while it runs (to signal it, say)."""
    cmd = [str(c) for c in cmd]
    sink = open(log, "w") if log else sys.stdout
    sink.write(f"$ {' '.join(cmd)}\n")
    sink.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", cwd=REPO, env=env, start_new_session=True)
    LIVE.add(proc)
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            sink.write(line)
            sink.flush()
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    end = time.monotonic() + max(timeout, 1)
    try:
        while proc.poll() is None and time.monotonic() < end:
            if watch:
                watch(proc, lines)
            time.sleep(0.05)
        rc = proc.poll()
        if rc is None:
            sink.write(f"[gpu_check: killed after {timeout:.0f} s]\n")
    finally:
        kill_group(proc)
        LIVE.discard(proc)
        reader.join(5)
        if log:
            sink.close()
    return rc, lines


def pytest_counts(lines: list[str]) -> dict[str, int]:
    """From pytest's closing line ('3 passed, 1 skipped, 40 deselected in 12.3s')."""
    for line in reversed(lines):
        if (re.search(r"\bin [\d.]+s\b", line)
                and re.search(r"\d+ (passed|failed|skipped|error|deselected)", line)):
            return {k.rstrip("s"): int(n) for n, k in re.findall(r"(\d+) (\w+)", line)}
    return {}


def read_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError):
        return []


@dataclass
class Ctx:
    out: Path
    work: Path
    data: str             # --data, or "" for the built-in synthetic faces
    fid_weights: str
    cuda: bool
    deadline: float       # time.monotonic() by which the part must have written its result

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def data_root(self) -> str:
        """--data, else the built-in synthetic faces: made once (a few seconds), cached like the trainer's."""
        if self.data:
            return self.data
        from fastdcgan.data import synthetic
        return str(synthetic.default_root(n=2048 if self.cuda else 256))
