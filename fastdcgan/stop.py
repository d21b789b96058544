"""Stopping a run on request: SIGTERM, SIGINT or SIGUSR1, or `touch RUN_DIR/STOP` (how the sbatch
script relays a signal). The loop asks `Stop.requested` and raises StopRequested; the trainer
checkpoints, leaves RUN_DIR/STOP saying why, and exits with its stop code."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from . import dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_CHECK_S = 1.0       # seconds between stop checks when several processes must agree (rank 0's clock)


def leave_stop_signals_to_the_trainer(_worker_id: int = 0) -> None:
    """worker_init_fn for input worker processes. A cluster stops a job by signalling every process in
    it (slurmstepd signals the whole step, Ctrl-C the foreground group): a worker killed by that would
    crash the trainer mid-step, without a checkpoint. The trainer stops at a step boundary and shuts its
    workers down itself."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def stop_file_at_start(stop: Path) -> bool:
    """A stop leaves RUN_DIR/STOP. A fresh launch clears it; workers that torchrun restarts in the
    same launch find it and stop at once, rather than train on in an allocation being taken away."""
    stop.parent.mkdir(parents=True, exist_ok=True)
    if stop.exists() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return True
    stop.unlink(missing_ok=True)
    return False


class StopRequested(Exception):
    """A stop was asked for (why: the signal's name, or the STOP file): checkpoint and leave."""

    def __init__(self, why: str):
        super().__init__(f"stopped by {why}")
        self.why = why


class Stop:
    """Whether a stop is requested on any rank: every rank gets the same answer at the same step.

    One process reads its signal flag every step. Several must agree in a collective, held only at
    steps rank 0 spaces about STOP_CHECK_S apart by its clock and sends along with each answer: fast
    steps never wait on it, and slow ones are checked every step, so a stop takes effect within about
    a second or one step, well inside a launcher's grace period (torchrun: 30 s). The pace is measured
    from this launch's first two steps, which are checked whatever they take: it needs no step from
    the caller (a launch resumed at step 10,000 once paced its first check as if it had run them all,
    and put the next one 10,000 steps off).
    """

    def __init__(self, stop_file: Path, env: dist.Env):
        self.file = stop_file
        self.env = env
        self.signal: int | None = None
        self.next_check = 0  # every rank checks at this step (rank 0 sets it at each check)
        self.checked: tuple[int, float] | None = None  # rank 0: step and time of the last check
        self.found: dict = {}  # the handlers install() replaced

    def install(self) -> None:
        self.found = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def uninstall(self) -> None:
        """The handlers as install() found them: train() called in-process (a notebook, a test) must
        leave Ctrl-C raising KeyboardInterrupt, not killing the process."""
        for s, handler in self.found.items():  # None: a handler set outside Python, which cannot be put back
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self.found = {}

    def _on_signal(self, signum, frame) -> None:
        self.signal = self.signal or signum
        # A second Ctrl-C is a person who wants it to end now. A second SIGTERM or SIGUSR1 is the same
        # request again: slurmstepd signals every process of a job step and torchrun relays its own copy
        # to each worker, and both follow with SIGKILL when their grace period is over.
        if signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)

    def requested(self, step: int, now: bool = False) -> str | None:
        """Why to stop at this step (a signal's name, or the STOP file), or None. now: ask the other
        ranks whatever the pace (at an epoch's end)."""
        if self.env.world == 1 and self.signal is not None:
            return self._why()
        if not now and step < self.next_check:
            return None
        local = self.signal is not None or (self.env.main and self.file.exists())
        following = self.next_check if now else self._paced(step)
        stop, self.next_check, signum = dist.agree(local, following, self.signal or 0)
        return self._why(signum) if stop else None

    def _why(self, signum: int | None = None) -> str:
        """The signal's name (any rank's: every rank names the same), else the STOP file."""
        signum = signum or self.signal
        return signal.Signals(signum).name if signum else f"{self.file.name} file"

    def leave_note(self, why: str, step: int) -> None:
        """RUN_DIR/STOP says why the run stopped: workers torchrun restarts in this launch find it and
        stop."""
        self.file.write_text(f"stopped by {why} at step {step}\n")

    def _paced(self, step: int) -> int:
        """The step about STOP_CHECK_S from now at the pace since the last check (only rank 0's counts).
        Pauses (samples, checkpoints, FID) count as slow steps: they bring the next check nearer."""
        t, last = time.perf_counter(), self.checked
        self.checked = (step, t)
        if last is None:  # this launch's first check: the next step's gives the pace
            return step + 1
        last_step, last_t = last
        seconds_per_step = (t - last_t) / max(step - last_step, 1)
        return step + max(1, min(int(STOP_CHECK_S / max(seconds_per_step, 1e-6)), 10_000))
