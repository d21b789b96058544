"""Train a DCGAN: the entry point, the set-up, and the loop with its side jobs in order.

    python -m fastdcgan.train                                    # built-in synthetic faces
    python -m fastdcgan.train --config configs/quickstart.toml   # small and quick, CPU is fine
    python -m fastdcgan.train --config configs/celeba64.toml data.root=/data/celeba
    torchrun --nproc_per_node=4 -m fastdcgan.train --config configs/celeba64-fast.toml data.root=/data/celeba

Starting it again on the same train.run_dir resumes from the latest checkpoint. What happens at a
step, at an epoch's end and at the end is Run._loop and Run._finish, read top to bottom; how a run
ends (finished, stopped, non-finite loss, input failure) is Run.fit, in one place.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from . import checkpoint, config, dist, perf, plots
from .config import Config, UsageError
from .data import InputFailure
from .jobs import FID, Checkpoints, Log, NonFinite, Plots, Samples
from .launch import check_run_dir, scan_data
from .metrics import extractors
from .report import Report, check_tensorboard
from .state import TrainState
from .rundir import RunDir
from .stop import Stop, StopRequested, stop_file_at_start

# How a run ends: the exit code, and the first word of RUN_DIR/STATUS (batch scripts read it).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NONFINITE, EXIT_STOPPED = 0, 1, 2, 3, 75
STATUS_WORDS = {EXIT_OK: "finished", EXIT_FAILED: "failed", EXIT_NONFINITE: "nonfinite",
                EXIT_STOPPED: "stopped"}
EXIT_CODES = ("exit codes: 0 finished, 1 input pipeline failure (after a checkpoint), "
              "2 usage/config/data error, 3 non-finite loss, 75 stopped by a signal after a checkpoint "
              "(run again to resume; under torchrun 0, with STATUS 'stopped N')")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastdcgan.train",
        description="Train a DCGAN (Radford et al. 2015) on a folder of images.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config.help_text() + "\n\n" + EXIT_CODES)
    p.add_argument("--config", help="TOML file of settings (overrides on the command line win)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    return p


def parse_args(argv: list[str] | None) -> tuple[Config, bool]:
    args = parser().parse_intermixed_args(argv)  # overrides may come before or after --config
    return config.build(args.config, args.overrides), args.dry_run


class Run:
    """One training run in one run directory: set up (or resume), then the loop and its side jobs."""

    def __init__(self, cfg: Config):
        self.t_created = time.perf_counter()
        self.cfg = cfg
        self.dir = Path(cfg.train.run_dir)
        self.paths = RunDir(self.dir)  # the names of what the run writes
        self.env = dist.from_environment()
        self.main = self.env.main
        device = dist.init(self.env, dist.parse_device(cfg.device), cfg.train.timeout_s)
        config.check_launch(cfg, self.env.world, device.type)
        check_tensorboard(cfg.log.tensorboard and self.main)
        # What can fail at once does, before the data scan and the cache build: the FID network, the
        # run directory, a checkpoint this model cannot load. Rank 0 looks at the run directory and the
        # data; every rank gets its answer (or its error).
        fid_net = extractors.load(cfg.fid.weights, device) if cfg.fid.every else None
        self.resume_from = self._on_main(lambda: check_run_dir(cfg))
        self.images = self._on_main(lambda: scan_data(cfg))
        self.stop_pending = self._on_main(lambda: stop_file_at_start(self.paths.stop))
        self.state = TrainState(cfg, self.env, device)
        self.state.started = self.t_created
        from .data.loaders import make_loader
        say = (lambda line: print(line, flush=True)) if self.main else (lambda line: None)
        self.loader = make_loader(cfg, self.images, device, self.env.rank, self.env.world, say=say)
        self.tracker = None
        if cfg.fid.every:  # on every rank: each evaluates its share
            from .metrics.tracker import FIDTracker
            self.tracker = FIDTracker(cfg, self.images.files, fid_net, self.paths.checkpoints,
                                      ema=self.state.G_ema is not None)
        self.init_from = None
        if self.resume_from:
            self.state.load(self.resume_from)
        elif cfg.train.init:  # a fresh run only: relaunched, a fine-tuning run resumes its own checkpoints
            self.init_from = self.state.init_from(cfg.train.init)
        s = self.state  # the epochs left at this launch's batch (a resume may change the global batch)
        self.total_steps = s.step + (cfg.train.epochs - s.epoch) * len(self.loader) - s.batch_in_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        if self.resume_from and cfg.fid.every and FID.ended_at_target(self.paths.time_to_fid,
                                                                      cfg.fid.target, s.step):
            self.total_steps = min(self.total_steps, s.step)  # launched again after it ended at fid.target

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

    def _make_jobs(self) -> None:
        """The side jobs, each given what it works on. The loop calls them by name."""
        cfg, s, report, main = self.cfg, self.state, self.report, self.main
        self.log = Log(cfg.log.every, self.total_steps, report, s.flops, s.peak, devices=self.env.world)
        self.samples = Samples(cfg.sample.every, s.fixed_z, self.paths.samples, report, main)
        self.plots = Plots(cfg.log.every, s.step, s.epoch, self.paths, cfg.train.loss, report, main)
        self.checkpoints = Checkpoints(cfg.ckpt.every, self.paths.checkpoints, cfg.ckpt.keep, main,
                                       jobs={"plots": self.plots, "samples": self.samples},
                                       resumed=self.resume_from, step=s.step, records=s.job_records)
        self.stop = Stop(self.paths.stop, self.env)
        self.fid = (FID(cfg.fid.every, self.tracker, cfg.fid.target, self.paths, report, main, s.step)
                    if self.tracker else None)

    def fit(self) -> int:
        """Train to the end, or until something ends the run; each way a run ends is one branch here:
        its checkpoint, its exit code, and the STATUS line written last."""
        if self.main:
            self.paths.config.write_text(config.to_toml(self.cfg))
        self.report = Report(self.dir, self.main, self.total_steps, self.state.step,
                             tensorboard=self.cfg.log.tensorboard)
        self._make_jobs()
        code = None
        try:
            self._introduce()
            self.stop.install()
            if self.stop_pending:
                self.report.print(f"{self.paths.stop} is there: this launch was asked to stop; not training",
                                  last=True)
                code = EXIT_STOPPED
            else:
                self.report.status("running", self.state.step)
                code = self._train()
        except NonFinite as e:  # nothing non-finite is saved: the last good checkpoint stays the latest
            self.report.print(f"error: non-finite loss by step {e.step}; stopping. Last good checkpoint: "
                              f"{self.checkpoints.latest() or 'none'}. "
                              "Lower the learning rates or try precision=fp32.", last=True)
            code = EXIT_NONFINITE
        finally:
            self.stop.uninstall()
            if code is not None:
                self.report.status(STATUS_WORDS[code], self.state.step,
                                   self.fid.summary() if self.fid else "")
            self.report.close()
        return code

    def _train(self) -> int:
        s = self.state
        try:
            self._loop()
        except StopRequested as stop:  # a checkpoint at this step, then leave (a NonFinite here goes to fit)
            path = self.checkpoints.save(s)
            if self.main:
                self.stop.leave_note(stop.why, s.step)
            self.report.print(f"stopped by {stop.why} at step {s.step}; checkpoint {path}. "
                              "Run the same command to resume.", last=True)
            return EXIT_STOPPED
        except InputFailure as e:
            return self._input_failed(e)
        self._finish()
        reached = self.fid.summary() if self.fid and self.fid.reached else ""
        self.report.print(f"done: {s.step} steps{'; ' + reached if reached else ''}; "
                          f"generator.pth, samples and plots in {self.dir}", last=True)
        return EXIT_OK

    def _loop(self) -> None:
        s, log, samples, plots_, ckpts, stop, fid = (self.state, self.log, self.samples, self.plots,
                                                     self.checkpoints, self.stop, self.fid)
        timer = self.timer = perf.StepTimer(s.device)
        warmup = self.warmup = perf.Warmup(s.compile != "off" or s.cuda_graphs,
                                           time.perf_counter() - self.t_created)
        # every rank's images count
        images_per_step = self.images_per_step = self.cfg.train.batch_size * self.env.world
        log.start(s.step)
        if fid and self.resume_from and s.step and fid.pending(s.step):
            # A launch that stopped (or was killed) at a step FID was due at, after that step's checkpoint
            # and before its score: the score comes first here, of the same weights, so none is skipped.
            if not self._on_main(lambda: fid.recorded(s.step)):
                with timer.paused():
                    if self._score_fid(s.step, s.epoch_label):
                        self.total_steps = s.step
        while s.step < self.total_steps:
            for batch in self.loader.epoch(s.epoch, s.batch_in_epoch):
                if s.step == 0:
                    self._save_reals(batch)
                # ----- the timed part: one training step
                timer.got_batch()
                s.gan.step(batch)
                timer.step_done()
                s.step, s.batch_in_epoch = s.step + 1, s.batch_in_epoch + 1
                s.images += images_per_step
                step, epoch = s.step, s.epoch_label
                if warmup.step_done():  # compile and capture are timed apart from img/s
                    timer.restart()
                    self.report.print(f"compile/capture warm-up: {warmup.costs['warmup_s']:.1f} s, "
                                      f"{warmup.costs['warmup_steps']} steps (left out of img/s)")
                # ----- the side jobs, in this order
                log.progress(step, epoch, s.wall_s())
                if log.due(step):
                    self._record(step, epoch)
                why = stop.requested(step)
                pausing = samples.due(step) or ckpts.due(step) or bool(fid and fid.due(step))
                with timer.paused() if pausing or why else nullcontext():  # these wait for the device
                    if samples.due(step):
                        samples.save(s.sampling_generator(), f"step_{step:08d}", step)
                    if why:
                        raise StopRequested(why)
                    if s.batch_in_epoch < len(self.loader):  # an epoch's last step: its end does these
                        if ckpts.due(step):
                            ckpts.save(s)
                        if fid and fid.pending(step) and self._score_fid(step, epoch):
                            self.total_steps = step  # fid.target reached: the run ends here, as if finished
                if step >= self.total_steps:
                    break
            if s.batch_in_epoch >= len(self.loader):  # a whole epoch: its end's jobs
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                with timer.paused():
                    samples.save(s.sampling_generator(), f"epoch_{s.epoch:03d}", s.step)
                    if plots_.due_at_epoch_end(s.step):
                        plots_.draw(s.gan.take_histograms(), s.step, s.epoch)
                    why = stop.requested(s.step, now=True)
                    if why:
                        raise StopRequested(why)
                    ckpts.save(s)
                    if fid and fid.pending(s.step) and self._score_fid(s.step, s.epoch):
                        self.total_steps = s.step

    def _record(self, step: int, epoch: int) -> None:
        """A metrics row of the steps since the last (one host sync per row, never per step)."""
        s = self.state
        means = s.gan.read()
        if not all(math.isfinite(v) for v in means.values()):
            raise NonFinite(step)
        self.log.record(step, epoch, s.images, means, self.timer.read(self.images_per_step),
                        self.warmup.take_costs(), s.wall_s())

    def _score_fid(self, step: int, epoch: int) -> bool:
        """FID now; a new best is checkpointed (best_fid links to that file). True at fid.target."""
        s, fid, ckpts = self.state, self.fid, self.checkpoints
        row = fid.score(s.sampling_generator(), step, epoch, s.images, s.wall_s())
        if fid.is_best(row) and not ckpts.saved_at(step):
            ckpts.save(s)  # every rank takes part
        fid.keep(row, ckpts.last_path if self.main else None)
        return fid.target_reached(row)

    def _finish(self) -> None:
        """After the last step: what is not done yet of the last grid, plots and checkpoint, then the
        weights users load (generator.pth, discriminator.pth)."""
        s = self.state
        if self.log.last != s.step:  # fid.target ended the run at a step that was not a log step
            self._record(s.step, s.epoch_label)
        with self.timer.paused():
            if self.samples.last != s.step:  # stopped mid-epoch (max_steps): every run ends with a grid
                self.samples.save(s.sampling_generator(), f"step_{s.step:08d}", s.step)
            if self.plots.undrawn(s.step):
                # a look at the histograms that leaves them and the pace as they were: whether or not this
                # step's checkpoint came before it, a relaunch draws as if the run had never stopped
                self.plots.draw(s.gan.take_histograms(keep=True), s.step, s.epoch_label, paced=False)
            if not self.checkpoints.saved_at(s.step):
                self.checkpoints.save(s)
            self.checkpoints.write_weights(s, self.paths)

    def _save_reals(self, batch) -> None:
        reals = self.paths.samples / "reals.png"
        if self.main and not reals.exists():
            plots.save_grid(batch[: self.cfg.sample.n].permute(0, 3, 1, 2).float() / 127.5 - 1, reals)

    def _input_failed(self, error: InputFailure) -> int:
        """The input broke in a way skipping a file cannot mend: keep the weights of the steps done.
        One process only: with several, a save is a collective the other ranks are not in (they are
        inside a step); the run then ends at train.timeout_s, and resumes from the latest checkpoint."""
        ckpts, step = self.checkpoints, self.state.step
        try:
            path = (ckpts.save(self.state) if self.env.world == 1 and not ckpts.saved_at(step)
                    else ckpts.latest())
        except Exception as e:  # a CUDA error can leave nothing readable on the device
            path = f"none written now ({type(e).__name__}); latest {ckpts.latest()}"
        self.report.print(f"error: {error} (at step {step}); checkpoint {path}. Fix the cause and run "
                          "the same command to resume.", last=True)
        return EXIT_FAILED

    def _introduce(self) -> None:
        """The run's first lines: the data, how it trains, and where it resumed; plan.json."""
        cfg, im, s, say = self.cfg, self.images, self.state, self.report.print
        partitions = f" from {im.partition_file.name}" if im.partition_file else ""
        say(f"data: {len(im.files)} images in {im.root} "
            f"({im.layout} layout, split {cfg.data.split}{partitions}), "
            f"backend {self.loader.name}, {len(self.loader)} steps per epoch")
        if im.missing_rows:
            say(f"note: {im.missing_rows} rows of {im.partition_file.name} name files that are not on disk; "
                "ignored")
        if im.small:
            size = cfg.data.image_size
            say(f"warning: {im.small} images are smaller than {size}x{size}; they are upscaled")
        if self.main:  # this launch's scan's list: one an earlier launch wrote goes once its files decode
            self.paths.skipped.unlink(missing_ok=True)
        if im.skipped and self.main:
            listing = self.paths.skipped
            listing.write_text("".join(f"{p}\t{why}\n" for p, why in im.skipped))
            first = ", ".join(p.name for p, _ in im.skipped[:3])
            more = f" and {len(im.skipped) - 3} more" if len(im.skipped) > 3 else ""
            say(f"warning: skipped {len(im.skipped)} files that do not decode ({first}{more}); "
                f"full list in {listing}")
        if self.tracker:
            say(self.tracker.prepare())
        batch = cfg.train.batch_size
        graphs = "on" if s.cuda_graphs else "off (needs CUDA)" if cfg.cuda_graphs else "off"
        compiled = f"{s.compile} (auto)" if cfg.compile == "auto" else s.compile
        say(f"device {s.device}, precision {s.precision}, channels_last {cfg.channels_last}, "
            f"compile {compiled}, cuda_graphs {graphs}")
        world = (f", {self.env.world} processes, global batch {batch * self.env.world}"
                 if self.env.world > 1 else "")
        say(f"batch {batch} per process{world}, {self.total_steps} steps, {s.flops / 1e9:.2f} GFLOP "
            f"per image per step, run dir {self.dir}")
        for line in config.inert(cfg, self.env.world, self.loader.name):
            say(f"note: {line}")
        if self.init_from:
            say(f"weights from {self.init_from} (train.init); fresh optimizers, from step 0")
        if self.resume_from:
            say(f"resumed from {self.resume_from} at step {s.step} "
                f"(epoch {s.epoch + 1}, after batch {s.batch_in_epoch})")
            changed = config.diff(s.resumed_config, config.to_dict(cfg))
            if changed:
                say(f"note: settings changed since the checkpoint (the new ones apply): {', '.join(changed)}")
        if self.main:  # after a resume: the optimizers are as this launch runs them
            plan = json.dumps(s.plan(self.loader.name), indent=1).encode()
            checkpoint.atomic_write(self.paths.plan, lambda f: f.write(plan))


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
    # torchrun takes any exit but 0 for a fault: it would restart the workers (spending --max-restarts
    # on an orderly stop) and print a ChildFailedError. Under it a stop exits 0; STATUS says `stopped N`.
    return EXIT_OK if code == EXIT_STOPPED and dist.under_torchrun() else code


if __name__ == "__main__":
    sys.exit(main())
