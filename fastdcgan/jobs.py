"""The loop's side jobs: what train.py's loop does beside training, each called by name, in its own
order there, with only what it needs. No job holds the trainer or calls another job. Every rank
calls the same job at the same step, since some are collectives (a checkpoint gathers every rank's
RNG, FID splits its samples); rank 0 alone writes files (`main`).

A job that finds the run cannot go on raises an outcome (NonFinite); train.py turns each outcome
into the checkpoint, the STATUS line and the exit code, in one place.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import checkpoint, dist, losses, plots
from .model import sample
from .report import Report
from .rundir import RunDir


class NonFinite(Exception):
    """A loss, or the weights about to be checkpointed, became NaN or infinite by this step."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss by step {step}")
        self.step = step


def duration(seconds: float) -> str:
    """45s, 3m05s, 2h03m: short enough for a log line."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Log:
    """The console and metrics.jsonl: the progress bar every step; a record every `every` steps and at
    the last. Without a progress bar (batch jobs, pipes) each line gives the run's elapsed wall clock
    and an ETA at this launch's pace, and the launch's first step gets a line of its own, however far
    away the first `every` is."""

    def __init__(self, every: int, total: int, report: Report, flops_per_image: float, peak: float | None,
                 devices: int = 1):
        """peak: one device's FLOP/s; devices: the run's processes, each on its own device. img/s counts
        every process's images, so MFU is measured against every device's peak."""
        self.every, self.total, self.report = every, total, report
        self.flops_per_image, self.peak = flops_per_image, peak * devices if peak else None
        self.started: tuple[int, float] | None = None  # this launch's first step, and when its loop began
        self.last = -1  # the step of the latest row

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def start(self, step: int) -> None:
        """The loop begins (at `step`, after a resume): the pace of the ETA is counted from here."""
        self.started, self.last = (step, time.perf_counter()), step

    def clock(self, step: int, wall_s: float) -> str:
        """'elapsed 1m02s  eta 3m10s': the run's wall clock, and the steps left at this launch's pace."""
        first, t0 = self.started
        pace = (time.perf_counter() - t0) / max(step - first, 1)
        return f"elapsed {duration(wall_s)}  eta {duration(pace * (self.total - step))}"

    def progress(self, step: int, epoch: int, wall_s: float) -> None:
        """Every step: the bar; and the first step's line when it is not a log step."""
        display = self.report.display
        display.update(step, epoch)
        if step == self.started[0] + 1 and not self.due(step) and display.progress is None:
            display.print(f"step {step}/{self.total}  epoch {epoch}  {self.clock(step, wall_s)}  "
                          f"(then one every {self.every} steps)")

    def record(self, step: int, epoch: int, images: int, means: dict, timing: dict, costs: dict,
               wall_s: float) -> dict:
        """A metrics.jsonl row and a log line: the step's running means, the window's timing (img/s,
        data and compute ms), the set-up's costs on the first row after it."""
        self.last = step
        row = {"step": step, "epoch": epoch, "images": images, **means, **timing, "time": time.time(),
               **costs}
        if self.peak and "img_per_s" in row:
            row["mfu"] = row["img_per_s"] * self.flops_per_image / self.peak
        self.report.record(row)
        info = (f"loss_d {means['loss_d']:.3f}  loss_g {means['loss_g']:.3f}  D(x) {means['d_real']:.3f}  "
                f"D(G(z)) {means['d_fake']:.3f}")
        if "img_per_s" in row:
            info += (f"  {row['img_per_s']:.0f} img/s  data {row['data_ms']:.1f} ms  "
                     f"compute {row['compute_ms']:.1f} ms"
                     + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""))
        display = self.report.display
        display.update(step, epoch, info)
        if display.progress is None:
            display.print(f"step {step}/{self.total}  epoch {epoch}  {self.clock(step, wall_s)}  {info}")
        return row


class Samples:
    """The fixed noise through the sampling generator: samples/step_N.png, samples/epoch_N.png."""

    def __init__(self, every: int, fixed_z: torch.Tensor, folder: Path, report: Report, main: bool):
        self.every, self.fixed_z, self.folder, self.report, self.main = every, fixed_z, folder, report, main
        self.last = -1  # the step of the latest grid (a checkpoint keeps it)

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state["last"]

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, G: torch.nn.Module, name: str, step: int) -> None:
        """G: the sampling generator, which every rank fetches (a collective under several processes)."""
        self.last = step
        if self.main:
            grid = plots.sample_grid(sample(G, self.fixed_z))
            plots.write_grid(grid, self.folder / f"{name}.png")
            self.report.image("samples", grid, step)


class Plots:
    """The plots at epoch ends: the losses so far (plots/loss.png) and the D outputs' histograms since
    the last drawing (plots/d_outputs_epoch_N.png). An epoch end draws only when at least `min_steps`
    (log.every: a new row for loss.png) have passed since the last drawing: on a small folder an epoch
    is a few steps, and two matplotlib figures at every one of them took a large share of a CPU run
    (measured: BENCHMARKS.md, the 2026-12-01 trainer check). Step-counted, so that every rank draws
    (a collective) at the same epoch end."""

    def __init__(self, min_steps: int, step: int, epoch: int, run_dir: RunDir, loss: str, report: Report,
                 main: bool):
        self.min_steps, self.run_dir, self.loss, self.axis, self.report, self.main = (
            min_steps, run_dir, loss, losses.HISTOGRAM_AXIS[loss], report, main)
        # the step and the last whole epoch drawn: where this launch begins, unless a checkpoint says
        # (load_state_dict: the drawings' pace then spans the launches, as if never stopped)
        self.drawn = (step, epoch)

    def state_dict(self) -> dict:
        return {"drawn": list(self.drawn)}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = tuple(state["drawn"])

    def due_at_epoch_end(self, step: int) -> bool:
        return step - self.drawn[0] >= self.min_steps

    def undrawn(self, step: int) -> bool:
        return step != self.drawn[0]

    def draw(self, histograms: torch.Tensor, step: int, label: int, paced: bool = True) -> None:
        """histograms: the D outputs' (2 x bins, every rank's summed) since the last paced drawing. A
        drawing that is not paced (a launch's last step) leaves the pace as it was."""
        first = self.drawn[1] + 1
        if paced:
            self.drawn = (step, label)
        if self.main:
            plots.plot_losses(self.run_dir.metrics, self.run_dir.plots / "loss.png", self.loss)
            plots.plot_d_outputs(histograms, label, self.run_dir.plots / f"d_outputs_epoch_{label:03d}.png",
                                 self.axis, first=first)
            self.report.histogram("D/real", histograms[0], step)
            self.report.histogram("D/fake", histograms[1], step)


class Checkpoints:
    """checkpoints/step_N.pt every `every` steps, at each epoch's end, on a stop and at the end, where
    the last `keep` stay; at the end also the weights users load (generator.pth, discriminator.pth).

    A checkpoint holds the TrainState and, under "jobs", the records of the side jobs in `jobs` (by
    name; each has state_dict and load_state_dict): what a job keeps that must span a resume. `records`:
    those of the checkpoint resumed, given back to the jobs here."""

    def __init__(self, every: int, folder: Path, keep: int, main: bool, jobs: dict | None = None,
                 resumed: Path | None = None, step: int = 0, records: dict | None = None):
        self.every, self.folder, self.keep, self.main = every, folder, keep, main
        # the latest checkpoint this launch has: its step (-1: none) and file (rank 0's)
        self.last_saved, self.last_path = (step, resumed) if resumed else (-1, None)
        self.jobs = jobs or {}
        for name, job in self.jobs.items():
            if name in (records or {}):
                job.load_state_dict(records[name])

    def contents(self, state) -> dict:
        """What a checkpoint of `state` holds. A collective (TrainState.state_dict): every rank calls it."""
        return state.state_dict() | {"jobs": {name: job.state_dict() for name, job in self.jobs.items()}}

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def saved_at(self, step: int) -> bool:
        return self.last_saved == step

    def latest(self) -> Path | None:
        return checkpoint.latest(self.folder)

    def save(self, state) -> Path:
        """Checkpoint the TrainState now, unless its weights may be non-finite on any rank (NonFinite:
        nothing non-finite is ever saved). Every rank calls it at the same step; rank 0 writes; the
        barrier after keeps other ranks from exiting, and a launcher from killing rank 0, mid-write."""
        if not state.gan.finite():
            raise NonFinite(state.step)
        contents = self.contents(state)
        path = (checkpoint.save(contents, self.folder, self.keep) if self.main
                else self.folder / checkpoint.LATEST)
        dist.barrier()
        self.last_saved, self.last_path = state.step, path
        return path

    def write_weights(self, state, run_dir: RunDir) -> None:
        """generator.pth and discriminator.pth (and generator_ema.pth): plain state_dicts."""
        sampling = state.sampling_generator()  # on every rank; already recalibrated by a save at this step
        if self.main:
            torch.save(state.G.state_dict(), run_dir.generator)
            torch.save(state.D.state_dict(), run_dir.discriminator)
            if state.G_ema is not None:
                torch.save(sampling.state_dict(), run_dir.generator_ema)
            else:  # an earlier launch's, with model.ema on: not this G's EMA
                run_dir.generator_ema.unlink(missing_ok=True)


class FID:
    """FID every `every` steps: a metrics row (with the images seen and the run's wall-clock seconds),
    plots/fid.png, checkpoints/best_fid for the best (tracker.py), and the time to each FID threshold
    (time_to_fid.json), which a resumed run keeps. `target` (fid.target): the score at or below which
    the run ends, as if finished."""
    THRESHOLDS = (200.0, 100.0, 50.0, 30.0, 20.0, 10.0)

    def __init__(self, every: int, tracker, target: float, run_dir: RunDir, report: Report, main: bool,
                 start: int):
        self.every, self.tracker, self.target, self.report, self.main = every, tracker, target, report, main
        self.run_dir, self.file = run_dir, run_dir.time_to_fid
        self.thresholds = sorted({*self.THRESHOLDS, *([target] if target else [])}, reverse=True)
        # A resumed run keeps the times its launches reached by `start`, the step it resumes at; later
        # ones (a launch that ended after its last checkpoint) are reached again, on this run's clock.
        found = self.read_reached(self.file, self.thresholds)
        self.reached = {t: r for t, r in found.items() if r["step"] <= start}
        self.scored = -1  # the step this launch last scored
        other_target = (self.read_record(self.file).get("target") or 0.0) != target  # a relaunch's own
        if main and self.file.exists() and (self.reached != found or other_target):
            self._write()

    @staticmethod
    def read_reached(file: Path, thresholds=()) -> dict[float, dict]:
        """time_to_fid.json's entries by threshold. Versions before FID.key named a threshold by six
        digits ("27.294" for 27.293976214016247): such an entry is taken as the threshold of
        `thresholds` it names, unless that name is a threshold in use itself."""
        found = {float(k): v for k, v in FID.read_record(file).get("reached", {}).items()}
        for t in thresholds:
            short = float(f"{t:g}")
            if short != t and t not in found and short in found and short not in thresholds:
                found[t] = found.pop(short)
        return found

    @staticmethod
    def read_record(file: Path) -> dict:
        """time_to_fid.json as written; {} where there is none, or it cannot be read."""
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError):
            return {}

    @classmethod
    def ended_at_target(cls, file: Path, target: float, step: int) -> bool:
        """Whether the run ended at this `target` by `step` (then a relaunch has nothing to train): the
        first score at or below it ends a run, and is kept as the time to it."""
        at = cls.read_reached(file, (target,)).get(target)
        return bool(target) and at is not None and at["step"] <= step

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def pending(self, step: int) -> bool:
        """Due, and not scored yet by this launch (a resumed epoch's end may come at the step it began)."""
        return self.due(step) and self.scored != step

    def recorded(self, step: int) -> bool:
        """Whether metrics.jsonl holds a score of this step (rank 0 reads it)."""
        return any(r["step"] == step and "fid" in r for r in plots.read_metrics(self.run_dir.metrics))

    def score(self, G: torch.nn.Module, step: int, epoch: int, images: int, wall_s: float) -> dict:
        """FID of G now (every rank scores its share: the same score on every rank), as a metrics row."""
        self.scored = step
        return self.tracker.evaluate(G, step, epoch) | {"images": images, "wall_s": round(wall_s, 2)}

    def is_best(self, row: dict) -> bool:
        return self.tracker.is_best(row)

    def keep(self, row: dict, saved: Path | None) -> None:
        """Record the score: best_fid (a link to `saved`, this step's checkpoint, on rank 0), the
        thresholds it reaches for the first time, the metrics row, the plot and a line."""
        best = self.tracker.keep_if_best(row, saved, write=self.main)
        new = [t for t in self.thresholds if row["fid"] <= t and t not in self.reached]
        for t in new:
            self.reached[t] = {k: row[k] for k in ("step", "images", "wall_s", "fid")}
        if not self.main:
            return
        if new:
            self._write()
        self.report.record(row)
        plots.plot_fid(self.run_dir.metrics, self.run_dir.plots / "fid.png")
        self.report.print(f"step {row['step']}  FID {row['fid']:.2f} on {row['fid_n']} samples "
                          f"({row['fid_s']:.0f} s){'  new best' if best else ''}")
        if self.target_reached(row):
            self.report.print(f"fid.target {self.target:g} reached at step {row['step']}, "
                              f"{row['wall_s']:.0f} s into the run")

    def _write(self) -> None:
        reached = {self.key(t): v for t, v in sorted(self.reached.items(), reverse=True)}
        data = json.dumps({"target": self.target or None, "reached": reached}, indent=1).encode()
        checkpoint.atomic_write(self.file, lambda f: f.write(data))

    @staticmethod
    def key(threshold: float) -> str:
        """The threshold as time_to_fid.json names it: "200" for 200.0, and never rounded (a fid.target
        of 27.2939762 is not "27.294"), so that a resumed run reads back the very threshold it reached
        and does not reach it a second time, later."""
        short = f"{threshold:g}"
        return short if float(short) == threshold else repr(threshold)

    def target_reached(self, row: dict) -> bool:
        return bool(self.target) and row["fid"] <= self.target

    def summary(self) -> str:
        """'time to FID <=100: 35 s (step 400), <=50: ...' for the thresholds reached, or ''."""
        if not self.reached:
            return ""
        return "time to FID " + ", ".join(f"<={t:g}: {v['wall_s']:.0f} s (step {v['step']})"
                                          for t, v in sorted(self.reached.items(), reverse=True))
