"""The training state, as one object: what the config builds (models, optimizers, the step) and what a
checkpoint holds (those, where the run is in its data, every rank's random number generators)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint, config, dist, perf
from .config import Config, UsageError
from .model import build_models, d_norm_for, fixed_noise
from .rundir import find_weights
from .step import GANStep, StepOptions, load_optimizer, make_ema, make_optimizers, set_hyperparameters

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on a GPU that has it; fp32 on CPU (on one without native bf16, as the
    development machine's, autocast was many times slower: BENCHMARKS.md, "Measurements behind
    choices in the code")."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def resolve_compile(name: str, device: torch.device) -> str:
    """auto: compile on CUDA, where it pays; off on CPU, where it costs a long compile and then ran
    no faster than eager (measured: BENCHMARKS.md, "Measurements behind choices in the code")."""
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


def seed_all(seed: int) -> None:
    """torch's, numpy's and Python's global generators from one seed. The step draws from torch's alone,
    but a checkpoint holds all three: seeded, they are the same in every run with this seed, and
    anything that draws from numpy or random later stays reproducible."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])


@torch.no_grad()
def recalibrate_batchnorm(G: nn.Module, nz: int, device: torch.device, batches: int = 4,
                          batch: int = 128) -> None:
    """BatchNorm running statistics that belong to G's own weights.

    The EMA generator averages G's weights but can only copy G's running statistics, which belong to
    G's weights, not to the average: its eval-mode samples are then normalised with the wrong means
    and variances. Reset them and take the exact average over a few batches of fixed noise in training
    mode (momentum None), touching no global RNG. The training step copies G's statistics over them
    again at its next EMA update, so training, and an exact resume, never see these.
    """
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta, was_training = [m.momentum for m in norms], G.training
    noise = torch.Generator().manual_seed(0x5EED)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    G.train()
    try:
        for _ in range(batches):
            G(torch.randn(batch, nz, 1, 1, generator=noise).to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        G.train(was_training)


def rank_share(ranks: list[dict], rank: int, world: int) -> dict:
    """This rank's running sums from a checkpoint's, which holds every rank's: its own, or at another
    number of ranks the totals on rank 0 (zeros elsewhere), so that the sums over ranks stay right."""
    if len(ranks) == world:
        return ranks[rank]
    return {k: sum(r[k] for r in ranks) * (rank == 0) for k in ranks[0]}


def read_weights(where: str) -> tuple[dict, dict, str]:
    """G's and D's weights from a run directory (its latest checkpoint, else its generator.pth and
    discriminator.pth), a checkpoint file, or a generator file with its discriminator beside it
    (generator.pth and discriminator.pth, or pytorch/examples' netG_epoch_N.pth and netD_epoch_N.pth)."""
    try:
        path = find_weights(where)
    except FileNotFoundError:
        raise UsageError(f"train.init: no run directory, checkpoint or generator file at {where}") from None
    try:
        s = checkpoint.load(path)
        if "G" in s and "D" in s:
            return s["G"], s["D"], f"checkpoint {path}"
        d_path = path.with_name(path.name.replace("generator", "discriminator").replace("netG", "netD"))
        if d_path == path or not d_path.is_file():
            raise UsageError(f"train.init: {path} holds a generator only; its discriminator "
                             f"({d_path.name if d_path != path else 'discriminator.pth'}) is not beside it")
        return s, checkpoint.load(d_path), f"{path} and {d_path.name}"
    except checkpoint.Unreadable as e:
        raise UsageError(f"train.init: cannot read {e}") from None


class TrainState:
    """Models, optimizers and the GAN step built as the config asks, and the run's place in its data."""

    def __init__(self, cfg: Config, env: dist.Env, device: torch.device):
        self.cfg, self.env, self.device = cfg, env, device
        configure_backends(device)
        self.compile = resolve_compile(cfg.compile, device)
        self.precision = resolve_precision(cfg.precision, device)
        self.cuda_graphs = cfg.cuda_graphs and device.type == "cuda"  # a preset's graphs mean nothing on CPU
        if self.compile != "off":
            # Compiled code is per run. Entries left by earlier runs in this process (a notebook, a
            # sweep) count toward dynamo's recompile limit, past which it silently runs eager.
            torch._dynamo.reset()
        seed_all(cfg.train.seed)
        m = cfg.model
        self.G, self.D = build_models(m.nz, m.ngf, m.ndf, cfg.data.image_size, m.d_dropout,
                                      d_norm=d_norm_for(cfg.train.loss), spectral_norm=m.spectral_norm)
        if env.rank:  # same initial weights everywhere, different noise per rank
            seed_all(cfg.train.seed + 1_000_003 * env.rank)
        if m.sync_bn and env.world > 1:
            self.G = dist.convert_sync_batchnorm(self.G, device)
            self.D = dist.convert_sync_batchnorm(self.D, device)
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.G.to(device, memory_format=memory_format)
        self.D.to(device, memory_format=memory_format)
        self.G_ema = make_ema(self.G) if m.ema else None  # follows G inside the step; samples and FID use it
        o = cfg.optim
        self.lr_scale = env.world if o.scale_lr else 1
        amp_dtype = PRECISIONS[self.precision]
        self.opt_g, self.opt_d = make_optimizers(self.G, self.D, o.lr_g * self.lr_scale,
                                                 o.lr_d * self.lr_scale, (o.beta1, o.beta2),
                                                 compiled=self.compile != "off", graphs=self.cuda_graphs,
                                                 amp_dtype=amp_dtype)
        # GANStep trains compiled wrappers when asked; self.G and self.D stay the plain modules we save.
        self.gan = GANStep(self.G, self.D, self.opt_g, self.opt_d, self.step_options(amp_dtype),
                           ema=self.G_ema)
        self.flops = perf.step_flops(self.G, self.D, m.nz, cfg.data.image_size, cfg.train.d_steps,
                                     cfg.train.g_steps)
        self.peak = perf.peak_flops(device, self.precision)
        self.fixed_z = fixed_noise(cfg.sample.n, m.nz, cfg.train.seed + 1, device)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.images = 0  # trained on, all ranks and launches: steps times a global batch that may change
        self.resumed_config: dict | None = None  # the settings of the checkpoint resumed, if any
        self.job_records: dict = {}  # the side jobs' records in the checkpoint resumed (jobs.Checkpoints)
        self.calibrated_at = -1  # the step the sampling generator's BatchNorm statistics were last set at
        self.started = time.perf_counter()  # when this launch began (the trainer sets its own start)
        self.wall_before = 0.0              # seconds of the launches before it (from the checkpoint)

    def step_options(self, amp_dtype: torch.dtype | None) -> StepOptions:
        """The step the config asks for, as this launch runs it (resolved precision, compile, graphs)."""
        cfg, t, m = self.cfg, self.cfg.train, self.cfg.model
        return StepOptions(nz=m.nz, loss=t.loss, real_label=t.real_label, d_steps=t.d_steps,
                           g_steps=t.g_steps, gp_lambda=t.gp_lambda, r1_gamma=t.r1_gamma,
                           r1_every=t.r1_every, augment=cfg.data.augment, ema_decay=m.ema,
                           ema_warmup=m.ema_warmup, amp_dtype=amp_dtype, channels_last=cfg.channels_last,
                           compile=self.compile, cuda_graphs=self.cuda_graphs,
                           distributed=self.env.world > 1)

    @property
    def epoch_label(self) -> int:
        """The epoch as lines, rows and file names count it (from 1): the one under way, or at an epoch's
        end (no batch of the next taken yet) the one just done."""
        return self.epoch + (1 if self.batch_in_epoch else 0)

    def wall_s(self) -> float:
        """Wall-clock seconds the run has taken, all launches together: set-up, cache build, compile,
        capture and pauses included (what a user waits, the time-to-FID clock)."""
        return self.wall_before + time.perf_counter() - self.started

    def sampling_generator(self) -> torch.nn.Module:
        """The generator that samples, FID and the saved files use: the EMA one when model.ema is on,
        its BatchNorm statistics recalibrated for its own weights (once per step); else G, with rank 0's
        BatchNorm statistics on every rank (without sync_bn each rank's follow its own batches): the G a
        checkpoint saves, whose FID shares every rank scores, resumed or not. A collective under several
        processes: every rank calls it."""
        if self.G_ema is None:
            if self.env.world > 1 and self.calibrated_at != self.step:
                dist.broadcast_buffers(self.G)  # training never reads them: only the eval-mode forward
                self.calibrated_at = self.step
            return self.G
        if self.calibrated_at != self.step:
            recalibrate_batchnorm(self.G_ema, self.cfg.model.nz, self.device)
            self.calibrated_at = self.step
        return self.G_ema

    def state_dict(self) -> dict:
        """A checkpoint's contents. A collective: every rank calls it (it gathers every rank's RNG)."""
        self.sampling_generator()  # G_ema is saved with the statistics its samples use
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "images": self.images, "config": config.to_dict(self.cfg),
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "gan": self.gan_state(),
            "rng": dist.all_gather(rng_state()), "world": self.env.world, "version": 2,
            "wall_s": self.wall_s(),
        } | ({"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {})

    def gan_state(self) -> dict:
        """The step's state. Its running sums (the log's means, the D-output histograms) are each rank's
        own, summed over the ranks when read: a checkpoint keeps every rank's (a collective)."""
        s = self.gan.state_dict()
        own = {k: s.pop(k) for k in ("sums", "hist")}
        return s | {"ranks": dist.all_gather(own)}

    def load_gan_state(self, s: dict) -> None:
        s = dict(s)
        ranks = s.pop("ranks", None) or [{"sums": s.pop("sums"), "hist": s.pop("hist")}]  # older: rank 0's
        self.gan.load_state_dict(s | rank_share(ranks, self.env.rank, self.env.world))

    def load(self, path: Path) -> None:
        """Resume from the checkpoint at path. A file that is no checkpoint, weights that do not fit, a
        record it lacks (a checkpoint stripped of its optimizers to share it): one UsageError (exit 2)."""
        try:
            self._load(checkpoint.load(path))
        except checkpoint.Unreadable as e:
            raise UsageError(f"cannot resume from {path}: {e.reason}") from None
        except (RuntimeError, KeyError) as e:  # weights that do not fit, a record it lacks
            raise UsageError(f"cannot resume from {path}: {checkpoint.first_line(e)}") from None

    def _load(self, s: dict) -> None:
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        load_optimizer(self.opt_g, s["opt_g"])  # keeps the flags this run's mode built
        load_optimizer(self.opt_d, s["opt_d"])
        if self.G_ema is not None:  # a checkpoint from a run without EMA: start the average at G
            self.G_ema.load_state_dict(s.get("G_ema", s["G"]))
        # The optimizer state carries the old hyperparameters; the config given now is the one that applies.
        o = self.cfg.optim
        set_hyperparameters(self.opt_g, o.lr_g * self.lr_scale, (o.beta1, o.beta2))
        set_hyperparameters(self.opt_d, o.lr_d * self.lr_scale, (o.beta1, o.beta2))
        self.load_gan_state(s["gan"])
        self.step, self.epoch, self.batch_in_epoch = s["step"], s["epoch"], s["batch_in_epoch"]
        saved_world, rank, world = s.get("world", 1), self.env.rank, self.env.world
        # Another global batch (batch size or processes): keep the images seen this epoch (exact at epoch
        # boundaries; mid-epoch the new cut of the same permutation may repeat or skip up to a batch).
        saved_batch = s["config"]["train"]["batch_size"] * saved_world
        self.batch_in_epoch = self.batch_in_epoch * saved_batch // (self.cfg.train.batch_size * world)
        self.images = s.get("images", self.step * saved_batch)  # a checkpoint from before the count
        if saved_world == world:
            set_rng_state(s["rng"][rank])
        else:  # the ranks' random states do not map onto another number of ranks: new noise
            seed_all(self.cfg.train.seed + 1_000_003 * rank + self.step)
        self.resumed_config = s["config"]
        self.job_records = s.get("jobs", {})
        self.wall_before = s.get("wall_s", 0.0)

    def init_from(self, where: str) -> str:
        """Fine-tuning: G's and D's weights from another run (train.init), with this run's fresh
        optimizers, step 0 and data. Returns what was read, for the log."""
        g, d, what = read_weights(where)
        for net, weights, name in ((self.G, g, "G"), (self.D, d, "D")):
            try:
                net.load_state_dict(weights)
            except RuntimeError as e:
                first = str(e).strip().splitlines()
                detail = next((line.strip() for line in first[1:] if line.strip()), first[0])
                raise UsageError(f"train.init: {what}: {name}'s weights do not fit this model ({detail}); "
                                 "model.nz, ngf, ndf and data.image_size must be those it was "
                                 "trained with") from None
        if self.G_ema is not None:  # the average starts at the weights fine-tuning starts from
            self.G_ema.load_state_dict(self.G.state_dict())
        return what

    def plan(self, backend: str) -> dict:
        """What this launch runs, as built rather than as asked (RUN_DIR/plan.json): the backend auto
        chose, the resolved precision and compile mode, the models' memory format, each optimizer's
        kind, form and rate, the updates per step, the labels, BatchNorm's kind."""
        def optimizer(opt: torch.optim.Optimizer) -> dict:
            g = opt.param_groups[0]
            # 7 digits: a compiled step's lr is a float32 tensor, which would read 0.00019999999494757503
            return {"kind": type(opt).__name__, "lr": float(f"{float(g['lr']):.7g}"),
                    "betas": [float(b) for b in g["betas"]],
                    **{k: g.get(k) for k in ("foreach", "fused", "capturable")}}
        weight = next(p for p in self.G.parameters() if p.dim() == 4)
        norms = sorted({type(m).__name__ for m in [*self.G.modules(), *self.D.modules()]
                        if "Norm" in type(m).__name__})
        batch, o = self.cfg.train.batch_size, self.gan.options
        return {"device": str(self.device), "world": self.env.world, "backend": backend,
                "precision": self.precision, "compile": self.compile, "cuda_graphs": self.cuda_graphs,
                "memory_format": "channels_last" if weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous() else "contiguous",
                "batch_per_process": batch, "global_batch": batch * self.env.world,
                "d_steps": o.d_steps, "g_steps": o.g_steps, "real_label": o.real_label,
                "norms": norms, "ema": self.G_ema is not None, "loss": o.loss,
                "r1": {"gamma": o.r1_gamma, "every": o.r1_every} if o.r1_gamma else None,
                "augment": list(self.gan.policy), "spectral_norm": self.cfg.model.spectral_norm,
                "optimizers": {"G": optimizer(self.opt_g), "D": optimizer(self.opt_d)}}
