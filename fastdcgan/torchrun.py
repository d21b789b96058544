"""python -m fastdcgan.torchrun: torchrun (the same arguments), quiet when the job is stopped.

A cluster stops a job (scancel, scontrol requeue, preemption) by signalling every process in it:
torchrun's agent as well as its workers. The workers checkpoint at a step boundary and exit, as
they do on any stop; the agent raises SignalException out of torchrun's main, which prints a
traceback that reads like a crash. Here it is one line, and the exit code is the signal's (128 + N),
as a process ended by it would have; the run's state is in RUN_DIR/STATUS (slurm/train.sbatch).
"""
from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main as torchrun


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun(argv)
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f"torchrun: {name}: the workers were told to stop (each checkpoints at a step boundary)",
              file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
