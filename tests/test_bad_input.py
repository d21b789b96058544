"""Bad input, by construction: every tool, given each kind of bad file or folder where it takes one,
ends with exit code 2 and one line on stderr saying what is wrong and naming the path, never a
traceback. A user's typo or a half-copied checkpoint costs a minute this way, not a search through a
stack trace.

The tools and what they read (TAKES_A_CHECKPOINT, TAKES_A_NETWORK, TAKES_DATA) against the kinds of
bad input (BAD_CHECKPOINTS, BAD_DATA): every pair is a test, so a tool or a kind added to a table is held to
this with no other change. The tools run in this process, as their console scripts call them.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from conftest import make_celeba, tiny_args
from fastdcgan import checkpoint
from fastdcgan.fid import main as fid
from fastdcgan.generate.cli import main as generate
from fastdcgan.prepare import main as prepare
from fastdcgan.train import main as train


# ----- the bad inputs: each makes its path in a folder, from a good file of its kind if it needs one -----

def _truncated(folder: Path, good: Path) -> Path:
    """A good file (a checkpoint, the FID network) cut off half-way, as an interrupted copy or a full
    disk leaves it."""
    whole = good.read_bytes()
    path = folder / "half.pt"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _write(name: str, data: bytes) -> Callable[[Path, Path], Path]:
    def make(folder: Path, good: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return make


def _folder(folder: Path, good: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


BAD_CHECKPOINTS = {
    "missing": lambda folder, good: folder / "nothing.pt",
    "text": _write("notes.pt", b"these are not the weights\n"),
    "empty file": _write("empty.pt", b""),
    "truncated": _truncated,
    "folder without one": _folder,
}


def _images(n_good: int, n_broken: int) -> Callable[[Path, Path], Path]:
    def make(folder: Path, good: Path) -> Path:
        root = folder / "images"
        root.mkdir()
        if n_good:
            source = make_celeba(folder / "source", n_good) / "img_align_celeba"
            for f in source.iterdir():
                shutil.copy(f, root / f.name)
        for i in range(n_broken):
            (root / f"broken{i}.jpg").write_bytes(b"not a jpeg")
        return root
    return make


def _a_file(folder: Path, good: Path) -> Path:
    return _images(1, 0)(folder, good) / "000000.jpg"


BAD_DATA = {
    "missing": lambda folder, good: folder / "nowhere",
    "empty folder": _folder,
    "one image": _images(1, 0),
    "only broken images": _images(0, 3),
    "a file, not a folder": _a_file,
}


# ----- the tools: each is called with the bad path and the fixtures' good inputs -----

def _generate(command: str, out: str, *more: str):
    return lambda bad, run, celeba, net, tmp: generate(
        [command, "--checkpoint", str(bad), "--out", str(tmp / out), *more])


TAKES_A_CHECKPOINT = {
    "train train.resume": lambda bad, run, celeba, net, tmp: train(
        tiny_args(celeba, tmp / "run", train__resume=bad)),
    "train train.init": lambda bad, run, celeba, net, tmp: train(
        tiny_args(celeba, tmp / "run", train__init=bad)),
    "fid": lambda bad, run, celeba, net, tmp: fid(
        ["--checkpoint", str(bad), "--data", str(celeba), "--weights", str(net), "--n", "8"]),
    "generate grid": _generate("grid", "out.png"),
    "generate interpolate": _generate("interpolate", "out.png", "--seeds", "1,2"),
    "generate arithmetic": _generate("arithmetic", "out.png", "--a", "1", "--c", "2"),
    "generate forget": _generate("forget", "out.png", "--drop-channels", "0"),
    "generate features": _generate("features", "out.png"),
    "generate export": _generate("export", "out.pt"),
}

# The FID network (fid.weights, --weights) is read by each tool that scores; the kinds of bad
# checkpoint are its kinds too ("truncated": half of the network's file).
TAKES_A_NETWORK = {
    "train fid.weights": lambda bad, run, celeba, net, tmp: train(
        tiny_args(celeba, tmp / "run", fid__every=2, fid__n=8, fid__weights=bad)),
    "fid --weights": lambda bad, run, celeba, net, tmp: fid(
        ["--checkpoint", str(run), "--data", str(celeba), "--weights", str(bad), "--n", "8"]),
}

TAKES_DATA = {
    "train data.root": lambda bad, run, celeba, net, tmp: train(tiny_args(bad, tmp / "run")),
    "fid --data": lambda bad, run, celeba, net, tmp: fid(
        ["--checkpoint", str(run), "--data", str(bad), "--weights", str(net), "--n", "8"]),
    "prepare": lambda bad, run, celeba, net, tmp: prepare([str(bad), "--image-size", "32"]),
}

# Pairs that are no bad input for that tool, and why; each is checked to succeed.
FINE = {("prepare", "one image"): "prepare caches any number of images; the trainer, which knows its batch, "
                                  "refuses fewer than one (train data.root-one image)"}

CASES = ([pytest.param(tool, kind, TAKES_A_CHECKPOINT[tool], BAD_CHECKPOINTS[kind], id=f"{tool}-{kind}")
          for tool in TAKES_A_CHECKPOINT for kind in BAD_CHECKPOINTS]
         + [pytest.param(tool, kind, TAKES_A_NETWORK[tool], BAD_CHECKPOINTS[kind], id=f"{tool}-{kind}")
            for tool in TAKES_A_NETWORK for kind in BAD_CHECKPOINTS]
         + [pytest.param(tool, kind, TAKES_DATA[tool], BAD_DATA[kind], id=f"{tool}-{kind}")
            for tool in TAKES_DATA for kind in BAD_DATA])


@pytest.mark.parametrize("tool, kind, run_tool, make_bad", CASES)
def test_bad_input_is_one_line_naming_it_and_exit_2(tool, kind, run_tool, make_bad, tiny_run, tiny_fid_net,
                                                    celeba, tmp_path, capsys):
    good = tiny_fid_net if tool in TAKES_A_NETWORK else checkpoint.latest(tiny_run / "checkpoints")
    bad = make_bad(tmp_path, good)
    capsys.readouterr()
    try:
        code = run_tool(bad, tiny_run, celeba, tiny_fid_net, tmp_path)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    if (tool, kind) in FINE:
        assert code == 0, err
        return
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning")]
    assert code == 2, f"{tool} given a bad input ({kind}) exited {code}: {err}"
    assert len(lines) == 1 and lines[0].startswith(("error", "python -m")), err
    assert bad.name in lines[0], f"the line does not name {bad.name}: {lines[0]}"
