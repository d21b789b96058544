"""One rank of tests/test_resume_records.py's two-process runs, under torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/records_worker.py STEP key=value ...

`python -m fastdcgan.train key=value ...`, with a real SIGUSR1 sent to every rank as its loop reaches
STEP (0: none): the trainer's own stop path follows, where the ranks agree on it.
"""
import os
import signal
import sys

from fastdcgan import jobs
from fastdcgan.train import main


def stop_at(step: int) -> None:
    progress = jobs.Log.progress

    def progress_then_signal(self, at, epoch, wall_s):
        progress(self, at, epoch, wall_s)
        if at == step:
            os.kill(os.getpid(), signal.SIGUSR1)
    jobs.Log.progress = progress_then_signal


if __name__ == "__main__":
    stop_at(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
