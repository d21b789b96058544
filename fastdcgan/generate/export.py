"""Load a trained generator from anything fastdcgan writes, and export it for use without fastdcgan.

    import fastdcgan
    G = fastdcgan.load_generator("runs/celeba64")      # or a checkpoint, generator.pth, exported .pt
    images = G.sample(16, seed=0)                      # (16, 3, 64, 64) in [-1, 1]
    faces = G.sample_seeds([5, 9])                     # seed 5 and 9, as the CLI sub-commands draw them

An exported TorchScript file (`python -m fastdcgan.generate export --out G.pt`) holds the generator,
whose forward maps z of shape (N, nz, 1, 1) to images (N, 3, S, S) in [-1, 1], with `nz` and
`image_size` as module attributes and in the extra file `fastdcgan.json`:

    extra = {"fastdcgan.json": ""}
    net = torch.jit.load("G.pt", _extra_files=extra)   # json.loads(extra["fastdcgan.json"])
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint
from ..model import Generator, fixed_noise, generator_from_state_dict
from ..rundir import find_weights
from . import Parser, UsageError, new_parser
from .latent import seed_noise, truncate

META = "fastdcgan.json"
FORMAT = 1
MATCH = 1e-4  # the largest difference an export may show on seeds 0-3 (images in [-1, 1]; seen: 0 on CPU)


class GeneratorLoadError(UsageError):
    """The path holds no generator we can load; the message says why."""


class LoadedGenerator(nn.Module):
    """A generator in eval mode with its sizes and seeded sampling; `net` is the Generator or TorchScript."""

    def __init__(self, net: nn.Module, nz: int, image_size: int, source: str = ""):
        super().__init__()
        self.net, self.nz, self.image_size, self.source = net, nz, image_size, source
        self.eval()

    @property
    def eager(self) -> bool:
        """True for a fastdcgan Generator (hooks work), False for a TorchScript file."""
        return isinstance(self.net, Generator)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(len(z), self.nz, 1, 1))

    @torch.no_grad()
    def sample(self, n: int = 1, seed: int = 0, truncation: float | None = None) -> torch.Tensor:
        """n images from the one seed, as `python -m fastdcgan.generate --n N --seed S` draws them."""
        return self(truncate(fixed_noise(n, self.nz, seed, self.device), truncation))

    @torch.no_grad()
    def sample_seeds(self, seeds: Sequence[int], truncation: float | None = None) -> torch.Tensor:
        """One image per seed, by the per-seed convention of fastdcgan.generate.latent (grid --seeds etc.)."""
        return self(truncate(seed_noise(seeds, self.nz, self.device), truncation))


@contextmanager
def _quiet_jit() -> Iterator[None]:
    # torch marks torch.jit as deprecated; the format still loads in Python and in C++ (libtorch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def find_generator_file(path: Path) -> Path:
    """A run directory's latest checkpoint, else its generator.pth; a file is itself (rundir.find_weights)."""
    try:
        return find_weights(path)
    except FileNotFoundError as e:
        raise GeneratorLoadError(str(e)) from None


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu",
                   ema: bool = False) -> LoadedGenerator:
    """The generator in a run directory, training checkpoint, generator.pth or exported TorchScript file.

    ema=True takes the EMA weights (`G_ema`) of a training checkpoint and raises GeneratorLoadError
    when there are none. Raises GeneratorLoadError with a readable message for anything unloadable.
    """
    file = find_generator_file(Path(path))
    if file.suffix == ".onnx":
        raise GeneratorLoadError(f"{file} is ONNX: load it with onnxruntime, not fastdcgan")
    if checkpoint.is_torchscript(file):
        if ema:
            raise GeneratorLoadError(f"{file} is an exported generator: it has no separate EMA weights "
                                     "(export with --ema to export them)")
        return _load_torchscript(file, device)
    try:
        state = checkpoint.load(file)
    except checkpoint.Unreadable as e:
        raise GeneratorLoadError(f"{file} is not a checkpoint or state_dict torch can load "
                                 f"({e.reason})") from None
    G = generator_from_checkpoint(state, ema, str(file))
    return LoadedGenerator(G.to(device), G.nz, G.image_size, str(file))


def generator_from_checkpoint(state: dict, ema: bool = False, name: str = "checkpoint") -> Generator:
    """G (or its EMA, `G_ema`) from a loaded training checkpoint or plain generator state_dict."""
    if ema:
        if "G_ema" not in state:
            raise GeneratorLoadError(f"{name} has no EMA weights (no 'G_ema' key): "
                                     "train with model.ema > 0, or leave out --ema")
        weights = state["G_ema"]
    else:
        weights = state["G"] if "G" in state else state
    try:
        return generator_from_state_dict(weights)
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise GeneratorLoadError(f"{name} holds no DCGAN generator weights "
                                 f"({type(e).__name__}: {e})") from None


def _load_torchscript(file: Path, device: str | torch.device) -> LoadedGenerator:
    extra = {META: ""}
    with _quiet_jit():
        net = torch.jit.load(str(file), map_location=device, _extra_files=extra)
    if not extra[META]:
        raise GeneratorLoadError(f"{file} is TorchScript but not a fastdcgan export (no {META} inside)")
    meta = json.loads(extra[META])
    return LoadedGenerator(net.eval(), int(meta["nz"]), int(meta["image_size"]), str(file))


def metadata(G: LoadedGenerator) -> dict:
    """What an exported file records about the generator and how to feed it."""
    return {"format": FORMAT, "nz": G.nz, "image_size": G.image_size,
            "ngf": getattr(G.net, "ngf", None), "input": "z (N, nz, 1, 1), standard normal",
            "output": "images (N, 3, image_size, image_size) in [-1, 1]",
            "seed_convention": "z of seed s = torch.randn(nz, generator=torch.Generator().manual_seed(s))",
            "source": G.source}


def export_torchscript(G: LoadedGenerator, out: str | os.PathLike) -> Path:
    """Script the eager generator (eval mode, on CPU) and save it with its metadata."""
    if not G.eager:
        raise GeneratorLoadError(f"{G.source} is already exported; export from a checkpoint or generator.pth")
    net = _cpu_copy(G.net)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_jit():
        torch.jit.save(torch.jit.script(net), str(out), _extra_files={META: json.dumps(metadata(G))})
    return out


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(G: LoadedGenerator, out: str | os.PathLike) -> Path:
    """The generator as ONNX (opset 17, dynamic batch), metadata in the model's metadata_props."""
    if not onnx_available():
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install onnx")
    import onnx

    if not G.eager:
        raise GeneratorLoadError(f"{G.source} is already exported; export from a checkpoint or generator.pth")
    net = _cpu_copy(G.net)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the TorchScript-based exporter: the torch.export-based default needs onnxscript as well
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, G.nz, 1, 1),), str(out), input_names=["z"],
                          output_names=["images"], dynamic_axes={"z": {0: "batch"}, "images": {0: "batch"}},
                          opset_version=17, dynamo=False)
    model = onnx.load(str(out))
    for key, value in metadata(G).items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(out))
    return out


def _cpu_copy(net: nn.Module) -> nn.Module:
    copy = Generator(net.nz, net.ngf, net.image_size)
    copy.load_state_dict({k: v.cpu() for k, v in net.state_dict().items()})
    return copy.eval()


# ---- the export sub-command of python -m fastdcgan.generate ----------------------------------

def export_parser() -> Parser:
    return new_parser("export", "The generator as TorchScript (--out NAME.pt; loads with torch.jit.load, in "
                      "Python or C++, and with fastdcgan.load_generator) or ONNX (--out NAME.onnx; needs "
                      "the onnx package). nz and image size are recorded in the file. The forward takes z of "
                      "shape (N, nz, 1, 1) and returns images (N, 3, S, S) in [-1, 1].", "generator.pt",
                      sampling=False)


def run_export(G: LoadedGenerator, args: argparse.Namespace) -> None:
    suffix = Path(args.out).suffix.lower()
    if suffix == ".onnx":
        if not onnx_available():
            raise UsageError("ONNX export needs the onnx package (pip install onnx); "
                             "--out NAME.pt gives TorchScript")
        export_onnx(G, args.out)
    elif suffix in (".pt", ".ts"):
        seeds = list(range(4))
        want = G.sample_seeds(seeds)
        if not bool(want.isfinite().all()):
            raise UsageError(f"{G.source} gives non-finite images on seeds 0-3: nothing exported")
        out = Path(args.out)
        checking = out.with_name(f".{out.stem}.checking{out.suffix}")  # --out is replaced once it passes
        try:
            export_torchscript(G, checking)
            diff = float((load_generator(checking, G.device).sample_seeds(seeds) - want).abs().max())
            if not diff <= MATCH:  # NaN too
                raise UsageError(f"the exported generator differs from the original by {diff:.1e} on seeds "
                                 f"0-3 (more than {MATCH:g}); {out} was not written")
            os.replace(checking, out)
        finally:
            checking.unlink(missing_ok=True)
        print(f"checked: the exported generator matches the original to {diff:.1e} on seeds 0-3")
    else:
        raise UsageError(f"--out must end in .pt or .ts (TorchScript) or .onnx, got {args.out!r}")
    print(f"wrote the generator (nz {G.nz}, {G.image_size}x{G.image_size}) to {args.out}")
