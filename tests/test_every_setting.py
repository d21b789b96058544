"""Every setting proven, by construction: each config field has a probe in PROBES that changes that
one setting and checks that what it governs changed, as the setting says, where a user would see it:
the step's tensors (hooks on G, D and dropout), the optimizers' state, the loader's batches, the files
a run writes, the console. The table is checked against the config dataclasses, so a field added
without a probe fails `test_every_setting_has_a_probe` with its name.

A probe compares two runs that differ in that setting alone (`base` holds what both need, such as
loss=wgan-gp for gp_lambda). Its check states what each run must show for the value it had, so a
setting that is ignored, or that governs another setting's part, fails on the run that changed it.
Runs are shared where they can be: one "step" per settings combination, one whole tiny run for the
loop's settings together (log, samples, checkpoints, TensorBoard), one for FID's, one two-process run.

Resume: a probe marked `resume` is checked again on runs resumed from one checkpoint, with and without
the setting changed: the resumed run uses the new value and lists it among the changed settings it
prints. RESUME_EXEMPT gives the reason for each field that is not checked so.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import REPO, make_celeba, tiny_args, torchrun_two_nodes, write_tiny_fid_net
from fastdcgan import config, losses, perf
from fastdcgan.config import UsageError
from fastdcgan.data.order import HFlip, flip_masks
from fastdcgan.step import HIST_BINS, METRICS, to_model_input
from fastdcgan.launch import MODEL_LAYOUT
from fastdcgan.model import build_models
from fastdcgan.train import Run

N_IMAGES = 16  # 2 steps an epoch at the tiny batch of 8; 4 steps at the fit runs' batch of 4


# ----- what a run shows -----

@dataclass
class Seen:
    """One run as a probe sees it: its config, and what it did or the error it stopped with."""
    cfg: config.Config
    run: Run | None = None
    error: str = ""
    trace: dict = field(default_factory=dict)   # stage "step": what the step's modules saw
    out: str = ""                               # stage "fit": the console
    dir: Path | None = None                     # stage "fit": the run directory
    start: int = 0                              # the step the run resumed from (0: a fresh run)
    ranks: list = field(default_factory=list)   # stage "dist": what each rank saw


def build(args: list[str]) -> Seen:
    cfg = config.build(None, args)
    try:
        return Seen(cfg, Run(cfg))
    except UsageError as e:
        return Seen(cfg, error=str(e))


def snapshot(run: Run) -> dict:
    """The tensors one step changes, before it: weights, Adam's moments, the EMA."""
    def opt_state(opt, params):
        return [{k: v.clone() for k, v in opt.state.get(p, {}).items() if isinstance(v, torch.Tensor)}
                for p in params]
    G, D = list(run.G.parameters()), list(run.D.parameters())
    return {"G": [p.detach().clone() for p in G], "D": [p.detach().clone() for p in D],
            "opt_G": opt_state(run.opt_g, G), "opt_D": opt_state(run.opt_d, D),
            "ema": ([p.detach().clone() for p in run.state.G_ema.parameters()]
                    if run.state.G_ema is not None else None),
            "ema_t": float(run.gan.ema_updates), "position": (run.state.epoch, run.state.batch_in_epoch)}


def step(args: list[str]) -> Seen:
    """The Run the trainer builds, one step on the first batch its loader gives, and what the step's
    modules saw: G's inputs and outputs, D's inputs and outputs in call order (real, detached fake,
    any penalty's, then the G phase's), each dropout's zeroed fraction."""
    seen = build(args)
    if seen.error:
        return seen
    run, t = seen.run, seen.trace
    t.update(g_in=[], g_out=[], d_in=[], d_out=[], dropped=[])

    def seen_by(net: str):
        def hook(module, args, out) -> None:  # returns None: the output stays the module's
            t[f"{net}_in"].append(args[0].detach())
            t[f"{net}_out"].append(out.detach())
        return hook

    def dropped(module, args, out) -> None:
        t["dropped"].append(((out == 0) & (args[0] != 0)).float().mean())

    run.G.register_forward_hook(seen_by("g"))
    run.D.register_forward_hook(seen_by("d"))
    for m in run.D.modules():
        if isinstance(m, nn.Dropout):
            m.register_forward_hook(dropped)
    s = run.state
    t["batch"] = next(iter(run.loader.epoch(s.epoch, s.batch_in_epoch)))
    t["before"] = snapshot(run)
    run.gan.step(t["batch"])
    t["metrics"] = run.gan.read()
    t["histograms"] = run.gan.take_histograms()
    seen.start = s.step
    return seen


def fit(args: list[str]) -> Seen:
    """A whole run, as `python -m fastdcgan.train` makes it, its console captured."""
    seen = build(args)
    if seen.error:
        return seen
    run = seen.run
    seen.start, seen.dir = run.state.step, run.dir
    if run.tracker:  # the sizes of the batches the FID network is given
        ext, sizes = run.tracker.extractor, []
        seen.trace["fid_batches"] = sizes
        prepare = ext.prepare
        ext.prepare = lambda x: (sizes.append(len(x)), prepare(x))[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        seen.trace["code"] = run.fit()
    seen.out = out.getvalue()
    return seen


def dist_run(args: list[str], tmp: Path) -> Seen:
    """Two processes under torchrun (gloo) as two nodes, each as tests/settings_worker.py runs it."""
    out = tmp / "ranks.pt"
    r = torchrun_two_nodes([str(REPO / "tests" / "settings_worker.py"), str(out), *args])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return Seen(config.build(None, args), ranks=torch.load(out, weights_only=False))


# ----- the shared runs -----

STEP = {}                                           # tiny_args: 32x32, batch 8, nz 16, ngf = ndf = 8
FIT = {"train.batch_size": 4, "train.epochs": 3}    # 4 steps an epoch, 12 steps
LOOP = {"log.every": 3, "sample.every": 5, "sample.n": 2, "ckpt.every": 5, "ckpt.keep": 10,
        "log.tensorboard": True}
FID = {**FIT, "train.max_steps": 8, "fid.every": 2, "fid.n": 8, "fid.batch": 4, "fid.weights": "{fid_net}"}
FID_CHANGED = {"fid.every": 3, "fid.n": 6, "fid.batch": 3, "fid.weights": "{other_fid_net}"}
DIST = {"train.batch_size": 4, "data.augment": "translation,color", "data.hflip": True,
        "model.d_dropout": 0.3}
DIST_CHANGED = {**DIST, "model.sync_bn": True, "optim.scale_lr": True, "train.timeout_s": 77.0,
                "train.loss": "hinge"}  # the loss for test_every_rank_applies_the_settings_alike
RUN_FILES = ["STATUS", "checkpoints", "config.toml", "discriminator.pth", "generator.pth", "metrics.jsonl",
             "plan.json", "plots", "samples"]
PLACES: dict[str, Path] = {}  # "{name}" in a probe's settings: folders and files the `places` fixture makes


@dataclass(frozen=True)
class Probe:
    value: Any                                   # the setting's value in the changed run ("{name}": a place)
    check: Callable[[Seen, Seen], None]          # (base run, changed run): asserts what each must show
    stage: str = "step"                          # build | step | fit | dist
    base: dict = field(default_factory=dict)     # settings both runs have
    changed: dict | None = None                  # the changed run's other settings when it is shared
    resume: bool = False                         # also checked on resumed runs


# ----- checks -----

def equal(observe: Callable[[Seen], Any], expected: Callable[[Seen], Any]) -> Callable[[Seen, Seen], None]:
    """Each run shows what its own settings say (expected), and the two runs differ."""
    def check(base: Seen, changed: Seen) -> None:
        got = [observe(base), observe(changed)]
        assert got == [expected(base), expected(changed)]
        assert got[0] != got[1]
    return check


def ratio(observe: Callable[[Seen], float], key: str) -> Callable[[Seen, Seen], None]:
    """observe scales with the setting: the changed run's over the base run's is the values' ratio."""
    def check(base: Seen, changed: Seen) -> None:
        want = value_of(changed, key) / value_of(base, key)
        # rel: a weight near 1 (BatchNorm's) moved by ~1e-4 is read back to float32's 1e-7 of 1
        assert observe(changed) / observe(base) == pytest.approx(want, rel=2e-3)
    return check


def value_of(seen: Seen, key: str) -> Any:
    return config.get(config.to_dict(seen.cfg), key)


def holds(predicate: Callable[[Seen], bool], what: str) -> Callable[[Seen, Seen], None]:
    """Each run shows what its own settings say (predicate), and the two runs' observations differ."""
    def check(base: Seen, changed: Seen) -> None:
        assert predicate(base), f"{what} (base run)"
        assert predicate(changed), f"{what} (changed run)"
    return check


def unchanged(observe: Callable[[Seen], Any]) -> Callable[[Seen, Seen], None]:
    """What the setting must not touch is the same in both runs."""
    def check(base: Seen, changed: Seen) -> None:
        assert observe(base) == observe(changed)
    return check


def differ(observe: Callable[[Seen], Any]) -> Callable[[Seen, Seen], None]:
    def check(base: Seen, changed: Seen) -> None:
        assert observe(base) != observe(changed)
    return check


def both(*checks: Callable[[Seen, Seen], None]) -> Callable[[Seen, Seen], None]:
    def check(base: Seen, changed: Seen) -> None:
        for c in checks:
            c(base, changed)
    return check


# ----- what the step did -----

def d_outputs(s: Seen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D on the reals, on the detached fakes, and in the G phase (its last call)."""
    out = s.trace["d_out"]
    return out[0].float(), out[1].float(), out[-1].float()


def loss_d_without_penalty(s: Seen) -> torch.Tensor:
    real, fake, _ = d_outputs(s)
    return losses.d_loss(s.cfg.train.loss, real, fake, s.cfg.train.real_label)


def penalty(s: Seen) -> float:
    """The penalty part of loss_d: what the step reports minus the loss of D's outputs."""
    return s.trace["metrics"]["loss_d"] - loss_d_without_penalty(s).item()


def losses_match(s: Seen) -> bool:
    """The losses, and the D outputs the step reports and bins, are those of train.loss (losses.py's
    table: probabilities for bce, the outputs as they are for the others; the bins over [0, 1], values
    outside them in the end bins)."""
    real, fake, g_phase = d_outputs(s)
    m, kind = s.trace["metrics"], s.cfg.train.loss
    binned = torch.stack([torch.histc(losses.for_histogram(kind, x).clamp(0, 1), HIST_BINS, 0, 1)
                          for x in (real, fake)])
    return (m["loss_d"] == pytest.approx(loss_d_without_penalty(s).item(), rel=1e-5)
            and m["loss_g"] == pytest.approx(losses.g_loss(kind, g_phase).item(), rel=1e-5)
            and m["d_real"] == pytest.approx(losses.reported(kind, real).mean().item(), rel=1e-5)
            and m["d_fake"] == pytest.approx(losses.reported(kind, fake).mean().item(), rel=1e-5)
            and torch.equal(s.trace["histograms"], binned))


def moves(s: Seen, net: str) -> torch.Tensor:
    """Every weight's change in this step."""
    now = list((s.run.G if net == "G" else s.run.D).parameters())
    return torch.cat([(p.detach() - q).flatten() for p, q in zip(now, s.trace["before"][net], strict=True)])


def adam_beta(s: Seen, net: str, moment: str) -> float:
    """The decay Adam used this step, from its moments before and after and the gradient:
    m' = b m + (1 - b) g (v' = b v + (1 - b) g^2), solved for b by least squares."""
    params = list((s.run.G if net == "G" else s.run.D).parameters())
    opt = s.run.opt_g if net == "G" else s.run.opt_d
    num = den = 0.0
    for p, old in zip(params, s.trace["before"][f"opt_{net}"], strict=True):
        g = p.grad if moment == "exp_avg" else p.grad.square()
        new, before = opt.state[p][moment], old.get(moment, torch.zeros_like(g))
        num += ((new - g) * (before - g)).sum().item()
        den += ((before - g) ** 2).sum().item()
    return round(num / den, 4)


def updates(s: Seen, net: str) -> int:
    opt = s.run.opt_g if net == "G" else s.run.opt_d
    before = s.trace["before"][f"opt_{net}"][0].get("step", torch.tensor(0.0))
    return int(opt.state[next(iter(opt.state))]["step"] - before)


def noises(s: Seen) -> int:
    """How many different noise batches G was given in the step."""
    return len({digest(z) for z in s.trace["g_in"]})


def noises_expected(s: Seen) -> int:
    """Fresh noise for each D update and each G update but the first, which reuses the D phase's fakes."""
    return s.cfg.train.d_steps + s.cfg.train.g_steps - 1


def flops_expected(s: Seen) -> float:
    """The FLOPs per image of a step of this run's settings (what the log's GFLOP and MFU count): its
    updates of each network, counted on fresh networks of its shapes (perf.py's count is
    test_perf_accounting.py's)."""
    m, d, t = s.cfg.model, s.cfg.data, s.cfg.train
    G, D = build_models(m.nz, m.ngf, m.ndf, d.image_size)
    return perf.step_flops(G, D, m.nz, d.image_size, t.d_steps, t.g_steps)


def ema_weight(s: Seen) -> float | None:
    """The EMA's weight on G this step: ema' = ema + w (G - ema), solved for w."""
    if s.run.state.G_ema is None:
        return None
    ema0 = s.trace["before"]["ema"]
    g = list(s.run.G.parameters())
    ema1 = list(s.run.state.G_ema.parameters())
    num = sum(((e1 - e0) * (g1.detach() - e0)).sum().item() for e0, e1, g1 in zip(ema0, ema1, g, strict=True))
    den = sum(((g1.detach() - e0) ** 2).sum().item() for e0, g1 in zip(ema0, g, strict=True))
    return round(num / den, 4)


def ema_weight_expected(s: Seen) -> float | None:
    m = s.cfg.model
    if not m.ema:
        return None
    t = s.trace["before"]["ema_t"]
    return round(max(9 / (10 + t), 1 - m.ema) if m.ema_warmup else 1 - m.ema, 4)


def augmented(s: Seen) -> tuple[bool, ...]:
    """Whether the reals, the detached fakes, the reals of each penalty's D call (R1, in the probe's base)
    and the G phase's fakes reached D altered."""
    t = s.trace
    real = to_model_input(t["batch"], s.cfg.channels_last)
    fake = t["g_out"][0]
    return (not torch.equal(t["d_in"][0], real), not torch.equal(t["d_in"][1], fake),
            *(not torch.equal(x, real) for x in t["d_in"][2:-1]), not torch.equal(t["d_in"][-1], fake))


def backend(s: Seen):
    """The run's input backend, under data.hflip's wrapper if it has one."""
    return s.run.loader.loader if isinstance(s.run.loader, HFlip) else s.run.loader


def mirrored(s: Seen) -> int:
    """How many images of the step's batch are the same backend's unflipped images mirrored (the same
    backend, so that it holds on every backend; that each backend gives the right images in the right
    order is test_loaders.py's)."""
    epoch, batch = s.trace["before"]["position"]
    plain = next(iter(backend(s).epoch(epoch, batch)))
    return sum(torch.equal(a, b.flip(1)) and not torch.equal(a, b)
               for a, b in zip(s.trace["batch"], plain, strict=True))


def memory_format(s: Seen) -> str:
    """The memory format of what D is given and of every convolution weight of G and D: one word when
    they agree (a network left contiguous runs the other's format through conversions at every layer,
    at a cost on a GPU and with nothing to see in the losses)."""
    convs = [p for net in (s.run.G, s.run.D) for p in net.parameters() if p.dim() == 4]
    kinds = {"channels_last" if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
             else "contiguous" for x in [s.trace["d_in"][0], *convs]}
    return kinds.pop() if len(kinds) == 1 else f"mixed: {sorted(kinds)}"


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


# ----- what a whole run wrote -----

def total_steps(s: Seen) -> int:
    per_epoch = N_IMAGES // s.cfg.train.batch_size
    total = s.cfg.train.epochs * per_epoch
    return min(total, s.cfg.train.max_steps) if s.cfg.train.max_steps else total


def finished(s: Seen) -> str:
    return (s.dir / "STATUS").read_text().split(";")[0].strip()


def rows(s: Seen, kind: str) -> list[dict]:
    all_rows = [json.loads(x) for x in (s.dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in all_rows if ("fid" in r) == (kind == "fid") and r["step"] > s.start]


def logged_steps(s: Seen) -> list[int]:
    every, end = s.cfg.log.every, total_steps(s)
    return [n for n in range(s.start + 1, end + 1) if n % every == 0 or n == end]


def epoch_ends(s: Seen) -> set[int]:
    per_epoch = N_IMAGES // s.cfg.train.batch_size
    return set(range(per_epoch, total_steps(s) + 1, per_epoch))


def sample_steps(s: Seen) -> list[int]:
    every, end = s.cfg.sample.every, total_steps(s)
    due = [n for n in range(s.start + 1, end + 1) if n % every == 0]
    return due + ([end] if end not in due and end not in epoch_ends(s) else [])


def files(s: Seen, pattern: str, since: int = 0) -> list[int]:
    """The steps in the names of the files that match (step_00000012.png: 12), above `since`."""
    return sorted(n for n in (int(p.stem.split("_")[1]) for p in s.dir.glob(pattern)) if n > since)


def checkpoint_steps(s: Seen) -> list[int]:
    end, every = total_steps(s), s.cfg.ckpt.every
    saved = {n for n in range(1, end + 1) if n % every == 0} | epoch_ends(s) | {end}
    return sorted(saved)[-s.cfg.ckpt.keep:]


def grid_size(s: Seen) -> list[tuple[int, int]]:
    """A grid's size, and the real images' (samples/reals.png: drawn from the first batch by a fresh run
    only, so a resumed run's is the first launch's). sample.n is 2 where it changes: fewer than the
    batch of 4, in a grid of another shape."""
    grids = [Image.open(next(s.dir.glob("samples/step_*.png"))).size]
    return grids + ([Image.open(s.dir / "samples" / "reals.png").size] if s.start == 0 else [])


def grid_size_expected(s: Seen) -> list[tuple[int, int]]:
    def size(n: int) -> tuple[int, int]:
        side, per_row = s.cfg.data.image_size + 2, max(1, int(n ** 0.5 + 0.5))
        return per_row * side + 2, math.ceil(n / per_row) * side + 2
    n = s.cfg.sample.n
    return [size(n)] + ([size(min(n, s.cfg.train.batch_size))] if s.start == 0 else [])


def fid_network(s: Seen) -> str:
    return "torchscript:" + hashlib.sha1(Path(s.cfg.fid.weights).read_bytes()).hexdigest()[:16]


# ----- the table -----

def rank_pair(s: Seen, key: str) -> tuple:
    return tuple(r[key] for r in s.ranks)


PROBES: dict[str, Probe] = {
    # top level
    "precision": Probe("bf16", equal(lambda s: str(s.trace["d_out"][0].dtype),
                                     lambda s: {"fp32": "torch.float32", "auto": "torch.float32",
                                                "bf16": "torch.bfloat16",
                                                "fp16": "torch.float16"}[s.cfg.precision]),
                       resume=True),
    "compile": Probe("default", equal(lambda s: [type(m).__name__
                                                 for m in (s.run.gan.run_G, s.run.gan.run_D)],
                                      lambda s: ["OptimizedModule"] * 2 if s.cfg.compile != "off" else
                                      ["Generator", "Discriminator"]), stage="build"),
    "cuda_graphs": Probe(True, equal(lambda s: s.out.split("cuda_graphs ")[1].splitlines()[0],
                                     lambda s: "off (needs CUDA)" if s.cfg.cuda_graphs else "off"),
                         stage="fit", base={"train.max_steps": 1}),
    "channels_last": Probe(False, equal(memory_format, lambda s: "channels_last" if s.cfg.channels_last else
                                        "contiguous"), resume=True),
    "device": Probe("cuda", equal(lambda s: s.error or str(s.run.state.device),
                                  lambda s: "cpu" if s.cfg.device == "cpu"
                                  else "cuda:0" if torch.cuda.is_available()
                                  else "device=cuda but no CUDA device is available"), stage="build"),
    # data
    "data.root": Probe("{other}", equal(lambda s: (s.run.images.root, len(s.run.images.files)),
                                        lambda s: (Path(s.cfg.data.root),
                                                   24 if "other" in s.cfg.data.root else 16)),
                       stage="build"),
    "data.split": Probe("train", equal(lambda s: len(s.run.images.files),
                                       lambda s: {"all": 16, "train": 12}[s.cfg.data.split]), stage="build"),
    "data.image_size": Probe(64, equal(lambda s: (s.trace["batch"].shape[1:3],
                                                  s.trace["g_out"][0].shape[-2:]),
                                       lambda s: ((s.cfg.data.image_size,) * 2,
                                                  (s.cfg.data.image_size,) * 2))),
    "data.backend": Probe("cache", equal(lambda s: s.run.loader.name, lambda s: s.cfg.data.backend),
                          resume=True),
    "data.workers": Probe(2, equal(lambda s: s.trace["workers"], lambda s: s.cfg.data.workers),
                          stage="workers"),
    "data.dali_threads": Probe(1, equal(lambda s: backend(s).pipe.num_threads,
                                        lambda s: s.cfg.data.dali_threads),
                               base={"data.backend": "dali", "data.dali_threads": 2}),
    "data.prefetch": Probe(3, equal(lambda s: backend(s).pipe.prefetch_queue_depth,
                                    lambda s: s.cfg.data.prefetch),
                           base={"data.backend": "dali", "data.dali_threads": 1}),
    "data.hflip": Probe(True, equal(mirrored,
                                    lambda s: int(flip_masks(2, 8, s.cfg.train.seed, s.run.state.epoch)
                                                  [s.trace["before"]["position"][1]].sum())
                                    if s.cfg.data.hflip else 0), resume=True),
    "data.augment": Probe("translation,cutout", equal(augmented, lambda s: (bool(s.cfg.data.augment),) * 4),
                          base={"train.r1_gamma": 1.0, "train.r1_every": 1}, resume=True),
    "data.synthetic_n": Probe(80, equal(lambda s: len(s.run.images.files), lambda s: s.cfg.data.synthetic_n),
                              stage="build", base={"data.root": "", "data.synthetic_n": 64}),
    # model
    "model.nz": Probe(8, equal(lambda s: s.trace["g_in"][0].shape[1], lambda s: s.cfg.model.nz)),
    "model.ngf": Probe(4, equal(lambda s: [m for m in s.run.G.modules()
                                           if isinstance(m, nn.ConvTranspose2d)][-1].in_channels,
                                lambda s: s.cfg.model.ngf), stage="build"),
    "model.ndf": Probe(4, equal(lambda s: [m for m in s.run.D.modules()
                                           if isinstance(m, nn.Conv2d)][0].out_channels,
                                lambda s: s.cfg.model.ndf), stage="build"),
    # base 0.3: 0 <-> > 0 adds layers, refused on resume
    "model.d_dropout": Probe(0.5, equal(lambda s: round(float(torch.stack(s.trace["dropped"]).mean()), 1)
                                        if s.trace["dropped"] else 0.0, lambda s: s.cfg.model.d_dropout),
                             base={"model.d_dropout": 0.3}, resume=True),
    "model.sync_bn": Probe(True, equal(lambda s: (s.ranks[0]["norm_kinds"], all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(*rank_pair(s, "running_means"), strict=True))),
        lambda s: (["SyncBatchNorm2d"], True) if s.cfg.model.sync_bn else (["BatchNorm2d"], False)),
        stage="dist", base=DIST, changed=DIST_CHANGED),
    "model.ema": Probe(0.05, equal(ema_weight, ema_weight_expected), resume=True),
    "model.ema_warmup": Probe(False, equal(ema_weight, ema_weight_expected), base={"model.ema": 0.99},
                              resume=True),
    "model.spectral_norm": Probe(True, equal(lambda s: sum(hasattr(m, "parametrizations")
                                                           for m in s.run.D.modules()),
                                             lambda s: 4 if s.cfg.model.spectral_norm else 0), stage="build"),
    # train
    "train.batch_size": Probe(4, equal(lambda s: (s.trace["batch"].shape[0], len(s.run.loader)),
                                       lambda s: (s.cfg.train.batch_size,
                                                  N_IMAGES // s.cfg.train.batch_size))),
    "train.epochs": Probe(1, equal(finished, lambda s: f"finished {total_steps(s)}"), stage="fit",
                          base=FIT, resume=True),
    "train.max_steps": Probe(5, equal(finished, lambda s: f"finished {total_steps(s)}"), stage="fit",
                             base=FIT, resume=True),
    # each thing the seed decides changes with it, not only some of them
    "train.seed": Probe(1, both(*(differ(lambda s, seeded=seeded: digest(seeded(s))) for seeded in (
        lambda s: s.trace["batch"], lambda s: s.trace["before"]["G"][0], lambda s: s.trace["g_in"][0],
        lambda s: s.run.state.fixed_z)))),
    "train.run_dir": Probe("{elsewhere}",
                           equal(lambda s: sorted(p.name for p in Path(s.cfg.train.run_dir).iterdir())
                                 if s.cfg.train.run_dir == str(PLACES["elsewhere"]) else "base",
                                 lambda s: RUN_FILES if s.cfg.train.run_dir == str(PLACES["elsewhere"])
                                 else "base"), stage="fit", base={"train.max_steps": 1}),
    "train.resume": Probe("never", equal(lambda s: s.error or s.run.state.step,
                                         lambda s: 2 if s.cfg.train.resume == "auto" else
                                         f"train.run_dir {s.cfg.train.run_dir} is not empty and "
                                         "train.resume=never"),
                          stage="build", base={"train.run_dir": "{used}"}),
    # G and the EMA that follows it both start from the weights read (base: model.ema on)
    "train.init": Probe("{used}", equal(lambda s: [digest(*G.state_dict().values()) == PLACES["used_G"]
                                                   for G in (s.run.G, s.run.state.G_ema)],
                                        lambda s: [bool(s.cfg.train.init)] * 2), stage="build",
                        base={"model.ema": 0.9}),
    "train.real_label": Probe(0.8, both(holds(losses_match, "the losses are not those of train.real_label"),
                                        differ(lambda s: s.trace["metrics"]["loss_d"])), resume=True),
    # each update on noise of its own (noises_expected), as README says of extra D updates
    "train.d_steps": Probe(2, equal(lambda s: (updates(s, "D"), noises(s), s.run.state.flops),
                                    lambda s: (s.cfg.train.d_steps, noises_expected(s), flops_expected(s))),
                           resume=True),
    "train.g_steps": Probe(2, equal(lambda s: (updates(s, "G"), noises(s), s.run.state.flops),
                                    lambda s: (s.cfg.train.g_steps, noises_expected(s), flops_expected(s))),
                           resume=True),
    "train.loss": Probe("hinge", both(holds(losses_match, "the losses are not those train.loss names"),
                                      differ(lambda s: s.trace["metrics"]["loss_g"])), resume=True),
    "train.gp_lambda": Probe(20.0, ratio(penalty, "train.gp_lambda"), base={"train.loss": "wgan-gp"},
                             resume=True),
    "train.r1_gamma": Probe(2.0, ratio(penalty, "train.r1_gamma"),
                            base={"train.r1_gamma": 1.0, "train.r1_every": 1}, resume=True),
    "train.r1_every": Probe(2, ratio(penalty, "train.r1_every"),
                            base={"train.r1_gamma": 1.0, "train.r1_every": 1}, resume=True),
    "train.timeout_s": Probe(77.0, equal(lambda s: rank_pair(s, "timeout_s"),
                                         lambda s: (s.cfg.train.timeout_s,) * 2),
                             stage="dist", base=DIST, changed=DIST_CHANGED),
    # optim
    # Adam moves each weight by lr x a factor the gradients decide; D's step comes first, so lr_g leaves
    # it alone
    "optim.lr_g": Probe(1e-4, both(ratio(lambda s: moves(s, "G").abs().max().item(), "optim.lr_g"),
                                   unchanged(lambda s: digest(moves(s, "D")))), resume=True),
    "optim.lr_d": Probe(5e-4, ratio(lambda s: moves(s, "D").abs().max().item(), "optim.lr_d"), resume=True),
    "optim.beta1": Probe(0.3, equal(lambda s: (adam_beta(s, "G", "exp_avg"), adam_beta(s, "D", "exp_avg")),
                                    lambda s: (s.cfg.optim.beta1,) * 2), resume=True),
    "optim.beta2": Probe(0.99, equal(lambda s: (adam_beta(s, "G", "exp_avg_sq"),
                                                adam_beta(s, "D", "exp_avg_sq")),
                                     lambda s: (s.cfg.optim.beta2,) * 2), resume=True),
    # fresh, and resumed from a checkpoint of two processes and of one (settings_worker.py's resumed())
    "optim.scale_lr": Probe(True, equal(lambda s: [s.ranks[0]["lr"], s.ranks[0]["resumed"]["same_world_lr"],
                                                   s.ranks[0]["resumed"]["one_process_lr"]],
                                        lambda s: [[lr * (2 if s.cfg.optim.scale_lr else 1)
                                                    for lr in (s.cfg.optim.lr_g, s.cfg.optim.lr_d)]] * 3),
                            stage="dist", base=DIST, changed=DIST_CHANGED),
    # the loop's outputs: one whole run with all of LOOP changed at once
    # each row at its step, with that step's epoch (counted from 1) and images seen
    "log.every": Probe(3, equal(lambda s: [(r["step"], r["epoch"], r["images"]) for r in rows(s, "train")],
                                lambda s: [(n, (n - 1) // (N_IMAGES // s.cfg.train.batch_size) + 1,
                                            n * s.cfg.train.batch_size) for n in logged_steps(s)]),
                       stage="fit", base=FIT, changed={**FIT, **LOOP}, resume=True),
    "log.tensorboard": Probe(True, equal(lambda s: any(s.dir.glob("tb/events.out.tfevents.*")),
                                         lambda s: s.cfg.log.tensorboard), stage="fit", base=FIT,
                             changed={**FIT, **LOOP}, resume=True),
    "sample.every": Probe(5, equal(lambda s: files(s, "samples/step_*.png", since=s.start), sample_steps),
                          stage="fit", base=FIT, changed={**FIT, **LOOP}, resume=True),
    "sample.n": Probe(2, equal(grid_size, grid_size_expected), stage="fit", base=FIT, changed={**FIT, **LOOP},
                      resume=True),
    "ckpt.every": Probe(5, equal(lambda s: files(s, "checkpoints/step_*.pt"), checkpoint_steps), stage="fit",
                        base=FIT, changed={**FIT, **LOOP}, resume=True),
    "ckpt.keep": Probe(10, equal(lambda s: files(s, "checkpoints/step_*.pt"), checkpoint_steps), stage="fit",
                       base=FIT, changed={**FIT, **LOOP}, resume=True),
    # FID: one whole run with all of FID_CHANGED
    "fid.every": Probe(3, equal(lambda s: [r["step"] for r in rows(s, "fid")],
                                lambda s: [n for n in range(s.start + 1, total_steps(s) + 1)
                                           if n % s.cfg.fid.every == 0]),
                       stage="fit", base=FID, changed={**FID, **FID_CHANGED}, resume=True),
    "fid.n": Probe(6, equal(lambda s: {r["fid_n"] for r in rows(s, "fid")}, lambda s: {s.cfg.fid.n}),
                   stage="fit", base=FID, changed={**FID, **FID_CHANGED}, resume=True),
    "fid.weights": Probe("{other_fid_net}", equal(lambda s: {r["fid_network"] for r in rows(s, "fid")},
                                                  lambda s: {fid_network(s)}), stage="fit", base=FID,
                         changed={**FID, **FID_CHANGED}, resume=True),
    "fid.batch": Probe(3, equal(lambda s: max(s.trace["fid_batches"]), lambda s: s.cfg.fid.batch),
                       stage="fit", base=FID, changed={**FID, **FID_CHANGED}, resume=True),
    "fid.target": Probe(1e9, equal(finished, lambda s: "finished "
                                   f"{first_fid(s) if s.cfg.fid.target else total_steps(s)}"),
                        stage="fit", base=FID, resume=True),
}

RESUME_EXEMPT = {
    "compile": "test_fast_step.py resumes across every pair of modes (compiling is too slow for this table)",
    "cuda_graphs": "CUDA only: test_fast_step.py's cuda resume tests",
    "device": "checkpoints load to the CPU and move to the launch's device: "
              "test_fast_step.py's cuda resume tests",
    "data.root": "what a launch reads is its own scan, resumed or not (the build stage shows it)",
    "data.split": "what a launch reads is its own scan, resumed or not (the build stage shows it)",
    "data.synthetic_n": "what a launch reads is its own scan, resumed or not (the build stage shows it)",
    "data.workers": "no state: a resumed launch starts its own workers; "
                    "exact resume with workers: test_train.py",
    "data.dali_threads": "no state: a resumed launch builds its own pipeline; "
                         "exact DALI resume: test_dali.py",
    "data.prefetch": "no state: a resumed launch builds its own pipeline; exact DALI resume: test_dali.py",
    "train.batch_size": "the position in the epoch is converted by images seen: test_train.py's "
                        "test_a_resume_with_another_batch_size_keeps_the_images_seen",
    "train.seed": "a resume restores every random state the seed made; a new seed only reorders later epochs",
    "train.run_dir": "the run directory is what a resume resumes",
    "train.resume": "the checkpoint a launch resumes from: the probe itself resumes",
    "train.init": "a fresh run only (a relaunch resumes its own checkpoints): "
                  "test_train.py's train.init tests",
    "model.sync_bn": "two processes: a two-process checkpoint resumed on one is test_dist.py's",
    "optim.scale_lr": "resumed in its own two-process stage: settings_worker.py loads a checkpoint of two "
                      "processes and of one, and the probe reads the learning rates after each",
    "train.timeout_s": "a launch's process group, nothing a checkpoint holds",
    **{key: "the weights' shape: refused on resume, test_a_resume_that_changes_the_models_shape_is_refused"
       for key in MODEL_LAYOUT if key not in ("train.loss", "model.d_dropout")},
}


def first_fid(s: Seen) -> int:
    return next(n for n in range(s.start + 1, total_steps(s) + 1) if n % s.cfg.fid.every == 0)


# ----- the runs, made once each -----

@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("settings")
    PLACES.update(tmp=tmp, celeba=make_celeba(tmp / "celeba", N_IMAGES),
                  other=make_celeba(tmp / "other", 24, (48, 40)),
                  fid_net=write_tiny_fid_net(tmp / "fid0.pt", seed=0),
                  other_fid_net=write_tiny_fid_net(tmp / "fid1.pt", seed=1), elsewhere=tmp / "elsewhere")
    used = launch("fit", {"train.max_steps": 2})
    assert used.trace["code"] == 0, used.out
    PLACES["used"] = used.dir
    PLACES["used_G"] = digest(*torch.load(used.dir / "checkpoints" / "step_00000002.pt")["G"].values())
    yield PLACES
    PLACES.clear()
    RUNS.clear()


RUNS: dict[tuple, Seen] = {}
FOLDERS = itertools.count()  # a new run directory per run made


def arguments(settings: dict, run_dir: Path) -> list[str]:
    args = dict(a.split("=", 1) for a in tiny_args(PLACES["celeba"], run_dir))
    for key, value in settings.items():
        args[key] = str(value).format(**PLACES) if isinstance(value, str) else str(value)
    return [f"{k}={v}" for k, v in args.items()]


def launch(stage: str, settings: dict) -> Seen:
    """A run of this stage with these settings on top of tiny_args, made once per module."""
    key = (stage, tuple(sorted((k, str(v)) for k, v in settings.items())))
    if key not in RUNS:
        folder = PLACES["tmp"] / f"run{next(FOLDERS)}"
        args = arguments(settings, folder)
        if stage == "dist":
            folder.mkdir()
            RUNS[key] = dist_run(args, folder)
        elif stage == "workers":
            RUNS[key] = with_workers(args)
        else:
            RUNS[key] = {"build": build, "step": step, "fit": fit}[stage](args)
    return RUNS[key]


def with_workers(args: list[str]) -> Seen:
    """The worker processes the loader has once it gives its first batch."""
    before = {p.pid for p in multiprocessing.active_children()}
    seen = build(args)
    batches = seen.run.loader.epoch(0)
    next(batches)
    seen.trace["workers"] = len({p.pid for p in multiprocessing.active_children()} - before)
    batches.close()
    seen.run.loader.loader._iterator = None  # let its persistent workers go now
    return seen


def pair(key: str) -> tuple[Seen, Seen]:
    probe = PROBES[key]
    base = launch(probe.stage, probe.base)
    changed = launch(probe.stage, {**(probe.changed or probe.base), key: probe.value})
    for s in (base, changed):
        assert probe.stage == "build" or not s.error, s.error
    return base, changed


ALL_KEYS = [key for key, _, _ in config.iter_keys(config.Config())]


def test_every_setting_has_a_probe():
    """A field added to config.py without a probe here fails with its name."""
    missing = [key for key in ALL_KEYS if key not in PROBES]
    assert not missing, f"config fields with no probe in tests/test_every_setting.py: {missing}"
    assert not set(PROBES) - set(ALL_KEYS), (
        f"probes of fields config.py no longer has: {set(PROBES) - set(ALL_KEYS)}")
    undecided = [k for k in ALL_KEYS if PROBES[k].resume == (k in RESUME_EXEMPT)]
    assert not undecided, (
        f"checked on resume, or exempt with a reason (RESUME_EXEMPT), not neither or both: {undecided}")


@pytest.mark.parametrize("key", ALL_KEYS)
def test_the_setting_governs_what_it_names(key, places):
    if key not in PROBES:
        pytest.fail(f"{key}: no probe (test_every_setting_has_a_probe)")
    probe = PROBES[key]
    if probe.base.get("data.backend") == "dali":
        pytest.importorskip("nvidia.dali")
    PROBES[key].check(*pair(key))


RESUMED = [key for key in ALL_KEYS if key in PROBES and PROBES[key].resume]


def resumed(settings: dict, probe: Probe) -> Seen:
    """A launch with these settings that resumes a run of the probe's base settings: from its step-2
    checkpoint (step stage; a fresh run directory), or its run directory at step 4 (fit stage)."""
    if probe.stage == "step":
        first = launch("fit", {**probe.base, "train.max_steps": 2})
        assert first.trace["code"] == 0, first.out
        return launch("step", {**settings, "train.resume": first.dir / "checkpoints" / "step_00000002.pt"})
    first = launch("fit", {**probe.base, "train.max_steps": 4})
    assert first.trace["code"] == 0, first.out
    key = ("resumed", tuple(sorted((k, str(v)) for k, v in settings.items())))
    if key not in RUNS:
        folder = PLACES["tmp"] / f"resumed{next(FOLDERS)}"
        shutil.copytree(first.dir, folder)
        RUNS[key] = fit(arguments(settings, folder))
    return RUNS[key]


def resumed_pair(key: str) -> tuple[Seen, Seen]:
    """The probe's pair, each resumed from one run of its base settings."""
    probe = PROBES[key]
    return resumed(probe.base, probe), resumed({**(probe.changed or probe.base), key: probe.value}, probe)


@pytest.mark.parametrize("key", RESUMED)
def test_a_resume_applies_the_changed_setting_and_says_so(key, places):
    """Resumed from one checkpoint, a launch with the setting changed uses the new value, checked as
    a fresh run's is, names it among the changed settings it prints, and writes it in config.toml."""
    probe = PROBES[key]
    base, changed = resumed_pair(key)
    for s in (base, changed):
        assert not s.error and s.start in (2, 4), s.error
    probe.check(base, changed)
    if probe.stage == "fit":
        assert "note: settings changed since the checkpoint" in changed.out and f"{key}: " in changed.out
        for s in (base, changed):  # the run directory's record of its settings is the last launch's
            assert (s.dir / "config.toml").read_text() == config.to_toml(s.cfg)
    else:
        named = [line.split(":")[0] for line in config.diff(changed.run.state.resumed_config,
                                                              config.to_dict(changed.cfg))]
        assert key in named


REFUSED = {"data.image_size": 64, "model.nz": 8, "model.ngf": 16, "model.ndf": 16,
           "model.spectral_norm": True, "train.loss": "wgan-gp", "model.d_dropout": 0.2}


def test_refused_changes_cover_the_models_layout():
    assert set(REFUSED) == set(MODEL_LAYOUT)


@pytest.mark.parametrize("key", REFUSED)
def test_a_resume_that_changes_the_models_layout_is_refused_before_any_set_up(key, places):
    """Said in one line naming the setting and both values, before the data is even looked at (the
    data folder here does not exist: a later check would name it instead)."""
    settings = {key: REFUSED[key], "train.run_dir": "{used}", "data.root": PLACES["tmp"] / "no-such-data"}
    seen = build(arguments(settings, PLACES["used"]))
    old = config.get(config.to_dict(config.Config()), key) if key != "data.image_size" else 32
    old = {"model.nz": 16, "model.ngf": 8, "model.ndf": 8}.get(key, old)
    assert seen.error.startswith(
        f"cannot resume from {PLACES['used'] / 'checkpoints' / 'step_00000002.pt'}: ")
    assert f"{key} {old!r} in the checkpoint, {REFUSED[key]!r} now" in seen.error
    assert "\n" not in seen.error and "no-such-data" not in seen.error


# ----- plan.json: what each setting shows there -----

# The fields of RUN_DIR/plan.json ("what this launch runs, as built") each setting moves, dotted. A pair of
# runs must differ in the plan in exactly the fields of the settings that differ between them: a setting that
# reaches the step but not the plan (or the plan but not the step: its probe) fails, and so does a plan
# field that reads another setting. () for a setting the plan does not show; a field added to config.py must
# be placed here (test_every_setting_has_a_place_in_the_plan).
PLAN_SHOWS: dict[str, tuple[str, ...]] = {
    # compiled on the CPU: Adam's single-tensor form (step.py's optimizer_options)
    "compile": ("compile", "optimizers.G.foreach", "optimizers.D.foreach"),
    "precision": ("precision",), "cuda_graphs": (),  # CPU: off either way
    "channels_last": ("memory_format",), "data.backend": ("backend",), "data.augment": ("augment",),
    "model.ema": ("ema",), "model.spectral_norm": ("spectral_norm", "norms"), "model.sync_bn": ("norms",),
    "train.batch_size": ("batch_per_process", "global_batch"), "train.loss": ("loss",),
    "train.real_label": ("real_label",), "train.d_steps": ("d_steps",), "train.g_steps": ("g_steps",),
    "train.r1_gamma": ("r1.gamma",), "train.r1_every": ("r1.every",),
    "optim.lr_g": ("optimizers.G.lr",), "optim.lr_d": ("optimizers.D.lr",),
    "optim.beta1": ("optimizers.G.betas", "optimizers.D.betas"),
    "optim.beta2": ("optimizers.G.betas", "optimizers.D.betas"),
    "optim.scale_lr": ("optimizers.G.lr", "optimizers.D.lr"),
    **{key: () for key in ("data.root", "data.split", "data.image_size", "data.workers", "data.dali_threads",
                           "data.prefetch", "data.hflip", "data.synthetic_n", "model.nz", "model.ngf",
                           "model.ndf", "model.d_dropout", "model.ema_warmup", "train.epochs",
                           "train.max_steps", "train.seed", "train.run_dir", "train.init", "train.gp_lambda",
                           "train.timeout_s", "log.every", "log.tensorboard", "sample.every", "sample.n",
                           "ckpt.every", "ckpt.keep", "fid.every", "fid.n", "fid.weights", "fid.batch",
                           "fid.target", "train.resume")},
    "device": ("device",),
}
# Probes whose pair has no plan to compare, and why.
NO_PLAN = {"device": "device=cuda stops on a machine without CUDA; on a GPU, auto resolves other precisions "
                     "and optimizer forms too (test_fast_step.py's cuda tests)",
           "train.resume": "never refuses the used run directory: nothing is launched"}


def plan_of(s: Seen) -> dict:
    """The run's plan, dotted: plan.json as a whole run wrote it, or what the trainer writes there (the
    state's plan of its loader) where the run took one step or none, or, under torchrun, rank 0's."""
    plan = (s.ranks[0]["shared"]["plan"] if s.ranks else json.loads(s.run.paths.plan.read_text()) if s.dir
            else s.run.state.plan(s.run.loader.name))

    def flat(d: dict, at: str = "") -> dict:
        return {k: v for key, value in d.items()
                for k, v in (flat(value, f"{at}{key}.") if isinstance(value, dict)
                             else {f"{at}{key}": value}).items()}
    return flat(plan)


def test_every_setting_has_a_place_in_the_plan():
    assert set(PLAN_SHOWS) == set(ALL_KEYS), f"not in PLAN_SHOWS: {sorted(set(ALL_KEYS) - set(PLAN_SHOWS))}"


@pytest.mark.parametrize("key", [k for k in ALL_KEYS if k not in NO_PLAN])
def test_the_plan_shows_each_setting_where_it_says(key, places):
    """The probe's two runs (and, where it has them, its resumed runs) differ in plan.json in the fields
    of the settings they differ in, and in no other; and neither plan says "auto"."""
    probe = PROBES[key]
    if probe.base.get("data.backend") == "dali":
        pytest.importorskip("nvidia.dali")
    runs = [pair(key)] + ([resumed_pair(key)] if probe.resume else [])
    for base, changed in runs:
        differ_in = {k.split(":")[0]
                     for k in config.diff(config.to_dict(base.cfg), config.to_dict(changed.cfg))}
        want = {f for k in differ_in for f in PLAN_SHOWS[k]}
        a, b = plan_of(base), plan_of(changed)
        # as built: what "auto" chose (precision, compile, backend), never the word asked
        assert "auto" not in [*a.values(), *b.values()], (a, b)
        moved = {f: (a.get(f), b.get(f)) for f in a.keys() | b.keys() if a.get(f) != b.get(f)}
        assert set(moved) == want, f"settings changed: {sorted(differ_in)}; plan fields moved: {moved}"


# The settings that name a file or folder, each naming one that is not there.
MISSING = {"data.root": "{tmp}/nowhere", "train.resume": "{tmp}/nowhere.pt", "train.init": "{tmp}/nowhere",
           "fid.weights": "{tmp}/nowhere.pt"}


# The other settings of free text (a string with no choices), each with why a missing path is not an error.
NOT_A_FILE = {"data.augment": "a DiffAugment policy, checked against augment.py's operations",
              "train.run_dir": "made when missing (tested: a run directory that cannot be written)"}


def test_every_free_text_setting_is_a_file_checked_here_or_says_why_not():
    """A setting added as a free string is a path until said otherwise: it joins MISSING, or NOT_A_FILE."""
    free = {key for key, obj, f in config.iter_keys(config.Config())
            if isinstance(getattr(obj, f.name), str) and not f.metadata.get("choices")}
    assert free == set(MISSING) | set(NOT_A_FILE), free


@pytest.mark.parametrize("key", MISSING)
def test_a_setting_that_names_a_missing_file_stops_the_launch_naming_it(key, places):
    """Not a fresh start that ignores it (a resume or fine-tuning lost without a word), nor a crash later:
    a UsageError (exit 2) in one line that names the setting and the path."""
    settings = {key: MISSING[key], **({"fid.every": 2} if key == "fid.weights" else {})}
    seen = build(arguments(settings, PLACES["tmp"] / f"missing-{key}"))
    path = MISSING[key].format(**PLACES)
    assert seen.error.startswith(key) and path in seen.error and "\n" not in seen.error, seen.error


@pytest.mark.parametrize("settings", ["DIST", "DIST_STEP", "DIST_STEP_REST", "DIST_STEP_GP"])
def test_randomness_differs_per_rank(settings, places):
    """Noise, each DiffAugment operation's draws, dropout masks and hflip's choices come from per-rank state:
    on one batch that is the same on both ranks, the ranks still draw apart (the same draws on every
    rank would train on one set of fakes and augmentations copied world-size times). DIST_STEP,
    DIST_STEP_REST and DIST_STEP_GP: with every step and two-process setting changed, on the cache backend."""
    r0, r1 = launch("dist", globals()[settings]).ranks
    assert r0["own_batch_mean"] != r1["own_batch_mean"]  # each rank trained on its own images first
    assert not torch.equal(r0["noise"], r1["noise"])
    assert not torch.equal(r0["augmented_real"], r1["augmented_real"])
    for op in r0["per_op"]:  # each operation's draws, not only their sum
        assert not torch.equal(r0["per_op"][op], r1["per_op"][op]), op
    assert r0["dropped"] is not None and not torch.equal(r0["dropped"], r1["dropped"])
    assert len(r0["flips"]) == len(r1["flips"]) == 8 and r0["flips"] != r1["flips"] and any(r0["flips"])


def every_step_setting(first: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """DIST with every step-stage and two-process probe's changed value at once (on the settings its
    probe builds on, where no earlier value sets them), the keys in `first` taken first, and the keys
    left out: those config's rules refuse beside the values taken before them, and those that would
    leave a setting doing nothing (config.inert: train.loss=hinge after gp_lambda on the wgan-gp it builds
    on; a setting changed where it does nothing proves nothing here). Settings that are sound alone can break
    together (sync_bn with the EMA crashed at the EMA generator's recalibration, which a checkpoint's
    contents run)."""
    merged, refused = dict(DIST), []
    for key in sorted(PROBES, key=lambda k: k not in first):  # stable: the table's order after `first`
        probe = PROBES[key]
        if probe.stage not in ("step", "dist") or probe.base.get("data.backend") == "dali":
            continue
        wanted = probe.base | merged | {key: probe.value}
        try:
            cfg = config.build(None, [f"{k}={v}" for k, v in wanted.items()])
        except config.UsageError:
            refused.append(key)
            continue
        if config.inert(cfg, 2, cfg.data.backend):
            refused.append(key)
        else:
            merged = wanted
    return merged, refused


DIST_STEP, NOT_IN_DIST_STEP = every_step_setting()
# the same, those refused above first: each setting is changed in one of the runs beside all it allows
DIST_STEP_REST, NOT_IN_DIST_STEP_REST = every_step_setting(tuple(NOT_IN_DIST_STEP))
# gp_lambda acts under wgan-gp alone, which refuses sync_bn and real_label, and the second run takes hinge
DIST_STEP_GP, NOT_IN_DIST_STEP_GP = every_step_setting(("train.gp_lambda",))


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return ([f"{path}{k}: on one rank only" for k in a.keys() ^ b.keys()]
                + [d for k in a.keys() & b.keys() for d in differences(a[k], b[k], f"{path}{k}.")])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}{i}.")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.shape == b.shape and torch.equal(a, b) else [path.rstrip(".")]
    return [] if a == b else [f"{path.rstrip('.')}: {a!r} against {b!r}"]


@pytest.mark.parametrize("settings", ["DIST", "DIST_CHANGED", "DIST_STEP", "DIST_STEP_REST", "DIST_STEP_GP"])
def test_every_rank_applies_the_settings_alike(settings, places):
    """Under DDP the ranks average their gradients, so ranks that apply every setting alike keep the same
    weights, EMA, optimizer moments and rates, step counters and plan, bit for bit. A setting honoured on
    rank 0 only (a rate, the EMA, a penalty's pace, a layout or loss in the plan) sets them apart. Three
    runs have every step-stage and two-process setting of the table changed, as many at once as config
    allows and where each acts, so a new setting is checked here too, and beside the others (the run
    fails if two break together): every one of them acts in one of the three."""
    nowhere = set(NOT_IN_DIST_STEP) & set(NOT_IN_DIST_STEP_REST) & set(NOT_IN_DIST_STEP_GP)
    assert not nowhere, f"changed in no two-process run where they act: {sorted(nowhere)}"
    r0, r1 = launch("dist", globals()[settings]).ranks
    assert r0["shared"]["opt_g"]["state"] and r0["shared"]["opt_d"]["state"]  # it trained
    apart = differences(r0["shared"], r1["shared"])
    assert not apart, f"rank 0 and rank 1 differ in {len(apart)} places: {sorted(apart)[:6]}"


def test_a_resume_under_ddp_keeps_each_ranks_own_random_state_and_position(places):
    """Resumed with the same number of processes, each rank draws on from its own saved random state
    (the noise it would have drawn uninterrupted) at the saved position; resumed from a checkpoint of
    another number of processes, each rank still draws noise of its own, at the position the images
    seen give (a global batch of 4 images seen by one process is half of two processes' first batch)."""
    ranks = [r["resumed"] for r in launch("dist", DIST).ranks]
    for r in ranks:
        assert torch.equal(r["same_world"], r["uninterrupted"])
        assert r["same_world_position"] == (2, 0, 1, 16)
        assert r["one_process_position"] == (2, 0, 0, 16)
    r0, r1 = ranks
    assert not torch.equal(r0["uninterrupted"], r1["uninterrupted"])
    assert not torch.equal(r0["one_process"], r1["one_process"])
    # new noise for each resume: one at another step draws other noise than this one (not the same
    # stream again, as the run's start and every other resume at another number of processes would)
    for r in ranks:
        assert not torch.equal(r["one_process_later"], r["one_process"])


def test_every_reading_of_the_steps_running_sums_spans_the_ranks(places):
    """The log's means, the non-finite check and the epoch's D-output histograms come from sums each
    rank keeps of its own steps: every rank must read the sums over all ranks. A rank that read its own
    would log and plot its share of the images alone; one that checked its own would checkpoint weights
    another rank found non-finite. Each rank holds one step of values of its own (rank + 1: the mean over
    both is 1.5, the histograms' sum 3) and rank 1 a NaN."""
    for rank in launch("dist", DIST).ranks:
        seen = rank["readings"]
        assert seen["means"] == {key: 1.5 for key in METRICS}, seen["means"]
        assert torch.equal(seen["histograms"], torch.full_like(seen["histograms"], 3.0))
        assert seen["finite"] is False
