"""Train a DCGAN. Glue and the loop; the parts live in their own modules.

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
import contextlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, config, dist, perf, plots
from .config import Config, UsageError
from .data import InputFailure, folder
from .model import build_models, fixed_noise, sample
from .step import GANStep, load_optimizer, make_ema, make_optimizers, set_hyperparameters

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NONFINITE, EXIT_STOPPED = 0, 1, 2, 3, 75
STATUS_WORDS = {EXIT_OK: "finished", EXIT_FAILED: "failed", EXIT_NONFINITE: "nonfinite", EXIT_STOPPED: "stopped"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_FILE = "STOP"       # touch RUN_DIR/STOP to stop a run at the next check (how sbatch relays USR1)
STOP_CHECK_S = 1.0       # seconds between stop checks when several processes must agree (rank 0's clock)


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


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on a GPU that has it; fp32 on CPU (no native bf16 here: autocast was ~20x slower)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def resolve_compile(name: str, device: torch.device) -> str:
    """auto: compile on CUDA, where it pays; off on CPU, where it costs ~45 s of compiling and then ran
    no faster than eager (74.9 vs 77.9 img/s, batch 64, ngf = ndf = 64, 2 cores)."""
    if name == "auto":
        return "default" if device.type == "cuda" else "off"
    return name


def configure_backends(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithms for our fixed shapes (benchmark mode). Its choice
    may differ between runs, so on a GPU runs are close but not bit-identical (README)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])


class Exit(Exception):
    """Leave the loop with this exit code (non-finite loss, or a stop signal after its checkpoint)."""

    def __init__(self, code: int):
        self.code = code


class Display:
    """A rich progress bar on a terminal; plain log lines in batch jobs and pipes."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        from rich.console import Console
        self.console = Console()
        self.progress = None
        self.enabled = enabled  # only rank 0 shows anything
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
            self.task = self.progress.add_task("train", total=total, completed=start, epoch=0, info="")
            self.progress.start()

    def update(self, step: int, epoch: int, info: str | None = None) -> None:
        if self.progress:
            fields = {"epoch": epoch} if info is None else {"epoch": epoch, "info": info}
            self.progress.update(self.task, completed=step, **fields)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.progress:
            self.console.print(line, highlight=False)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


class Run:
    """One training run in one run directory: set up, resume, loop, write every artefact."""

    def __init__(self, cfg: Config):
        self.t_created = time.perf_counter()
        self.cfg = cfg
        self.dir = Path(cfg.train.run_dir)
        self.ckpt_dir = self.dir / "checkpoints"
        self.env = dist.from_environment()
        self.main = self.env.main
        self.device = dist.init(self.env, resolve_device(cfg.device), cfg.train.timeout_s)
        if cfg.cuda_graphs and self.device.type == "cuda" and self.env.world > 1:
            raise UsageError("cuda_graphs=true works in one process only; with several use compile=default")
        configure_backends(self.device)
        self.compile = resolve_compile(cfg.compile, self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        # Rank 0 looks at the run directory and the data; every rank gets its answer (or its error).
        self.resume_from, self.images = self._on_main(lambda: (self._find_resume(), self._scan_data()))
        self.stop_pending = self._on_main(self._stop_file_at_start)

        if self.compile != "off":
            # Compiled code is per run. Entries left by earlier runs in this process (a notebook, a
            # sweep) count toward dynamo's recompile limit, past which it silently runs eager.
            torch._dynamo.reset()
        torch.manual_seed(cfg.train.seed)
        m = cfg.model
        self.G, self.D = build_models(m.nz, m.ngf, m.ndf, cfg.data.image_size, m.d_dropout)
        if self.env.rank:  # same initial weights everywhere, different noise per rank
            torch.manual_seed(cfg.train.seed + 1_000_003 * self.env.rank)
        if m.sync_bn and self.env.world > 1:
            self.G = dist.convert_sync_batchnorm(self.G, self.device)
            self.D = dist.convert_sync_batchnorm(self.D, self.device)
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.G.to(self.device, memory_format=memory_format)
        self.D.to(self.device, memory_format=memory_format)
        self.G_ema = make_ema(self.G) if m.ema else None  # follows G inside the step; samples and FID use it
        o = cfg.optim
        self.cuda_graphs = cfg.cuda_graphs and self.device.type == "cuda"  # a preset's graphs mean nothing on CPU
        self.lr_scale = self.env.world if o.scale_lr else 1
        self.opt_g, self.opt_d = make_optimizers(self.G, self.D, o.lr_g * self.lr_scale, o.lr_d * self.lr_scale,
                                                 (o.beta1, o.beta2), compiled=self.compile != "off",
                                                 graphs=self.cuda_graphs, amp_dtype=PRECISIONS[self.precision])
        # GANStep trains compiled wrappers when asked; self.G and self.D stay the plain modules we save.
        self.gan = GANStep(self.G, self.D, self.opt_g, self.opt_d, nz=m.nz, real_label=cfg.train.real_label,
                           d_steps=cfg.train.d_steps, g_steps=cfg.train.g_steps,
                           amp_dtype=PRECISIONS[self.precision], channels_last=cfg.channels_last,
                           compile=self.compile, cuda_graphs=self.cuda_graphs, distributed=self.env.world > 1,
                           ema=self.G_ema, ema_decay=m.ema)
        self.flops = perf.step_flops(self.G, self.D, m.nz, cfg.data.image_size, cfg.train.d_steps, cfg.train.g_steps)
        self.peak = perf.peak_flops(self.device, self.precision)
        self.loader = self._make_loader()
        self.fid = self._make_fid()
        self.fixed_z = fixed_noise(cfg.sample.n, m.nz, cfg.train.seed + 1, self.device)
        self.step = self.epoch = self.batch_in_epoch = 0
        if self.resume_from:
            self._load(self.resume_from)
        self.total_steps = cfg.train.epochs * len(self.loader)
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.stop_signal: int | None = None
        self.next_stop_check = self.step + 1  # every rank checks at this step (rank 0 sets it at each check)
        self.stop_checked = (self.step, time.perf_counter())  # rank 0: step and time of the last check

    # ----- setup -----
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

    def _stop_file_at_start(self) -> bool:
        """A stop leaves RUN_DIR/STOP. A fresh launch clears it; workers that torchrun restarts in the
        same launch find it and stop at once, rather than train on in an allocation being taken away."""
        self.dir.mkdir(parents=True, exist_ok=True)
        stop = self.dir / STOP_FILE
        if stop.exists() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            return True
        stop.unlink(missing_ok=True)
        return False

    def _find_resume(self) -> Path | None:
        how = self.cfg.train.resume
        if how == "auto":
            return checkpoint.latest(self.ckpt_dir)
        if how == "never":
            if self.dir.exists() and any(self.dir.iterdir()):
                raise UsageError(f"train.run_dir {self.dir} is not empty and train.resume=never")
            return None
        path = Path(how)
        if not path.is_file():
            raise UsageError(f"train.resume: no checkpoint file {path}")
        return path

    def _scan_data(self) -> folder.ImageList:
        d = self.cfg.data
        root = d.root
        if not root:
            from .data import synthetic
            root = synthetic.default_root(n=d.synthetic_n, seed=0)
        images = folder.scan(root, d.split, workers=d.workers)
        return images

    def _make_loader(self):
        from .data.loaders import make_loader
        say = (lambda line: print(line, flush=True)) if self.main else (lambda line: None)
        return make_loader(self.cfg, self.images, self.device, self.env.rank, self.env.world, say=say)

    def _make_fid(self):
        """The FID tracker when fid.every is set (on every rank: each evaluates its share)."""
        if not self.cfg.fid.every:
            return None
        from .metrics.tracker import FIDTracker
        return FIDTracker(self.cfg, self.images.files, self.device, self.ckpt_dir, ema=self.G_ema is not None)

    def _report_data(self, display: Display) -> None:
        im = self.images
        display.print(f"data: {len(im.files)} images in {im.root} ({im.layout} layout, split {self.cfg.data.split}), "
                      f"backend {self.loader.name}, {len(self.loader)} steps per epoch")
        if im.missing_rows:
            display.print(f"note: {im.missing_rows} rows of list_eval_partition.txt name files that are not on disk; ignored")
        if im.skipped and self.main:
            listing = self.dir / "skipped_files.txt"
            listing.write_text("".join(f"{p}\t{why}\n" for p, why in im.skipped))
            first = ", ".join(p.name for p, _ in im.skipped[:3])
            more = f" and {len(im.skipped) - 3} more" if len(im.skipped) > 3 else ""
            display.print(f"warning: skipped {len(im.skipped)} files that do not decode ({first}{more}); "
                          f"full list in {listing}")

    def plan(self) -> dict:
        """What this launch runs, as built rather than as asked (RUN_DIR/plan.json): the backend auto
        chose, the resolved precision and compile mode, the models' memory format, each optimizer's
        kind, form and rate, the updates per step, the labels, BatchNorm's kind."""
        def optimizer(opt: torch.optim.Optimizer) -> dict:
            g = opt.param_groups[0]
            return {"kind": type(opt).__name__, "lr": float(g["lr"]), "betas": [float(b) for b in g["betas"]],
                    **{k: g.get(k) for k in ("foreach", "fused", "capturable")}}
        weight = next(p for p in self.G.parameters() if p.dim() == 4)
        norms = sorted({type(m).__name__ for m in [*self.G.modules(), *self.D.modules()] if "Norm" in type(m).__name__})
        return {"device": str(self.device), "world": self.env.world, "backend": self.loader.name,
                "precision": self.precision, "compile": self.compile, "cuda_graphs": self.cuda_graphs,
                "memory_format": "channels_last" if weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous() else "contiguous",
                "batch_per_process": self.cfg.train.batch_size, "global_batch": self.cfg.train.batch_size * self.env.world,
                "d_steps": self.gan.d_steps, "g_steps": self.gan.g_steps, "real_label": self.gan.real_label,
                "norms": norms, "ema": self.G_ema is not None,
                "optimizers": {"G": optimizer(self.opt_g), "D": optimizer(self.opt_d)}}

    # ----- checkpoints -----
    def state(self) -> dict:
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "config": config.to_dict(self.cfg), "G": self.G.state_dict(), "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "gan": self.gan.state_dict(),
            "rng": dist.all_gather(rng_state()), "world": self.env.world, "version": 1,
        } | ({"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {})

    def _load(self, path: Path) -> None:
        try:
            s = checkpoint.load(path)
            self.G.load_state_dict(s["G"])
            self.D.load_state_dict(s["D"])
            load_optimizer(self.opt_g, s["opt_g"])  # keeps the flags this run's mode built
            load_optimizer(self.opt_d, s["opt_d"])
            if self.G_ema is not None:  # a checkpoint from a run without EMA: start the average at G
                self.G_ema.load_state_dict(s.get("G_ema", s["G"]))
        except (RuntimeError, KeyError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"cannot resume from {path}: {first}") from None
        # The optimizer state carries the old hyperparameters; the config given now is the one that applies.
        o = self.cfg.optim
        set_hyperparameters(self.opt_g, o.lr_g * self.lr_scale, (o.beta1, o.beta2))
        set_hyperparameters(self.opt_d, o.lr_d * self.lr_scale, (o.beta1, o.beta2))
        self.gan.load_state_dict(s["gan"])
        self.step, self.epoch, self.batch_in_epoch = s["step"], s["epoch"], s["batch_in_epoch"]
        saved_world, rank = s.get("world", 1), self.env.rank
        if saved_world == self.env.world:
            set_rng_state(s["rng"][rank])
        else:
            # Another world size: keep the images seen this epoch (exact at epoch boundaries; mid-epoch
            # the new slicing of the same permutation may repeat or skip up to a global batch), new noise.
            self.batch_in_epoch = self.batch_in_epoch * saved_world // self.env.world
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * rank + self.step)
        self.resumed_config = s["config"]

    def save(self) -> Path | None:
        """Checkpoint now, unless the weights may be non-finite on any rank; returns the path written.

        Every rank calls it at the same step (state() gathers every rank's RNG); rank 0 writes; the
        barrier after keeps other ranks from exiting, and a launcher from killing rank 0, mid-write.
        """
        if not self.gan.finite():
            return None
        state = self.state()
        path = checkpoint.save(state, self.ckpt_dir, self.cfg.ckpt.keep) if self.main else self.ckpt_dir / "latest"
        dist.barrier()
        return path

    # ----- artefacts -----
    def save_samples(self, name: str) -> None:
        if self.main:
            plots.save_grid(sample(self.sampling_G, self.fixed_z), self.dir / "samples" / f"{name}.png")

    @property
    def sampling_G(self) -> torch.nn.Module:
        """The generator that samples and FID use: the EMA one when model.ema is on."""
        return self.G if self.G_ema is None else self.G_ema

    def write_plots(self, epoch_label: int) -> None:
        hist = self.gan.take_histograms()  # on every rank: it sums the ranks' histograms
        if self.main:
            plots.plot_losses(self.dir / "metrics.jsonl", self.dir / "plots" / "loss.png")
            plots.plot_d_outputs(hist, epoch_label, self.dir / "plots" / f"d_outputs_epoch_{epoch_label:03d}.png")

    def _trim_metrics(self) -> None:
        """After a resume, forget log rows from steps the checkpoint does not contain (they are redone)."""
        if not self.main:
            return
        path = self.dir / "metrics.jsonl"
        rows = [r for r in plots.read_metrics(path) if r["step"] <= self.step]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # ----- the loop -----
    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal of the same kind ends the process at once

    def _write_status(self, state: str) -> None:
        """RUN_DIR/STATUS: running, finished, stopped (resumable) or nonfinite. Batch scripts read it:
        torchrun reports any non-zero worker exit as its own exit code 1."""
        if self.main:
            checkpoint.atomic_write(self.dir / "STATUS", lambda f: f.write(f"{state} {self.step}\n".encode()))

    def fit(self) -> int:
        cfg = self.cfg
        if self.main:
            (self.dir / "config.toml").write_text(config.to_toml(cfg))
        display = Display(self.total_steps, self.step, enabled=self.main)
        code = None
        try:
            self._report_data(display)
            if self.fid:
                display.print(self.fid.prepare())
            batch = self.cfg.train.batch_size
            graphs = "on" if self.cuda_graphs else "off (needs CUDA)" if cfg.cuda_graphs else "off"
            compiled = f"{self.compile} (auto)" if cfg.compile == "auto" else self.compile
            display.print(f"device {self.device}, precision {self.precision}, channels_last {cfg.channels_last}, "
                          f"compile {compiled}, cuda_graphs {graphs}")
            world = f", {self.env.world} processes, global batch {batch * self.env.world}" if self.env.world > 1 else ""
            display.print(f"batch {batch} per process{world}, {self.total_steps} steps, {self.flops / 1e9:.2f} GFLOP "
                          f"per image per step, run dir {self.dir}")
            if self.resume_from:
                display.print(f"resumed from {self.resume_from} at step {self.step} (epoch {self.epoch}, "
                              f"batch {self.batch_in_epoch})")
                self._trim_metrics()
                changed = config.diff(self.resumed_config, config.to_dict(cfg))
                if changed:
                    display.print(f"note: settings changed since the checkpoint (the new ones apply): {', '.join(changed)}")
            if self.main:  # after a resume: the optimizers are as this launch runs them
                checkpoint.atomic_write(self.dir / "plan.json", lambda f: f.write(json.dumps(self.plan(), indent=1).encode()))
            for s in STOP_SIGNALS:
                signal.signal(s, self._on_signal)
            if self.stop_pending:
                display.print(f"{self.dir / STOP_FILE} is there: this launch was asked to stop; not training")
                raise Exit(EXIT_STOPPED)
            self._write_status("running")
            code = self._loop(display)
        except Exit as e:
            code = e.code
        except InputFailure as e:
            code = self._input_failed(e)
        finally:
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_DFL)
            display.close()
            if code is not None:
                self._write_status(STATUS_WORDS[code])
        return code

    def _input_failed(self, error: InputFailure) -> int:
        """The input broke in a way skipping a file cannot mend: keep the weights of the steps done.
        One process only: with several, a save is a collective the other ranks are not in (they are
        inside a step); the run then ends at train.timeout_s, and resumes from the latest checkpoint."""
        try:
            saving = self.env.world == 1 and self.last_saved != self.step
            path = self.save() if saving else checkpoint.latest(self.ckpt_dir)
        except Exception as e:  # a CUDA error can leave nothing readable on the device
            path = f"none written now ({type(e).__name__}); latest {checkpoint.latest(self.ckpt_dir)}"
        self.display.print(f"error: {error} (at step {self.step}); checkpoint {path}. Fix the cause and run "
                           "the same command to resume.")
        return EXIT_FAILED

    def _loop(self, display: Display) -> int:
        self.display, self.timer = display, perf.StepTimer(self.device)
        self.last_saved = self.step if self.resume_from else -1
        reals = self.dir / "samples" / "reals.png"
        self.warmup = perf.Warmup(self.compile != "off" or self.cuda_graphs, time.perf_counter() - self.t_created)
        metrics = open(self.dir / "metrics.jsonl", "a") if self.main else contextlib.nullcontext()
        with metrics as self.metrics_file:
            while self.step < self.total_steps:
                for batch in self.loader.epoch(self.epoch, self.batch_in_epoch):
                    if self.step == 0 and self.main and not reals.exists():
                        plots.save_grid(batch[: self.cfg.sample.n].permute(0, 3, 1, 2).float() / 127.5 - 1, reals)
                    self.timer.got_batch()
                    self.gan.step(batch)
                    self.timer.step_done()
                    self.step += 1
                    self.batch_in_epoch += 1
                    if self.warmup.step_done():  # compile and capture are timed apart from img/s
                        self.timer.restart()
                        w = self.warmup.costs
                        display.print(f"compile/capture warm-up: {w['warmup_s']:.1f} s, {w['warmup_steps']} steps "
                                      "(left out of img/s)")
                    self._after_step()
                    if self.step >= self.total_steps:
                        break
                if self.batch_in_epoch >= len(self.loader):
                    self._end_epoch()
            if self.batch_in_epoch:  # stopped by max_steps mid-epoch: plot what there is
                self.write_plots(self.epoch + 1)
            if self.last_saved != self.step:
                self._checkpoint()
        if self.main:
            torch.save(self.G.state_dict(), self.dir / "generator.pth")
            torch.save(self.D.state_dict(), self.dir / "discriminator.pth")
            if self.G_ema is not None:
                torch.save(self.G_ema.state_dict(), self.dir / "generator_ema.pth")
        display.print(f"done: {self.step} steps; generator.pth, samples and plots in {self.dir}")
        return EXIT_OK

    def _after_step(self) -> None:
        cfg, step = self.cfg, self.step
        self.display.update(step, self.epoch)
        if step % cfg.log.every == 0 or step == self.total_steps:
            self._log()
        stop = self._stop_requested()
        sample, ckpt = step % cfg.sample.every == 0, step % cfg.ckpt.every == 0
        fid = self.fid is not None and step % cfg.fid.every == 0
        if not (stop or sample or ckpt or fid):
            return  # most steps: nothing to do, and no wait for the device
        with self.timer.paused():
            if sample:
                self.save_samples(f"step_{step:08d}")
            if stop:
                self._stop()
            if ckpt:
                self._checkpoint()
            if fid:
                self._fid()

    def _end_epoch(self) -> None:
        """A whole epoch done: its samples, plots and checkpoint."""
        with self.timer.paused():
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.save_samples(f"epoch_{self.epoch:03d}")
            self.write_plots(self.epoch)
            self._checkpoint()
            if self._stop_requested(now=True):
                self._stop()

    def _fid(self) -> None:
        """Evaluate FID, log it as its own metrics row, plot it, keep checkpoints/best_fid."""
        row = self.fid.evaluate(self.sampling_G, self.step, self.epoch)  # the same score on every rank
        if self.fid.is_best(row) and self.last_saved != self.step:
            self._checkpoint()  # every rank takes part; best_fid then links to this step's file
        saved = checkpoint.latest(self.ckpt_dir) if self.main else None
        best = self.fid.keep_if_best(row, saved, self.state, write=self.main)
        if not self.main:
            return
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        plots.plot_fid(self.dir / "metrics.jsonl", self.dir / "plots" / "fid.png")
        self.display.print(f"step {self.step}  FID {row['fid']:.2f} on {row['fid_n']} samples "
                           f"({row['fid_s']:.0f} s){'  new best' if best else ''}")

    def _checkpoint(self) -> Path:
        path = self.save()
        if path is None:
            self._nonfinite()
        self.last_saved = self.step
        return path

    def _log(self) -> None:
        m = self.gan.read()
        if not all(np.isfinite(v) for v in m.values()):
            self._nonfinite()
        batch = self.cfg.train.batch_size * self.env.world  # global: every rank's images count
        row = {"step": self.step, "epoch": self.epoch, "images": self.step * batch, **m,
               **self.timer.read(batch), "time": time.time()}
        row.update(self.warmup.take_costs())  # the first row after the set-up says what it cost, once
        if self.peak and "img_per_s" in row:
            row["mfu"] = row["img_per_s"] * self.flops / self.peak
        if self.main:
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()
        info = (f"loss_d {m['loss_d']:.3f}  loss_g {m['loss_g']:.3f}  D(x) {m['d_real']:.3f}  "
                f"D(G(z)) {m['d_fake']:.3f}")
        if "img_per_s" in row:
            info += (f"  {row['img_per_s']:.0f} img/s  data {row['data_ms']:.1f} ms  compute {row['compute_ms']:.1f} ms"
                     + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""))
        self.display.update(self.step, self.epoch, info)
        if self.display.progress is None:
            self.display.print(f"step {self.step}/{self.total_steps}  epoch {self.epoch}  {info}")

    def _nonfinite(self) -> None:
        good = checkpoint.latest(self.ckpt_dir)
        self.display.print(f"error: non-finite loss by step {self.step}; stopping. Last good checkpoint: "
                           f"{good or 'none'}. Lower the learning rates or try precision=fp32.")
        raise Exit(EXIT_NONFINITE)

    def _stop_requested(self, now: bool = False) -> bool:
        """A stop signal on any rank, or RUN_DIR/STOP: every rank gets the same answer at the same step.

        One process reads its signal flag every step. Several must agree in a collective, held only at
        steps rank 0 spaces about STOP_CHECK_S apart by its clock and sends along with each answer:
        fast steps never wait on it, and slow ones are checked every step, so a stop takes effect
        within about a second or one step, well inside a launcher's grace period (torchrun: 30 s).
        """
        if self.env.world == 1 and self.stop_signal is not None:
            return True
        if not now and self.step < self.next_stop_check:
            return False
        local = self.stop_signal is not None or (self.main and (self.dir / STOP_FILE).exists())
        following = self.next_stop_check if now else self._paced_stop_check()
        stop, self.next_stop_check = dist.agree(local, following)
        return stop

    def _paced_stop_check(self) -> int:
        """The step about STOP_CHECK_S from now at the pace since the last check (only rank 0's counts).
        Pauses (samples, checkpoints, FID) count as slow steps: they bring the next check nearer."""
        last_step, last_t = self.stop_checked
        t = time.perf_counter()
        self.stop_checked = (self.step, t)
        seconds_per_step = (t - last_t) / max(self.step - last_step, 1)
        return self.step + max(1, min(int(STOP_CHECK_S / max(seconds_per_step, 1e-6)), 10_000))

    def _stop(self) -> None:
        name = signal.Signals(self.stop_signal).name if self.stop_signal else f"{STOP_FILE} file"
        path = self._checkpoint()
        if self.main:
            (self.dir / STOP_FILE).write_text(f"stopped by {name} at step {self.step}\n")
        self.display.print(f"stopped by {name} at step {self.step}; checkpoint {path}. Run the same command to resume.")
        raise Exit(EXIT_STOPPED)


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
        return run.fit()
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
