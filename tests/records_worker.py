"""One rank of tests/test_resume_records.py's two-process runs, under torchrun:

    python -m torch.distributed.run --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d \\
        --rdzv_endpoint=127.0.0.1:PORT tests/records_worker.py STEP key=value ...    # twice: two nodes

`python -m fastdcgan.train key=value ...`, with a real SIGUSR1 sent to every rank as its loop reaches
STEP (0: none): the trainer's own stop path follows, where the ranks agree on it. Every rank but 0
lists what it wrote into the run directory (watch_writes): nothing, when it works. Rank 0 lists the
images per step its img/s is counted with (count_timed_images).
"""
import atexit
import json
import os
import signal
import sys

from fastdcgan import jobs, perf
from fastdcgan.train import main


def stop_at(step: int) -> None:
    progress = jobs.Log.progress

    def progress_then_signal(self, at, epoch, wall_s):
        progress(self, at, epoch, wall_s)
        if at == step:
            os.kill(os.getpid(), signal.SIGUSR1)
    jobs.Log.progress = progress_then_signal


def watch_writes(run_dir: str) -> None:
    """On every rank but 0: each write into the run directory (a file opened for writing, a file or
    folder made, renamed or removed), kept in RUN_DIR.writes.rankN.json when the process exits. Rank 0
    alone writes there; a record another rank writes too is a race that the last writer wins."""
    rank = int(os.environ["RANK"])
    if rank == 0:
        return
    root, seen = os.path.realpath(run_dir) + os.sep, []

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else \
                bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir"):
            path, writing = args[0], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)) and \
                os.path.realpath(os.fsdecode(path)).startswith(root):
            seen.append(f"{event} {os.fsdecode(path)}")
    sys.addaudithook(hook)
    atexit.register(lambda: open(f"{run_dir}.writes.rank{rank}.json", "w").write(json.dumps(seen)))


def count_timed_images(run_dir: str) -> None:
    """On rank 0: the images per step each img/s figure is computed with (StepTimer.read's argument),
    kept in RUN_DIR.timed.rank0.json when the process exits."""
    if int(os.environ["RANK"]) != 0:
        return
    read, seen = perf.StepTimer.read, []

    def recording(self, batch_size):
        seen.append(batch_size)
        return read(self, batch_size)
    perf.StepTimer.read = recording
    atexit.register(lambda: open(f"{run_dir}.timed.rank0.json", "w").write(json.dumps(seen)))


if __name__ == "__main__":
    stop_at(int(sys.argv[1]))
    run_dir = next(a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("train.run_dir="))
    watch_writes(run_dir)
    count_timed_images(run_dir)
    sys.exit(main(sys.argv[2:]))
