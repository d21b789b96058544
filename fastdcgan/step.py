"""One DCGAN training step: D on a real and a fake batch, then G, as pytorch/examples does it.

By default the paper's non-saturating loss written with BCE-with-logits (safe under autocast); the
other losses, WGAN-GP's gradient penalty and R1 are in losses.py, DiffAugment in augment.py. Nothing
here reads a value back to the host: losses and D outputs are summed on the device and read by
`GANStep.read()` every log.every steps, and D-output histograms are collected for the epoch plots.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import losses
from .augment import augment, parse

HIST_BINS = 50
# No buffer broadcast at each forward; newer torch names the switch forward_sync_buffers.
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DDP).parameters
                  else {"broadcast_buffers": False})
METRICS = ("loss_d", "loss_g", "d_real", "d_fake")


def to_model_input(batch_u8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]. The permuted NHWC tensor already has channels_last strides."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x if channels_last else x.contiguous()


def compile_mode(name: str) -> str | None:
    """torch.compile's mode for our `compile` setting. max-autotune never brings inductor's own CUDA
    graphs (cudagraph trees): they would capture G and D separately and overwrite outputs that the
    step still reads (D's logits, read after the optimizer step), and they conflict with our capture
    of the whole step (cuda_graphs=true), which is where this project's CUDA graphs come from."""
    return {"default": None, "max-autotune": "max-autotune-no-cudagraphs"}[name]


def make_optimizers(G: nn.Module, D: nn.Module, lr_g: float, lr_d: float, betas: tuple[float, float],
                    compiled: bool, graphs: bool, amp_dtype: torch.dtype | None = None
                    ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for each network, in the form each step variant needs.

    fp16 (amp_dtype float16): the fused kernel on any device. The GradScaler hands it its scale and
    overflow flag as tensors and it skips an overflowing update on the device; any other Adam makes
    the scaler read the overflow flag on the host every step. CUDA eager: the fused kernel (one
    launch for all parameters). Compiled or graph-captured: the learning rate is a tensor (changing
    it never recompiles) and on CUDA the state is `capturable` (the step counter stays on the device:
    no host sync, and a CUDA graph can hold it). On CPU a tensor lr needs the single-tensor form
    (foreach Adam refuses it).
    """
    device = next(G.parameters()).device

    def adam(params, lr: float) -> torch.optim.Adam:
        kw: dict = {}
        if amp_dtype == torch.float16:
            kw = {"fused": True}
        elif compiled or graphs:
            lr = torch.tensor(lr, device=device)
            kw = {"capturable": True} if device.type == "cuda" else {"foreach": False}
        elif device.type == "cuda":
            kw = {"fused": True}
        return torch.optim.Adam(params, lr=lr, betas=betas, **kw)
    return adam(G.parameters(), lr_g), adam(D.parameters(), lr_d)


def make_ema(G: nn.Module) -> nn.Module:
    """A frozen copy of G, in eval mode, for GANStep to keep as an exponential moving average of G."""
    return copy.deepcopy(G).eval().requires_grad_(False)


MODE_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """opt.load_state_dict(state), keeping the form this optimizer was built in.

    load_state_dict replaces each group's flags with the saved run's: a checkpoint from an eager run
    would make a compiled or graph-captured run's Adam non-capturable (a host sync per step, and a
    step counter a CUDA graph cannot hold), and the reverse. So the flags are put back, and Adam's
    step counters moved to where those flags want them: on the parameter's device when capturable
    or fused, on the host otherwise.
    """
    built = [{k: g[k] for k in MODE_FLAGS if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, flags in zip(opt.param_groups, built, strict=True):
        group.update(flags)
        on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                opt.state[p]["step"] = step.to(dtype=torch.float32, device=p.device if on_device else "cpu")


def set_hyperparameters(opt: torch.optim.Optimizer, lr: float, betas: tuple[float, float]) -> None:
    """Apply lr and betas to every group, keeping the lr's kind (float or tensor) that this optimizer
    was built with: a checkpoint from a compiled run carries tensor lrs that an eager foreach Adam refuses."""
    built_with = opt.defaults["lr"]
    for group in opt.param_groups:
        if isinstance(built_with, torch.Tensor):
            group["lr"] = torch.tensor(lr, dtype=built_with.dtype, device=built_with.device)
        else:
            group["lr"] = float(lr)
        group["betas"] = betas


def add_to_histogram(hist: torch.Tensor, p: torch.Tensor) -> None:
    """hist += torch.histc(p, len(hist), 0, 1) for p in [0, 1], in a form a CUDA graph can capture
    (fixed-size index_add_, nothing read on the host). The top edge, 1.0, counts in the last bin."""
    bins = len(hist)
    idx = (p.detach().flatten().float() * bins).long().clamp_(0, bins - 1)
    hist.index_add_(0, idx, torch.ones_like(idx, dtype=hist.dtype))


class StepMetrics:
    """Losses, mean D outputs and D-output histograms summed on the device, step after step, and read
    (one host sync) only when asked: what GANStep reports without ever waiting for the device."""

    def __init__(self, loss: str, device: torch.device):
        self.loss, self.device = loss, device
        self.sums = torch.zeros(len(METRICS) + 1, device=device)  # last slot counts steps
        self.hist = torch.zeros(2, HIST_BINS, device=device)      # D(x), D(G(z)) for the epoch

    @torch.no_grad()
    def add(self, loss_d, loss_g, logit_real, logit_fake) -> None:
        """d_real, d_fake and the histogram as losses.py's table says for this loss."""
        kind = self.loss
        self.sums += torch.stack([loss_d.float(), loss_g.float(), losses.reported(kind, logit_real).mean(),
                                  losses.reported(kind, logit_fake).mean(),
                                  torch.ones((), device=self.device)])
        add_to_histogram(self.hist[0], losses.for_histogram(kind, logit_real))
        add_to_histogram(self.hist[1], losses.for_histogram(kind, logit_fake))

    def read(self) -> dict[str, float]:
        """Means since the last read (one host sync), then reset. Empty if no step ran."""
        sums = self.sums.clone()
        if dist.is_initialized():  # every rank logs and checks the same, global means
            dist.all_reduce(sums)
        sums = sums.tolist()
        self.sums.zero_()
        count = sums[-1]
        if count == 0:
            return {}
        return {k: v / count for k, v in zip(METRICS, sums, strict=False)}  # sums ends with the count

    def finite(self) -> bool:
        """False if any loss since the last read was NaN or infinite, on this or any rank."""
        ok = torch.isfinite(self.sums).all().to(torch.int32)
        if dist.is_initialized():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok)

    def take_histograms(self, keep: bool = False) -> torch.Tensor:
        """The D(x) and D(G(z)) histograms since the last take (2 x HIST_BINS, on the host, every rank's
        summed), then reset, unless keep."""
        h = self.hist.clone()
        if dist.is_initialized():
            dist.all_reduce(h)
        if not keep:
            self.hist.zero_()
        return h.cpu()


@dataclass(frozen=True)
class StepOptions:
    """What a training step does, in one object (TrainState.step_options builds it from the config;
    the rules between settings are config.py's, checked once there)."""
    nz: int
    loss: str = "bce"               # train.loss (losses.py)
    real_label: float = 1.0         # D's target for real images with bce and lsgan
    d_steps: int = 1                # D updates per step, each on the same real batch
    g_steps: int = 1                # G updates per step
    gp_lambda: float = 10.0         # WGAN-GP's penalty weight
    r1_gamma: float = 0.0           # R1's gamma (0: off), applied every r1_every steps
    r1_every: int = 16
    augment: str = ""               # data.augment: a DiffAugment policy
    ema_decay: float = 0.999        # model.ema, when an EMA generator is given
    ema_warmup: bool = True
    amp_dtype: torch.dtype | None = None   # autocast dtype (None: fp32)
    channels_last: bool = False
    compile: str = "off"            # off | default | max-autotune
    cuda_graphs: bool = False       # capture the whole step (one process, CUDA, no fp16)
    distributed: bool = False       # wrap G and D in DDP


class GANStep:
    """Holds the models, optimizers and on-device accumulators; `step(batch)` trains on one batch.

    compile: the networks and both optimizer steps go through torch.compile. Each network is
    compiled on its own, not the phases: D runs three times per step (real, detached fake, fake)
    and each call must be its own autograd node, or the G phase would backpropagate through a
    node the D phase's backward already freed. Noise is drawn outside compiled code, so a compiled
    run sees the same z as an eager one.
    cuda_graphs: the whole step (noise, both phases, both optimizer steps, metrics) is captured
    once and replayed; batches are copied into a static input buffer first. With lazy R1 two kinds
    of step alternate, with the penalty and without: each is captured once, when first due.
    loss: train.loss (losses.py). Penalties (WGAN-GP's every D update, R1's every r1_every-th step,
    r1_every times as strong, as StyleGAN2's lazy regularisation) are part of the D loss that is
    reported and minimised. They differentiate D's input gradient, so they run D eagerly (AOTAutograd,
    under torch.compile, has no double backward), unwrapped (DDP does not support autograd.grad; it
    still averages their gradient, which reaches D's parameters in the one backward of the D loss) and
    in fp32 (the squared input gradient would overflow in fp16, the GradScaler scales only the loss).
    augment: a data.augment policy, applied to every image D sees (augment.py), eagerly.
    ema: a copy of G (make_ema) that, after each step's G updates, moves to
    decay * ema + (1 - decay) * G, buffers (BatchNorm statistics) copied. In-place foreach
    ops on the same tensors every step, outside the compiled modules: a CUDA graph captures them.
    The decay is ema_decay, or with ema_warmup min(ema_decay, (1 + t) / (10 + t)) at the t-th update
    (as tf.train.ExponentialMovingAverage with num_updates): the average spans about the last tenth
    of the run until that reaches 1 / (1 - ema_decay) steps. Without it the initial weights keep
    ema_decay ** t of the average: 37% at step 1,000 with 0.999.
    """

    def __init__(self, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                 options: StepOptions, ema: nn.Module | None = None):
        self.G, self.D, self.opt_g, self.opt_d, self.ema = G, D, opt_g, opt_d, ema
        self.options = o = options
        if ema is not None:  # (EMA tensors, G tensors), listed once rather than every step
            self.ema_pairs = [(list(ema.parameters()), list(G.parameters())),
                              (list(ema.buffers()), list(G.buffers()))]
        self.policy = parse(o.augment)
        self.steps = 0  # steps taken (checkpointed): which ones R1 falls on, the EMA's warm-up
        device = next(G.parameters()).device
        self.device = device
        # The EMA updates taken, on the device, where a CUDA graph reads and counts them.
        self.ema_updates = torch.zeros((), device=device)
        # fp16 needs loss scaling; one scaler serves both optimizers (one update per step).
        self.scaler = torch.amp.GradScaler(device.type, enabled=o.amp_dtype == torch.float16)
        self.metrics = StepMetrics(o.loss, device)
        # Under DDP, G and D are each wrapped without buffer broadcasts, because D runs twice before
        # one backward and a buffer broadcast between would overwrite BatchNorm stats autograd saved.
        # The G phase runs the plain D, frozen: no gradient all-reduce for D there (as StyleGAN2-ADA).
        self.run_G, self.run_D, self.frozen_D = G, D, D
        if o.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.run_G = DDP(G, device_ids=ids, **NO_BUFFER_SYNC)
            self.run_D = DDP(D, device_ids=ids, **NO_BUFFER_SYNC)
        self.opt_steps = {opt_g: opt_g.step, opt_d: opt_d.step}
        if o.compile != "off":
            mode = compile_mode(o.compile)
            self.run_G, self.run_D = (torch.compile(self.run_G, mode=mode),
                                      torch.compile(self.run_D, mode=mode))
            self.frozen_D = torch.compile(D, mode=mode) if o.distributed else self.run_D
            if not self.scaler.is_enabled():  # the scaler calls opt.step itself
                self.opt_steps = {opt: torch.compile(opt.step, mode=mode) for opt in (opt_g, opt_d)}
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}  # by whether the step applies R1
        self.static_batch: torch.Tensor | None = None

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """A captured step, if any."""
        return next(iter(self.graphs.values()), None)

    def _autocast(self):
        if self.options.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.options.amp_dtype)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.options.nz, 1, 1, device=self.device)

    def _update(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            # The scaler allows one step per optimizer between updates, so it updates after each
            # (d_steps or g_steps > 1 step one optimizer twice). An update is device work only: the
            # scale halves after an overflowing update and grows after 2000 clean ones.
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt_steps[opt]()

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """x with data.augment's policy. Translation's indexing gives channels_last strides whatever it
        is given; the result is left so (put in the models' layout, dropout's masks fall in another element
        order, and runs with channels_last false and true would no longer train alike)."""
        return augment(x, self.policy) if self.policy else x

    def _penalty_D(self, x: torch.Tensor) -> torch.Tensor:
        """D as the penalties call it: plain, eager, fp32 (see the class docstring), on augmented images."""
        return self.D(self._augment(x))

    def step(self, batch_u8: torch.Tensor) -> None:
        """Train on one uint8 NHWC batch."""
        o = self.options
        r1 = o.r1_gamma > 0 and self.steps % o.r1_every == 0
        self.steps += 1
        if not o.cuda_graphs:
            return self._step(batch_u8, r1)
        if r1 not in self.graphs:
            self.graphs[r1] = self._capture(batch_u8, r1)
        self.static_batch.copy_(batch_u8, non_blocking=True)
        self.graphs[r1].replay()

    def _step(self, batch_u8: torch.Tensor, r1: bool = False) -> None:
        o = self.options
        real = to_model_input(batch_u8, o.channels_last)
        n = real.shape[0]
        G, D, frozen_D = self.run_G, self.run_D, self.frozen_D
        self.D.requires_grad_(True)
        for _ in range(o.d_steps):
            z = self._noise(n)
            with self._autocast():
                fake = G(z)
                logit_real = D(self._augment(real))
                logit_fake = D(self._augment(fake.detach()))
            loss_d = losses.d_loss(o.loss, logit_real, logit_fake, o.real_label)
            if o.loss == "wgan-gp":
                loss_d = loss_d + o.gp_lambda * losses.gradient_penalty(self._penalty_D, real, fake)
            if r1:
                loss_d = loss_d + o.r1_gamma / 2 * o.r1_every * losses.r1_penalty(self._penalty_D, real)
            self._update(self.opt_d, loss_d)
        # D's weights get no gradient in the G phase: less work, same result.
        self.D.requires_grad_(False)
        for i in range(o.g_steps):
            if i > 0:  # the first G update reuses the D phase's fakes, as the reference does
                z = self._noise(n)
            with self._autocast():
                if i > 0:
                    fake = G(z)
                loss_g = losses.g_loss(o.loss, frozen_D(self._augment(fake)))
            self._update(self.opt_g, loss_g)
        if self.ema is not None:
            self._update_ema()
        self.D.requires_grad_(True)
        self.metrics.add(loss_d, loss_g, logit_real, logit_fake)

    @torch.no_grad()
    def _update_ema(self) -> None:
        (ema_params, g_params), (ema_buffers, g_buffers) = self.ema_pairs
        # lerp: ema + (1 - decay) * (G - ema) = decay * ema + (1 - decay) * G
        decay = self.options.ema_decay
        if self.options.ema_warmup:  # 1 - min(decay, (1 + t) / (10 + t)), computed and counted on the device
            weight = (9.0 / (10.0 + self.ema_updates)).clamp_(min=1.0 - decay)
            self.ema_updates += 1
            # one weight tensor per pair, never a 0-dim tensor as the Scalar: that would read it on the host
            torch._foreach_lerp_(ema_params, g_params, [weight] * len(ema_params))
        else:
            torch._foreach_lerp_(ema_params, g_params, 1.0 - decay)
        torch._foreach_copy_(ema_buffers, g_buffers)

    def _training_state(self) -> list[torch.Tensor]:
        """Every tensor a step changes: weights, buffers, optimizer state, accumulators, the EMA."""
        tensors = [*self.G.parameters(), *self.D.parameters(), *self.G.buffers(), *self.D.buffers(),
                   self.metrics.sums, self.metrics.hist]
        if self.ema is not None:
            tensors += [*self.ema.parameters(), *self.ema.buffers(), self.ema_updates]
        for opt in (self.opt_g, self.opt_d):
            for state in opt.state.values():
                tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return tensors

    def _undoing(self, warm_up: Callable[[], None]) -> None:
        """Run `warm_up` (steps), then undo its effect: every tensor a step changes as it was before, and
        state the warm-up created (Adam's moments) at zero, as a fresh optimizer's. The capture's part
        that runs on any device (tests/test_fast_step.py checks it on CPU)."""
        before = {id(t): (t, t.clone()) for t in self._training_state()}  # t kept so its id stays unique
        warm_up()
        with torch.no_grad():
            for t in self._training_state():
                if id(t) in before:
                    t.copy_(before[id(t)][1])
                else:
                    t.zero_()

    def _capture(self, batch_u8: torch.Tensor, r1: bool) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (compiles, allocates grads and optimizer state), undo the warm-up's
        effect on every tensor and the RNG, then capture one step (with R1 or without) into a CUDA graph."""
        if self.static_batch is None:
            self.static_batch = torch.empty_like(batch_u8)
        self.static_batch.copy_(batch_u8)
        rng = torch.cuda.get_rng_state()
        side = torch.cuda.Stream()

        def warm_up() -> None:
            side.wait_stream(torch.cuda.current_stream())  # after the clones _undoing has just queued
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step(self.static_batch, r1)
            torch.cuda.current_stream().wait_stream(side)

        self._undoing(warm_up)
        torch.cuda.set_rng_state(rng)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls from other threads (the DataLoader's pin-memory thread, DALI's
        # workers) during the capture are theirs, not an error that invalidates ours.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step(self.static_batch, r1)
        return graph

    # The step's numbers, read where the trainer reads them.
    def read(self) -> dict[str, float]:
        return self.metrics.read()

    def finite(self) -> bool:
        return self.metrics.finite()

    def take_histograms(self, keep: bool = False) -> torch.Tensor:
        return self.metrics.take_histograms(keep)

    def state_dict(self) -> dict:
        m = self.metrics
        return {"sums": m.sums.cpu().clone(), "hist": m.hist.cpu().clone(),
                "scaler": self.scaler.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)  # older checkpoints: from runs without R1
        self.ema_updates.fill_(self.steps)  # one EMA update a step
        self.metrics.sums.copy_(state["sums"])
        self.metrics.hist.copy_(state["hist"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
