"""The loop's side jobs: what it does beside training, each a small part with one interface.

The loop calls `at_step(run)` on the steps a job's `due(step)` names, `at_epoch_end(run)` after each
whole epoch and `at_end(run)` once after the last step. Jobs that `pause` run with the step timer
stopped (they wait for the device); every rank calls every job at the same step, since some are
collectives (checkpoints gather every rank's RNG, FID splits its samples, a stop is agreed on).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, dist, losses, plots
from .model import sample

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NONFINITE, EXIT_STOPPED = 0, 1, 2, 3, 75
STATUS_WORDS = {EXIT_OK: "finished", EXIT_FAILED: "failed", EXIT_NONFINITE: "nonfinite", EXIT_STOPPED: "stopped"}


class Exit(Exception):
    """Leave the loop with this exit code (non-finite loss, or a stop after its checkpoint)."""

    def __init__(self, code: int):
        self.code = code


class SideJob:
    every = 0       # steps between runs; 0: none between epoch ends
    pauses = True   # waits for the device: the step timer stops meanwhile

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def at_step(self, run) -> None:
        pass

    def at_epoch_end(self, run) -> None:
        pass

    def at_end(self, run) -> None:
        pass


def duration(seconds: float) -> str:
    """45s, 3m05s, 2h03m: short enough for a log line."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Log(SideJob):
    """Moves the progress bar every step; every `every` steps (and at the last) reads the step's
    running means, checks them, and hands the record to the report. Without a progress bar (batch
    jobs, pipes) each line gives the run's elapsed wall clock and an ETA at this launch's pace, and the
    launch's first step gets a line of its own, however far away the first `every` is."""
    pauses = False

    def __init__(self, every: int):
        self.every = every
        self.started: tuple[int, float] | None = None  # this launch's first step and when its loop began

    def due(self, step: int) -> bool:
        return True

    def clock(self, step: int, total: int, wall_s: float) -> str:
        """'elapsed 1m02s  eta 3m10s': the run's wall clock, and the steps left at this launch's pace."""
        first, t0 = self.started
        pace = (time.perf_counter() - t0) / max(step - first, 1)
        return f"elapsed {duration(wall_s)}  eta {duration(pace * (total - step))}"

    def at_step(self, run) -> None:
        s, display = run.state, run.report.display
        epoch = s.epoch + 1  # the epoch being trained, counted from 1 as in epoch_NNN.png (its end)
        display.update(s.step, epoch)
        first = self.started is None
        if first:
            self.started = (s.step - 1, run.loop_started)
        if s.step % self.every and s.step != run.total_steps:
            if first and display.progress is None:
                display.print(f"step {s.step}/{run.total_steps}  epoch {epoch}  "
                              f"{self.clock(s.step, run.total_steps, s.wall_s())}  (then one every {self.every} steps)")
            return
        m = s.gan.read()
        if not all(np.isfinite(v) for v in m.values()):
            run.checkpoints.nonfinite(run)
        batch = run.cfg.train.batch_size * run.env.world  # global: every rank's images count
        row = {"step": s.step, "epoch": epoch, "images": s.step * batch, **m, **run.timer.read(batch),
               "time": time.time()}
        row.update(run.warmup.take_costs())  # the first row after the set-up says what it cost, once
        if s.peak and "img_per_s" in row:
            row["mfu"] = row["img_per_s"] * s.flops / s.peak
        run.report.record(row)
        info = (f"loss_d {m['loss_d']:.3f}  loss_g {m['loss_g']:.3f}  D(x) {m['d_real']:.3f}  "
                f"D(G(z)) {m['d_fake']:.3f}")
        if "img_per_s" in row:
            info += (f"  {row['img_per_s']:.0f} img/s  data {row['data_ms']:.1f} ms  compute {row['compute_ms']:.1f} ms"
                     + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""))
        display.update(s.step, epoch, info)
        if display.progress is None:
            display.print(f"step {s.step}/{run.total_steps}  epoch {epoch}  "
                          f"{self.clock(s.step, run.total_steps, s.wall_s())}  {info}")


class Samples(SideJob):
    """The fixed noise through the sampling generator: samples/step_N.png, samples/epoch_N.png."""

    def __init__(self, every: int):
        self.every = every
        self.last = -1  # the step of the latest grid

    def at_step(self, run) -> None:
        self.save(run, f"step_{run.state.step:08d}")

    def at_epoch_end(self, run) -> None:
        self.save(run, f"epoch_{run.state.epoch:03d}")

    def at_end(self, run) -> None:
        if self.last != run.state.step:  # stopped mid-epoch (train.max_steps): every run ends with a grid
            self.save(run, f"step_{run.state.step:08d}")

    def save(self, run, name: str) -> None:
        s = run.state
        self.last = s.step
        G = s.sampling_generator()  # on every rank (a collective under sync_bn)
        if run.main:
            grid = plots.sample_grid(sample(G, s.fixed_z))
            plots.write_grid(grid, run.dir / "samples" / f"{name}.png")
            run.report.image("samples", grid, s.step)


class Plots(SideJob):
    """The plots at epoch ends: the losses so far (plots/loss.png) and the D outputs' histograms since
    the last drawing (plots/d_outputs_epoch_N.png). An epoch end draws only when at least `min_steps`
    (log.every: a new row for loss.png) have passed since the last drawing: on a small folder an epoch
    is a few steps, and two matplotlib figures (about 0.35 s on 2 CPU cores) at every one of them took
    a fifth of a CPU run. Step-counted, so that every rank draws (a collective) at the same epoch end."""

    def __init__(self, min_steps: int = 1, step: int = 0, epoch: int = 0):
        self.min_steps = min_steps
        self.drawn = (step, epoch)  # the step and the last whole epoch drawn (at start: where this launch begins)

    def at_epoch_end(self, run) -> None:
        if run.state.step - self.drawn[0] >= self.min_steps:
            self.draw(run, run.state.epoch)

    def at_end(self, run) -> None:
        if run.state.step != self.drawn[0]:  # steps not drawn yet: max_steps mid-epoch, or a skipped end
            self.draw(run, run.state.epoch + (1 if run.state.batch_in_epoch else 0))

    def draw(self, run, label: int) -> None:
        hist = run.state.gan.take_histograms()  # on every rank: it sums the ranks' histograms
        first = self.drawn[1] + 1
        self.drawn = (run.state.step, label)
        if run.main:
            plots.plot_losses(run.dir / "metrics.jsonl", run.dir / "plots" / "loss.png")
            plots.plot_d_outputs(hist, label, run.dir / "plots" / f"d_outputs_epoch_{label:03d}.png",
                                 losses.HISTOGRAM_AXIS[run.cfg.train.loss], first=first)
            run.report.histogram("D/real", hist[0], run.state.step)
            run.report.histogram("D/fake", hist[1], run.state.step)


class Checkpoints(SideJob):
    """checkpoints/step_N.pt every `every` steps, at each epoch's end and at the end, where the last
    `keep` stay; at the end also the weights users load (generator.pth, discriminator.pth)."""

    def __init__(self, every: int, directory: Path, keep: int, last_saved: int):
        self.every, self.dir, self.keep = every, directory, keep
        self.last_saved = last_saved  # the step of the latest checkpoint this launch has (-1: none)

    def at_step(self, run) -> None:
        self.save(run)

    def at_epoch_end(self, run) -> None:
        self.save(run)

    def at_end(self, run) -> None:
        if self.last_saved != run.state.step:
            self.save(run)
        s = run.state
        sampling = s.sampling_generator()  # on every rank; already recalibrated by the save at this step
        if run.main:
            torch.save(s.G.state_dict(), run.dir / "generator.pth")
            torch.save(s.D.state_dict(), run.dir / "discriminator.pth")
            if s.G_ema is not None:
                torch.save(sampling.state_dict(), run.dir / "generator_ema.pth")

    def save(self, run) -> Path:
        """Checkpoint now, unless the weights may be non-finite on any rank (then stop, exit 3).

        Every rank calls it at the same step; rank 0 writes; the barrier after keeps other ranks from
        exiting, and a launcher from killing rank 0, mid-write.
        """
        if not run.state.gan.finite():
            self.nonfinite(run)
        state = run.state.state_dict()
        path = checkpoint.save(state, self.dir, self.keep) if run.main else self.dir / "latest"
        dist.barrier()
        self.last_saved = run.state.step
        return path

    def saved_now(self, run) -> bool:
        return self.last_saved == run.state.step

    def nonfinite(self, run) -> None:
        good = checkpoint.latest(self.dir)
        run.report.print(f"error: non-finite loss by step {run.state.step}; stopping. Last good checkpoint: "
                         f"{good or 'none'}. Lower the learning rates or try precision=fp32.", last=True)
        raise Exit(EXIT_NONFINITE)


class FID(SideJob):
    """FID every `every` steps: a metrics row (with the images seen and the run's wall-clock seconds),
    plots/fid.png, checkpoints/best_fid for the best, and the time to each FID threshold
    (time_to_fid.json). At or below `target` (fid.target) the run ends there, as if finished."""
    THRESHOLDS = (200.0, 100.0, 50.0, 30.0, 20.0, 10.0)

    def __init__(self, every: int, tracker, target: float, run_dir: Path):
        self.every, self.tracker, self.target = every, tracker, target
        self.file = run_dir / "time_to_fid.json"
        self.thresholds = sorted({*self.THRESHOLDS, *([target] if target else [])}, reverse=True)
        try:  # a resumed run keeps the times its earlier launches reached
            self.reached = {float(k): v for k, v in json.loads(self.file.read_text())["reached"].items()}
        except (OSError, ValueError, KeyError):
            self.reached = {}

    def at_step(self, run) -> None:
        s, ckpts = run.state, run.checkpoints
        row = self.tracker.evaluate(s.sampling_generator(), s.step, s.epoch + 1)  # the same score on every rank
        row |= {"images": s.step * run.cfg.train.batch_size * run.env.world, "wall_s": round(s.wall_s(), 2)}
        if self.tracker.is_best(row) and not ckpts.saved_now(run):
            ckpts.save(run)  # every rank takes part; best_fid then links to this step's file
        saved = checkpoint.latest(ckpts.dir) if run.main else None
        best = self.tracker.keep_if_best(row, saved, s.state_dict, write=run.main)
        new = [t for t in self.thresholds if row["fid"] <= t and t not in self.reached]
        for t in new:
            self.reached[t] = {k: row[k] for k in ("step", "images", "wall_s", "fid")}
        if self.target and row["fid"] <= self.target:
            run.total_steps = s.step  # the loop ends after this step; the end's checkpoint and files follow
        if not run.main:
            return
        if new:
            reached = {f"{t:g}": v for t, v in sorted(self.reached.items(), reverse=True)}
            data = json.dumps({"target": self.target or None, "reached": reached}, indent=1).encode()
            checkpoint.atomic_write(self.file, lambda f: f.write(data))
        run.report.record(row)
        plots.plot_fid(run.dir / "metrics.jsonl", run.dir / "plots" / "fid.png")
        run.report.print(f"step {s.step}  FID {row['fid']:.2f} on {row['fid_n']} samples "
                         f"({row['fid_s']:.0f} s){'  new best' if best else ''}")
        if self.target and row["fid"] <= self.target:
            run.report.print(f"fid.target {self.target:g} reached at step {s.step}, {row['wall_s']:.0f} s into the run")

    def summary(self) -> str:
        """'time to FID <=100: 35 s (step 400), <=50: ...' for the thresholds reached, or ''."""
        if not self.reached:
            return ""
        return "time to FID " + ", ".join(f"<={t:g}: {v['wall_s']:.0f} s (step {v['step']})"
                                          for t, v in sorted(self.reached.items(), reverse=True))
