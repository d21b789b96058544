"""Checkpoints that survive a kill -9 at any moment.

A checkpoint is written to a temporary file, fsynced and renamed into place; only then does
`checkpoints/latest` (a one-line text file, itself replaced atomically) name it. So `latest`
never names a partial file, and a crash leaves at worst a stray `.tmp` that the next save removes.
Checkpoints hold only tensors, containers and plain values: `torch.load(weights_only=True)` reads
them, so a checkpoint downloaded from elsewhere cannot run code.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .config import UsageError

LATEST = "latest"
NAME = re.compile(r"step_(\d+)\.pt$")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary sibling, fsync, rename over path, fsync the folder: the file is
    the old one or the new one, never a part, whatever kills the process (and whichever of two
    processes writing it at once finishes last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save(state: dict, ckpt_dir: str | os.PathLike, keep: int) -> Path:
    """Write state as step_NNNNNNNN.pt, point `latest` at it, keep the newest `keep` checkpoints."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{state['step']:08d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    atomic_write(ckpt_dir / LATEST, lambda f: f.write((path.name + "\n").encode()))
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
    for stray in ckpt_dir.glob("*.tmp"):
        stray.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in the folder, oldest first."""
    found = [p for p in Path(ckpt_dir).glob("step_*.pt") if NAME.search(p.name)]
    return sorted(found, key=lambda p: int(NAME.search(p.name).group(1)))


def latest(ckpt_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `latest` names; if that pointer is missing or stale, the newest complete file."""
    ckpt_dir = Path(ckpt_dir)
    try:
        name = (ckpt_dir / LATEST).read_text().strip()
        if name and (ckpt_dir / name).is_file():
            return ckpt_dir / name
    except OSError:
        pass
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


class Unreadable(UsageError):
    """A file that is no checkpoint or state_dict: damaged, something else, or carrying code."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def first_line(e: BaseException) -> str:
    """What an exception says, in one line (its type's name when it says nothing)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _why_unreadable(e: BaseException) -> str:
    text = str(e)
    if "Unsupported global" in text:  # torch's own advice here is how to load it anyway: not ours to give
        return ("it holds objects other than tensors and plain values, which could run code when loaded; "
                "checkpoints never do")
    if "Weights only load failed" in text:  # not a pickle at all (text, a foreign format)
        return "not a file torch.save wrote"
    if isinstance(e, EOFError):
        return "empty or cut short"
    if isinstance(e, (pickle.UnpicklingError, RuntimeError, OSError, ValueError)):
        return first_line(e)
    # what the unpickler trips on in bytes that only look like a pickle (text: IndexError, KeyError...)
    return f"not a file torch.save wrote ({type(e).__name__}: {first_line(e)})"


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """The dict a checkpoint or state_dict holds. Whatever else the file is (truncated, not torch's,
    a pickle that would run code), one Unreadable naming it: torch raises many kinds for these, and
    the unpickler more for bytes it takes for opcodes (any exception here is the file's)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise Unreadable(path, _why_unreadable(e)) from None
    if not isinstance(state, dict):
        raise Unreadable(path, f"holds a {type(state).__name__}, not a dict")
    return state


def is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives carry their code (`<name>/code/...`); torch.save archives (checkpoints,
    generator.pth) carry data only."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
