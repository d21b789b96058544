"""Stopping a run on request: SIGTERM, SIGINT or SIGUSR1, or `touch RUN_DIR/STOP` (how the sbatch
script relays a signal). The run checkpoints, leaves RUN_DIR/STOP saying why, and exits 75."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from . import dist
from .jobs import EXIT_STOPPED, Exit, SideJob

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_FILE = "STOP"       # touch RUN_DIR/STOP to stop a run at the next check (how sbatch relays USR1)
STOP_CHECK_S = 1.0       # seconds between stop checks when several processes must agree (rank 0's clock)


def leave_stop_signals_to_the_trainer(_worker_id: int = 0) -> None:
    """worker_init_fn for input worker processes. A cluster stops a job by signalling every process in
    it (slurmstepd signals the whole step, Ctrl-C the foreground group): a worker killed by that would
    crash the trainer mid-step, without a checkpoint. The trainer stops at a step boundary and shuts its
    workers down itself."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def stop_file_at_start(run_dir: Path) -> bool:
    """A stop leaves RUN_DIR/STOP. A fresh launch clears it; workers that torchrun restarts in the
    same launch find it and stop at once, rather than train on in an allocation being taken away."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = run_dir / STOP_FILE
    if stop.exists() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return True
    stop.unlink(missing_ok=True)
    return False


class Stop(SideJob):
    """Due when a stop is requested on any rank: every rank gets the same answer at the same step.

    One process reads its signal flag every step. Several must agree in a collective, held only at
    steps rank 0 spaces about STOP_CHECK_S apart by its clock and sends along with each answer: fast
    steps never wait on it, and slow ones are checked every step, so a stop takes effect within about
    a second or one step, well inside a launcher's grace period (torchrun: 30 s).
    """

    def __init__(self, run_dir: Path, env: dist.Env, step: int):
        self.file = run_dir / STOP_FILE
        self.env = env
        self.signal: int | None = None
        self.next_check = step + 1  # every rank checks at this step (rank 0 sets it at each check)
        self.checked = (step, time.perf_counter())  # rank 0: step and time of the last check

    def install(self) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)

    def uninstall(self) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)

    def _on_signal(self, signum, frame) -> None:
        self.signal = self.signal or signum
        # A second Ctrl-C is a person who wants it to end now. A second SIGTERM or SIGUSR1 is the same
        # request again: slurmstepd signals every process of a job step and torchrun relays its own copy
        # to each worker, and both follow with SIGKILL when their grace period is over.
        if signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)

    def due(self, step: int, now: bool = False) -> bool:
        if self.env.world == 1 and self.signal is not None:
            return True
        if not now and step < self.next_check:
            return False
        local = self.signal is not None or (self.env.main and self.file.exists())
        following = self.next_check if now else self._paced(step)
        stop, self.next_check = dist.agree(local, following)
        return stop

    def _paced(self, step: int) -> int:
        """The step about STOP_CHECK_S from now at the pace since the last check (only rank 0's counts).
        Pauses (samples, checkpoints, FID) count as slow steps: they bring the next check nearer."""
        last_step, last_t = self.checked
        t = time.perf_counter()
        self.checked = (step, t)
        seconds_per_step = (t - last_t) / max(step - last_step, 1)
        return step + max(1, min(int(STOP_CHECK_S / max(seconds_per_step, 1e-6)), 10_000))

    def at_step(self, run) -> None:
        self.stop(run)

    def at_epoch_end(self, run) -> None:
        if self.due(run.state.step, now=True):
            self.stop(run)

    def stop(self, run) -> None:
        name = signal.Signals(self.signal).name if self.signal else f"{STOP_FILE} file"
        step = run.state.step
        path = run.checkpoints.save(run)
        if run.main:
            self.file.write_text(f"stopped by {name} at step {step}\n")
        run.report.print(f"stopped by {name} at step {step}; checkpoint {path}. Run the same command to resume.",
                         last=True)
        raise Exit(EXIT_STOPPED)
