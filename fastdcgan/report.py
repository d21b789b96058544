"""Where the loop's records go: the console (a progress bar on a terminal, plain lines otherwise),
metrics.jsonl, TensorBoard when asked, and RUN_DIR/STATUS. Rank 0 alone prints and writes."""
from __future__ import annotations

import json
from pathlib import Path

import torch
# At import, before a run seeds its generators: rich draws from Python's global one as it loads
# (rich/style.py), which would put every launch's saved state one draw apart.
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import checkpoint, plots
from .config import UsageError
from .rundir import RunDir

TB_INSTALL = "pip install -e '.[tb]' (or pip install tensorboard)"
# TensorBoard groups its charts by the tag's first part; a metrics key not named here goes under "train".
TB_GROUPS = {"loss_d": "loss", "loss_g": "loss", "d_real": "D", "d_fake": "D", "img_per_s": "speed",
             "data_ms": "speed", "compute_ms": "speed", "mfu": "speed", "fid": "fid", "fid_s": "fid"}
NOT_SCALARS = ("step", "epoch", "images", "time", "fid_n", "fid_model")


class Display:
    """A rich progress bar on a terminal; plain log lines in batch jobs and pipes."""

    def __init__(self, total: int, start: int, enabled: bool = True, console=None):
        self.console = console or Console()
        self.progress = None
        self.enabled = enabled  # only rank 0 shows anything
        if enabled and self.console.is_terminal:
            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), console=self.console)
            self.task = self.progress.add_task("train", total=total, completed=start, epoch=0, info="")
            self.progress.start()
        self.terminal = self.progress is not None

    def update(self, step: int, epoch: int, info: str | None = None) -> None:
        if self.progress:
            fields = {"epoch": epoch} if info is None else {"epoch": epoch, "info": info}
            self.progress.update(self.task, completed=step, **fields)

    def print(self, line: str, last: bool = False) -> None:
        """One line above the bar; the run's last line (done, stopped, an error) takes the bar away
        first, so that the bar is not drawn again below it."""
        if not self.enabled:
            return
        if last:
            self.close()
        if self.terminal:
            self.console.print(line, highlight=False, markup=False)  # a path or error may hold "[...]"
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None
            self.console.print()  # the bar's line stays as it was last drawn; what follows starts below


class MetricsFile:
    """RUN_DIR/metrics.jsonl: one JSON object per log point or FID evaluation, appended as they come.

    A launch starts at `start`, the step of the checkpoint it resumes (0 without one): rows of later
    steps, from a launch that ended after its last checkpoint (kill -9, a node lost; or before its
    first), are forgotten, since this launch does those steps again; so is a line a kill cut short."""

    def __init__(self, path: Path, start: int):
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [r for r in plots.parse_metrics(lines) if r["step"] <= start]
        if len(kept) != len(lines):  # also a line cut short
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(path, "a")

    def record(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        pass  # the PNG files are the samples job's own

    def histogram(self, tag: str, counts: torch.Tensor, step: int) -> None:
        pass

    def close(self) -> None:
        self.file.close()


class TensorBoard:
    """RUN_DIR/tb/: the same records as scalars, the fixed-noise grids, the D-output histograms."""

    def __init__(self, log_dir: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter  # check_tensorboard has seen the package
        # TensorBoard hides earlier launches' events after `start` (this launch redoes those steps), as
        # MetricsFile forgets those rows; else a run killed past its last checkpoint shows them twice.
        self.writer = SummaryWriter(str(log_dir), purge_step=start + 1)

    def record(self, row: dict) -> None:
        for key, value in row.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{TB_GROUPS.get(key, 'train')}/{key}", value, row["step"])
        self.writer.flush()

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, grid, step)
        self.writer.flush()

    def histogram(self, tag: str, counts: torch.Tensor, step: int) -> None:
        """counts: one row of equal bins over [0, 1] (the D outputs' histogram the step keeps)."""
        counts = counts.double()
        edges = torch.linspace(0, 1, len(counts) + 1, dtype=torch.float64)
        centers = (edges[1:] + edges[:-1]) / 2
        n = counts.sum().item()
        if n == 0:
            return
        self.writer.add_histogram_raw(tag, min=0.0, max=1.0, num=int(n), sum=(centers * counts).sum().item(),
                                      sum_squares=(centers * centers * counts).sum().item(),
                                      bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(),
                                      global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Report:
    """The console, and the record sinks (metrics.jsonl, TensorBoard) on rank 0."""

    def __init__(self, run_dir: Path, main: bool, total: int, start: int, tensorboard: bool):
        self.dir, self.main = run_dir, main
        self.display = Display(total, start, enabled=main)
        self.sinks = []
        if main:
            self.sinks.append(MetricsFile(RunDir(run_dir).metrics, start))
            if tensorboard:
                self.sinks.append(TensorBoard(RunDir(run_dir).tensorboard, start))

    def print(self, line: str, last: bool = False) -> None:
        self.display.print(line, last)

    def record(self, row: dict) -> None:
        for sink in self.sinks:
            sink.record(row)

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        """A CHW grid in [0, 1] (plots.sample_grid)."""
        for sink in self.sinks:
            sink.image(tag, grid, step)

    def histogram(self, tag: str, counts: torch.Tensor, step: int) -> None:
        for sink in self.sinks:
            sink.histogram(tag, counts, step)

    def status(self, word: str, step: int, more: str = "") -> None:
        """RUN_DIR/STATUS, one line: running, finished, stopped (resumable), failed or nonfinite, the
        step, then anything more (time to FID). Batch scripts read its first word: torchrun reports
        any non-zero worker exit as its own exit code 1."""
        line = f"{word} {step}" + (f"; {more}" if more else "")
        if self.main:
            checkpoint.atomic_write(RunDir(self.dir).status, lambda f: f.write(f"{line}\n".encode()))

    def close(self) -> None:
        self.display.close()
        for sink in self.sinks:
            sink.close()


def check_tensorboard(asked: bool) -> None:
    """log.tensorboard=true without the package: say so before anything is built or trained."""
    if asked:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError(f"log.tensorboard=true needs the tensorboard package: {TB_INSTALL}") from None
