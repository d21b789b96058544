"""Train a DCGAN: the entry point and the loop. Its parts live in their own modules: the training
state (state.py), the side jobs (jobs.py, stop.py) and where records go (report.py).

    python -m fastdcgan.train                                    # built-in synthetic faces
    python -m fastdcgan.train --config configs/quickstart.toml   # small and quick, CPU is fine
    python -m fastdcgan.train --config configs/celeba64.toml data.root=/data/celeba

Starting it again on the same train.run_dir resumes from the latest checkpoint.
Exit codes: 0 finished; 1 the input pipeline failed beyond skipping a file (after a checkpoint);
2 bad usage, config or data; 3 non-finite loss (the last good checkpoint is kept); 75 stopped by
SIGTERM, SIGINT or SIGUSR1 after writing a checkpoint: run again to resume.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import checkpoint, config, dist, perf, plots
from .config import Config, UsageError
from .data import InputFailure, folder
from .jobs import (EXIT_FAILED, EXIT_OK, EXIT_STOPPED, EXIT_USAGE, STATUS_WORDS, FID, Checkpoints, Exit, Log,
                   Plots, Samples)
from .report import Report, check_tensorboard
from .state import TrainState, resolve_device
from .stop import STOP_FILE, Stop, stop_file_at_start


def parse_args(argv: list[str] | None) -> tuple[Config, bool]:
    p = argparse.ArgumentParser(
        prog="python -m fastdcgan.train", description="Train a DCGAN (Radford et al. 2015) on a folder of images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=config.help_text() + "\n\nexit codes: 0 finished, 1 input pipeline failure (after a checkpoint), "
        "2 usage/config/data error, 3 non-finite loss, 75 stopped by a signal after a checkpoint (run again to resume)")
    p.add_argument("--config", help="TOML file of settings (overrides on the command line win)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after --config
    return config.build(args.config, args.overrides), args.dry_run


def find_resume(cfg: Config) -> Path | None:
    """The checkpoint this launch resumes from, as train.resume asks (auto: the latest, if any)."""
    how, run_dir = cfg.train.resume, Path(cfg.train.run_dir)
    if how == "auto":
        return checkpoint.latest(run_dir / "checkpoints")
    if how == "never":
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(f"train.run_dir {run_dir} is not empty and train.resume=never")
        return None
    path = Path(how)
    if not path.is_file():
        raise UsageError(f"train.resume: no checkpoint file {path}")
    return path


def scan_data(cfg: Config) -> folder.ImageList:
    """The images the run trains on (the built-in synthetic faces when data.root is empty)."""
    d = cfg.data
    root = d.root
    if not root:
        from .data import synthetic
        root = synthetic.default_root(n=d.synthetic_n, seed=0)
    return folder.scan(root, d.split, workers=d.workers, min_size=d.image_size)


class Run:
    """One training run in one run directory: set up (or resume), then the loop and its side jobs."""

    def __init__(self, cfg: Config):
        self.t_created = time.perf_counter()
        self.cfg = cfg
        self.dir = Path(cfg.train.run_dir)
        self.env = dist.from_environment()
        self.main = self.env.main
        device = dist.init(self.env, resolve_device(cfg.device), cfg.train.timeout_s)
        if cfg.cuda_graphs and device.type == "cuda" and self.env.world > 1:
            raise UsageError("cuda_graphs=true works in one process only; with several use compile=default")
        check_tensorboard(cfg.log.tensorboard and self.main)
        # Rank 0 looks at the run directory and the data; every rank gets its answer (or its error).
        self.resume_from, self.images = self._on_main(lambda: (find_resume(cfg), scan_data(cfg)))
        self.stop_pending = self._on_main(lambda: stop_file_at_start(self.dir))
        self.state = TrainState(cfg, self.env, device)
        self.state.started = self.t_created
        from .data.loaders import make_loader
        say = (lambda line: print(line, flush=True)) if self.main else (lambda line: None)
        self.loader = make_loader(cfg, self.images, device, self.env.rank, self.env.world, say=say)
        self.tracker = None
        if cfg.fid.every:  # on every rank: each evaluates its share
            from .metrics.tracker import FIDTracker
            self.tracker = FIDTracker(cfg, self.images.files, device, self.dir / "checkpoints",
                                      ema=self.state.G_ema is not None)
        self.init_from = None
        if self.resume_from:
            self.state.load(self.resume_from)
        elif cfg.train.init:  # a fresh run only: relaunched, a fine-tuning run resumes its own checkpoints
            self.init_from = self.state.init_from(cfg.train.init)
        self.total_steps = cfg.train.epochs * len(self.loader)
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        step = self.state.step
        self.checkpoints = Checkpoints(cfg.ckpt.every, self.dir / "checkpoints", cfg.ckpt.keep,
                                       last_saved=step if self.resume_from else -1)
        self.stop = Stop(self.dir, self.env, step)
        # In this order at a step and at an epoch's end: a stop comes before the checkpoint it writes anyway.
        self.fid = FID(cfg.fid.every, self.tracker, cfg.fid.target, self.dir) if self.tracker else None
        self.jobs = [Log(cfg.log.every), Samples(cfg.sample.every), Plots(cfg.log.every, step, self.state.epoch),
                     self.stop, self.checkpoints, *([self.fid] if self.fid else [])]

    # What tests and tools reach for on a Run.
    G = property(lambda self: self.state.G)
    D = property(lambda self: self.state.D)
    gan = property(lambda self: self.state.gan)
    opt_g = property(lambda self: self.state.opt_g)
    opt_d = property(lambda self: self.state.opt_d)
    step = property(lambda self: self.state.step)

    def _on_main(self, fn):
        """fn() on rank 0, its result (or its UsageError) on every rank."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except UsageError as e:
                error = str(e)
        result, error = dist.broadcast((result, error))
        if error:
            raise UsageError(error)
        return result

    def _introduce(self) -> None:
        """The run's first lines: the data, how it trains, and where it resumed."""
        cfg, im, s, say = self.cfg, self.images, self.state, self.report.print
        partitions = f" from {im.partition_file.name}" if im.partition_file else ""
        say(f"data: {len(im.files)} images in {im.root} ({im.layout} layout, split {cfg.data.split}{partitions}), "
            f"backend {self.loader.name}, {len(self.loader)} steps per epoch")
        if im.missing_rows:
            say(f"note: {im.missing_rows} rows of {im.partition_file.name} name files that are not on disk; ignored")
        if im.small:
            size = cfg.data.image_size
            say(f"warning: {im.small} images are smaller than {size}x{size}; they are upscaled")
        if im.skipped and self.main:
            listing = self.dir / "skipped_files.txt"
            listing.write_text("".join(f"{p}\t{why}\n" for p, why in im.skipped))
            first = ", ".join(p.name for p, _ in im.skipped[:3])
            more = f" and {len(im.skipped) - 3} more" if len(im.skipped) > 3 else ""
            say(f"warning: skipped {len(im.skipped)} files that do not decode ({first}{more}); full list in {listing}")
        if self.tracker:
            say(self.tracker.prepare())
        batch = cfg.train.batch_size
        graphs = "on" if s.cuda_graphs else "off (needs CUDA)" if cfg.cuda_graphs else "off"
        compiled = f"{s.compile} (auto)" if cfg.compile == "auto" else s.compile
        say(f"device {s.device}, precision {s.precision}, channels_last {cfg.channels_last}, "
            f"compile {compiled}, cuda_graphs {graphs}")
        world = f", {self.env.world} processes, global batch {batch * self.env.world}" if self.env.world > 1 else ""
        say(f"batch {batch} per process{world}, {self.total_steps} steps, {s.flops / 1e9:.2f} GFLOP "
            f"per image per step, run dir {self.dir}")
        if self.init_from:
            say(f"weights from {self.init_from} (train.init); fresh optimizers, from step 0")
        if self.resume_from:
            say(f"resumed from {self.resume_from} at step {s.step} (epoch {s.epoch + 1}, after batch {s.batch_in_epoch})")
            changed = config.diff(s.resumed_config, config.to_dict(cfg))
            if changed:
                say(f"note: settings changed since the checkpoint (the new ones apply): {', '.join(changed)}")

    def fit(self) -> int:
        cfg = self.cfg
        if self.main:
            (self.dir / "config.toml").write_text(config.to_toml(cfg))
        self.report = Report(self.dir, self.main, self.total_steps, self.state.step,
                             resumed=self.resume_from is not None, tensorboard=cfg.log.tensorboard)
        code = None
        try:
            self._introduce()
            if self.main:  # after a resume: the optimizers are as this launch runs them
                plan = json.dumps(self.state.plan(self.loader.name), indent=1).encode()
                checkpoint.atomic_write(self.dir / "plan.json", lambda f: f.write(plan))
            self.stop.install()
            if self.stop_pending:
                self.report.print(f"{self.dir / STOP_FILE} is there: this launch was asked to stop; not training",
                                  last=True)
                raise Exit(EXIT_STOPPED)
            self.report.status("running", self.state.step)
            code = self._loop()
        except Exit as e:
            code = e.code
        except InputFailure as e:
            code = self._input_failed(e)
        finally:
            self.stop.uninstall()
            if code is not None:
                self.report.status(STATUS_WORDS[code], self.state.step, self.fid.summary() if self.fid else "")
            self.report.close()
        return code

    def _loop(self) -> int:
        s, reals = self.state, self.dir / "samples" / "reals.png"
        self.timer = perf.StepTimer(s.device)
        self.warmup = perf.Warmup(s.compile != "off" or s.cuda_graphs, time.perf_counter() - self.t_created)
        while s.step < self.total_steps:
            for batch in self.loader.epoch(s.epoch, s.batch_in_epoch):
                if s.step == 0 and self.main and not reals.exists():
                    plots.save_grid(batch[: self.cfg.sample.n].permute(0, 3, 1, 2).float() / 127.5 - 1, reals)
                self.timer.got_batch()
                s.gan.step(batch)
                self.timer.step_done()
                s.step += 1
                s.batch_in_epoch += 1
                if self.warmup.step_done():  # compile and capture are timed apart from img/s
                    self.timer.restart()
                    w = self.warmup.costs
                    self.report.print(f"compile/capture warm-up: {w['warmup_s']:.1f} s, {w['warmup_steps']} steps "
                                      "(left out of img/s)")
                self._side_jobs("at_step")
                if s.step >= self.total_steps:
                    break
            if s.batch_in_epoch >= len(self.loader):
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                self._side_jobs("at_epoch_end")
        self._side_jobs("at_end")
        reached = f"; {self.fid.summary()}" if self.fid and self.fid.reached else ""
        self.report.print(f"done: {s.step} steps{reached}; generator.pth, samples and plots in {self.dir}", last=True)
        return EXIT_OK

    def _side_jobs(self, hook: str) -> None:
        """Each job's hook, in order; those that pause with the step timer stopped. At a step, only the
        jobs due then: on most steps none that pauses, so the loop never waits for the device."""
        jobs = [j for j in self.jobs if j.due(self.state.step)] if hook == "at_step" else self.jobs
        for job in jobs:
            if not job.pauses:
                getattr(job, hook)(self)
        paused = [j for j in jobs if j.pauses]
        if paused:
            with self.timer.paused():
                for job in paused:
                    getattr(job, hook)(self)

    def _input_failed(self, error: InputFailure) -> int:
        """The input broke in a way skipping a file cannot mend: keep the weights of the steps done.
        One process only: with several, a save is a collective the other ranks are not in (they are
        inside a step); the run then ends at train.timeout_s, and resumes from the latest checkpoint."""
        ckpts = self.checkpoints
        try:
            path = ckpts.save(self) if self.env.world == 1 and not ckpts.saved_now(self) else checkpoint.latest(ckpts.dir)
        except Exception as e:  # a CUDA error can leave nothing readable on the device
            path = f"none written now ({type(e).__name__}); latest {checkpoint.latest(ckpts.dir)}"
        self.report.print(f"error: {error} (at step {self.state.step}); checkpoint {path}. Fix the cause and run "
                          "the same command to resume.", last=True)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, dry_run = parse_args(argv)
        if dry_run:
            print(config.to_toml(cfg), end="")
            return EXIT_OK
        run = Run(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        dist.shutdown()
        return EXIT_USAGE
    except InputFailure as e:  # building the cache: nothing trained yet, nothing to save
        print(f"error: {e}", file=sys.stderr)
        dist.shutdown()
        return EXIT_FAILED
    try:
        code = run.fit()
    finally:
        dist.shutdown()
    import os
    # torchrun takes any exit but 0 for a fault: it would restart the workers (spending --max-restarts
    # on an orderly stop) and print a ChildFailedError. Under it a stop exits 0; STATUS says `stopped N`.
    if code == EXIT_STOPPED and "TORCHELASTIC_RUN_ID" in os.environ:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
