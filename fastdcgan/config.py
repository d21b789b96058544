"""Every setting as a dataclass field: TOML file + dotted overrides, validated in one place.

A field's declaration carries its help text, its choices (each list owned by the module that acts on
it) and its range; the rules between settings stand right after the fields they join. `--help` and
validate() are generated from the same fields, so neither can drift from what the code accepts.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .augment import AUGMENTATIONS
from .augment import parse as parse_augment  # one parser: the step's
from .losses import LOSSES
from .model import SIZES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class UsageError(Exception):
    """A bad command line, config key, value or dataset: the trainer exits with code 2."""


def opt(default: Any, help: str, choices: tuple = (), *, at_least: float | None = None,
        above: float | None = None, below: float | None = None, at_most: float | None = None) -> Any:
    """A setting: its default, its help, and what it may be (one of `choices`, or within the bounds)."""
    bounds = {"at_least": at_least, "above": above, "below": below, "at_most": at_most}
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "bounds": {k: v for k, v in bounds.items() if v is not None}})


def _out_of_bounds(value: Any, bounds: dict) -> str | None:
    """What a value breaks of its declared bounds ('must be at least 1'), or None. NaN and the
    infinities are in no setting's bounds (a learning rate of inf trains NaN; a timeout of inf fails
    when the process group starts)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    lo = "[" if "at_least" in bounds else "("
    low, high = bounds.get("at_least", bounds.get("above")), bounds.get("at_most", bounds.get("below"))
    inside = ((low is None or (value >= low if lo == "[" else value > low))
              and (high is None or (value <= high if "at_most" in bounds else value < high)))
    if inside:
        return None
    if high is None:
        return (f"must be at least {low:g}" if lo == "[" else "must be positive" if low == 0
                else f"must be above {low:g}")
    return f"must be in {lo}{low:g}, {high:g}{']' if 'at_most' in bounds else ')'}"


@dataclass
class Data:
    root: str = opt("", "image folder or CelebA download; empty = built-in synthetic faces")
    split: str = opt("all", "CelebA partition to train on", ("train", "valid", "test", "all"))
    image_size: int = opt(64, "training resolution in pixels (square)", SIZES)
    backend: str = opt("auto", "input pipeline; auto = cache if the decoded dataset fits the memory budget, "
                       "else dali, else nvjpeg on CUDA, else torch",
                       ("auto", "cache", "dali", "nvjpeg", "torch"))
    workers: int = opt(2, "DataLoader worker processes (torch backend)", at_least=0)
    dali_threads: int = opt(0, "CPU threads of the dali backend and cache build (0 = usable cores / ranks "
                               "per node) and of nvjpeg's file reads (0 = 2)", at_least=0)
    prefetch: int = opt(2, "batches the dali and nvjpeg backends decode ahead (queue depth)", at_least=1)
    hflip: bool = opt(False, "mirror a seeded half of each batch on the device (off in the paper)")
    augment: str = opt("", "DiffAugment of every image D sees, real and fake: a comma list of "
                       f"{', '.join(AUGMENTATIONS)} (empty = off)")
    synthetic_n: int = opt(4000, "number of built-in synthetic faces when root is empty", at_least=1)

    def check(self, cfg: Config) -> None:
        try:
            parse_augment(self.augment)
        except ValueError:
            raise UsageError(f"bad value for data.augment: {self.augment!r} (a comma list of "
                             f"{', '.join(AUGMENTATIONS)}, or empty)") from None


@dataclass
class Model:
    nz: int = opt(100, "length of the latent vector z", at_least=1)
    ngf: int = opt(64, "generator feature maps in the last layer", at_least=1)
    ndf: int = opt(64, "discriminator feature maps in the first layer", at_least=1)
    d_dropout: float = opt(0.0, "dropout probability after each discriminator block (0 = off)",
                           at_least=0, below=1)
    sync_bn: bool = opt(False, "BatchNorm statistics over all processes' batches (several processes)")
    ema: float = opt(0.0, "decay of an EMA of G's weights used for samples and FID (0 = off; e.g. 0.999)",
                     at_least=0, below=1)
    ema_warmup: bool = opt(True, "the EMA's decay ramps up as min(ema, (1 + t) / (10 + t)) at update t, so "
                                 "early samples are not mostly the initial weights")
    spectral_norm: bool = opt(False, "spectral normalisation of D's convolutions")


@dataclass
class Train:
    batch_size: int = opt(128, "batch size PER PROCESS (global batch = this x world size)", at_least=1)
    epochs: int = opt(25, "passes over the dataset", at_least=1)
    max_steps: int = opt(0, "stop after this many steps (0 = no limit)", at_least=0)
    seed: int = opt(0, "seed for weights, noise, shuffling and the fixed sample noise", at_least=0)
    run_dir: str = opt("runs/dcgan", "where config, metrics, samples, plots and checkpoints go")
    resume: str = opt("auto", "auto = resume from run_dir's latest checkpoint; never; or a file path")
    init: str = opt("", "start a new run from another's weights (fresh optimizers, step 0): a run directory, "
                        "a checkpoint, or a generator.pth (netG_*.pth) with its discriminator beside it")
    real_label: float = opt(1.0, "target for real images in D's loss (<1 = one-sided smoothing)",
                            above=0, at_most=1)
    d_steps: int = opt(1, "discriminator updates per step (each on the same real batch)", at_least=1)
    g_steps: int = opt(1, "generator updates per step", at_least=1)
    loss: str = opt("bce", "GAN loss: bce = the paper's non-saturating loss; "
                           "wgan-gp also builds D without BatchNorm", LOSSES)
    gp_lambda: float = opt(10.0, "weight of WGAN-GP's gradient penalty (train.loss=wgan-gp)", above=0)
    r1_gamma: float = opt(0.0, "R1 penalty gamma/2 * E|grad D(x)|^2 on real images (0 = off)", at_least=0)
    r1_every: int = opt(16, "apply R1 every this many steps, scaled by it (lazy regularisation)", at_least=1)
    timeout_s: float = opt(600.0, "seconds a collective waits for a lost process before the run fails",
                           above=0)

    def check(self, cfg: Config) -> None:
        """The rules between this section's settings and others'."""
        if self.loss in ("hinge", "wgan-gp") and self.real_label != 1.0:
            raise UsageError("train.real_label applies to train.loss=bce|lsgan only, "
                             f"not train.loss={self.loss}")
        if self.loss == "wgan-gp" and cfg.model.sync_bn:
            raise UsageError("model.sync_bn=true does not go with train.loss=wgan-gp: its critic has no "
                             "BatchNorm (layer norm per image)")
        if self.r1_gamma > 0 and cfg.model.sync_bn:
            raise UsageError("train.r1_gamma > 0 does not work with model.sync_bn=true: R1 differentiates "
                             "D's input gradient, and torch's SyncBatchNorm has no second derivative")


@dataclass
class Optim:
    lr_g: float = opt(2e-4, "Adam learning rate of the generator", above=0)
    lr_d: float = opt(2e-4, "Adam learning rate of the discriminator", above=0)
    beta1: float = opt(0.5, "Adam beta1", at_least=0, below=1)
    beta2: float = opt(0.999, "Adam beta2", at_least=0, below=1)
    scale_lr: bool = opt(False, "multiply both learning rates by the number of processes")


@dataclass
class Log:
    every: int = opt(50, "steps between log lines and metrics.jsonl records", at_least=1)
    tensorboard: bool = opt(False, "also write scalars, sample grids and D-output histograms to RUN_DIR/tb/ "
                                   "(pip install -e '.[tb]')")


@dataclass
class Sample:
    every: int = opt(500, "steps between fixed-noise sample grids (also at each epoch end)", at_least=1)
    n: int = opt(64, "images in a sample grid", at_least=1)


@dataclass
class Ckpt:
    every: int = opt(1000, "steps between checkpoints (also at each epoch end, on a signal, at the end)",
                     at_least=1)
    keep: int = opt(3, "how many recent checkpoints to keep", at_least=1)


@dataclass
class Fid:
    every: int = opt(0, "steps between FID evaluations during training (0 = off)", at_least=0)
    n: int = opt(5000, "generated images per FID evaluation (a covariance needs two)", at_least=2)
    weights: str = opt("", "FID network file (TorchScript or pytorch-fid state dict); "
                           "empty = $FASTDCGAN_FID_WEIGHTS or an installed FID package")
    batch: int = opt(100, "images per feature-network batch", at_least=1)
    target: float = opt(0.0, "stop (exit 0, checkpoint written) at the first FID at or below this (0 = off)",
                        at_least=0)

    def check(self, cfg: Config) -> None:
        if self.target > 0 and self.every == 0:  # else the run trains to its end, its stop never checked
            raise UsageError(f"fid.target={self.target:g} needs fid.every > 0: with fid.every=0 no FID is "
                             "scored during training")


@dataclass
class Config:
    precision: str = opt("auto", "auto = bf16 autocast on a bf16 GPU, fp32 on CPU",
                         ("auto", "fp32", "bf16", "fp16"))
    compile: str = opt("off", "torch.compile the training step; auto = default on CUDA, off on CPU (where it "
                       "does not pay); max-autotune never adds inductor's CUDA graphs (see cuda_graphs)",
                       ("off", "auto", "default", "max-autotune"))
    cuda_graphs: bool = opt(False, "capture the whole step in a CUDA graph (CUDA only; ignored on CPU)")
    channels_last: bool = opt(True, "NHWC memory format for models and inputs "
                                    "(faster on GPUs and on this CPU)")
    device: str = opt("auto", "auto = cuda when available, else cpu", ("auto", "cpu", "cuda"))
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    optim: Optim = field(default_factory=Optim)
    log: Log = field(default_factory=Log)
    sample: Sample = field(default_factory=Sample)
    ckpt: Ckpt = field(default_factory=Ckpt)
    fid: Fid = field(default_factory=Fid)

    def check(self, cfg: Config) -> None:
        if self.cuda_graphs and self.precision == "fp16":
            raise UsageError("cuda_graphs=true does not work with precision=fp16: its GradScaler checks for "
                             "overflow on the host every step; use precision=bf16")


def check_launch(cfg: Config, world: int, device_type: str) -> None:
    """The rules that need the launch: the number of processes and the device (once the group is up)."""
    if cfg.cuda_graphs and device_type == "cuda" and world > 1:
        raise UsageError("cuda_graphs=true works in one process only; with several use compile=default")


def inert(cfg: Config, world: int, backend: str) -> list[str]:
    """The settings changed from their defaults that do nothing beside the others at this launch (its
    number of processes, the input backend it chose), each in a line that says why: the trainer prints
    them as notes, so that a setting ignored is not silently so."""
    t, m, default = cfg.train, cfg.model, Config()
    rules = [
        (cfg.data.prefetch != default.data.prefetch and backend not in ("dali", "nvjpeg"),
         f"data.prefetch={cfg.data.prefetch} does nothing: the {backend} backend decodes no batches ahead"),
        (cfg.fid.n != default.fid.n and cfg.fid.every == 0,
         f"fid.n={cfg.fid.n} does nothing: fid.every=0 (no FID during training; python -m fastdcgan.fid "
         "takes --n)"),
        (t.gp_lambda != default.train.gp_lambda and t.loss != "wgan-gp",
         f"train.gp_lambda={t.gp_lambda:g} does nothing: train.loss={t.loss}, not wgan-gp"),
        (t.r1_every != default.train.r1_every and t.r1_gamma == 0,
         f"train.r1_every={t.r1_every} does nothing: train.r1_gamma=0 (R1 off)"),
        (m.ema_warmup != default.model.ema_warmup and m.ema == 0,
         f"model.ema_warmup={str(m.ema_warmup).lower()} does nothing: model.ema=0 (no EMA)"),
        (m.sync_bn and world == 1, "model.sync_bn=true does nothing in one process"),
        (cfg.optim.scale_lr and world == 1, "optim.scale_lr=true does nothing in one process"),
    ]
    return [line for applies, line in rules if applies]


def _sections(cfg: Config) -> dict[str, Any]:
    """The dataclass holding each top-level key or section: '' for top-level scalars."""
    out: dict[str, Any] = {"": cfg}
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(getattr(cfg, f.name)):
            out[f.name] = getattr(cfg, f.name)
    return out


def iter_keys(cfg: Config):
    """(dotted key, owning object, field) for every scalar setting, in declaration order."""
    for section, obj in _sections(cfg).items():
        for f in dataclasses.fields(obj):
            if dataclasses.is_dataclass(getattr(obj, f.name)):
                continue
            yield (f"{section}.{f.name}" if section else f.name), obj, f


def _lookup(cfg: Config, key: str):
    for name, obj, f in iter_keys(cfg):
        if name == key:
            return obj, f
    raise UsageError(f"unknown config key '{key}' (python -m fastdcgan.train --help lists them)")


def parse_value(key: str, text: str, default: Any) -> Any:
    """Turn an override's text into the type of the field's default."""
    if isinstance(default, bool):
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"bad value for {key}: '{text}' (expected true or false)")
    try:
        return type(default)(text)
    except ValueError:
        raise UsageError(f"bad value for {key}: '{text}' (expected {type(default).__name__})") from None


def set_key(cfg: Config, key: str, value: Any) -> None:
    obj, f = _lookup(cfg, key)
    default = f.default
    if isinstance(value, str) and not isinstance(default, str):
        value = parse_value(key, value, default)
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise UsageError(f"bad value for {key}: {value!r} (expected {type(default).__name__})")
    setattr(obj, f.name, value)


def load_toml(cfg: Config, path: str | Path) -> None:
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None

    def walk(prefix: str, t: dict) -> None:
        for k, v in t.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                try:
                    set_key(cfg, key, v)
                except UsageError as e:  # every message from a file starts with the file's name, once
                    raise UsageError(f"{path}: {e}") from None
    walk("", table)


def validate(cfg: Config) -> None:
    """Every value against its declared choices and bounds, then the rules between settings
    (each section's check); raise UsageError naming the key."""
    for key, obj, f in iter_keys(cfg):
        value = getattr(obj, f.name)
        choices = f.metadata["choices"]
        if choices and value not in choices:
            raise UsageError(f"bad value for {key}: {value!r} (choose from {', '.join(map(str, choices))})")
        broken = _out_of_bounds(value, f.metadata["bounds"])
        if broken:
            raise UsageError(f"bad value for {key}: {value!r} ({broken})")
    for obj in _sections(cfg).values():
        if hasattr(obj, "check"):
            obj.check(cfg)


def build(config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the TOML file, then `section.key=value` overrides; validated."""
    cfg = Config()
    if config_file:
        load_toml(cfg, config_file)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"bad override '{item}': expected section.key=value")
        key, text = item.split("=", 1)
        set_key(cfg, key.strip(), text.strip())
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


_MISSING = object()


def get(d: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a to_dict() output, or _MISSING."""
    section, _, name = key.rpartition(".")
    return (d.get(section, {}) if section else d).get(name, _MISSING)


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from to_dict's output (as stored in a checkpoint); unknown keys are ignored."""
    cfg = Config()
    for key, _, _ in iter_keys(cfg):
        value = get(d, key)
        if value is not _MISSING:
            set_key(cfg, key, value)
    return cfg


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each setting that differs between two to_dict() outputs."""
    out = []
    for key, _, _ in iter_keys(Config()):
        a, b = get(old, key), get(new, key)
        if a != b and a is not _MISSING:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def to_toml(cfg: Config) -> str:
    lines, section = [], None
    for key, obj, f in iter_keys(cfg):
        sec, _, name = key.rpartition(".")
        if sec != section:
            if sec:
                lines.append(f"\n[{sec}]")
            section = sec
        lines.append(f"{name} = {_toml_value(getattr(obj, f.name))}")
    return "\n".join(lines) + "\n"


def help_text() -> str:
    cfg, rows = Config(), []
    for key, obj, f in iter_keys(cfg):
        choices = f.metadata["choices"]
        extra = f" [{'|'.join(map(str, choices))}]" if choices else ""
        rows.append(f"  {key:<18} {_toml_value(getattr(obj, f.name)):<12} {f.metadata['help']}{extra}")
    return "config keys (section.key=value; default; meaning):\n" + "\n".join(rows)
