import signal
import subprocess
import sys
import time

import pytest
import torch

from fastdcgan import checkpoint


def state(step, size=10):
    return {"step": step, "epoch": 0, "config": {"a": 1}, "G": {"w": torch.full((size,), float(step))}, "D": {}}


def test_save_points_latest_and_keeps_last_k(tmp_path):
    for step in (5, 10, 15, 20):
        path = checkpoint.save(state(step), tmp_path, keep=2)
    assert path.name == "step_00000020.pt"
    assert (tmp_path / "latest").read_text().strip() == "step_00000020.pt"
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000015.pt", "step_00000020.pt"]
    loaded = checkpoint.load(checkpoint.latest(tmp_path))  # weights_only=True inside
    assert loaded["step"] == 20 and torch.equal(loaded["G"]["w"], torch.full((10,), 20.0))


def test_crash_while_writing_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    checkpoint.save(state(1), tmp_path, keep=3)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(state(2), tmp_path, keep=3)
    monkeypatch.undo()
    assert checkpoint.latest(tmp_path).name == "step_00000001.pt"
    assert checkpoint.load(checkpoint.latest(tmp_path))["step"] == 1
    checkpoint.save(state(3), tmp_path, keep=3)  # the next save clears the stray temp file
    assert not list(tmp_path.glob("*.tmp"))


def test_stale_or_missing_pointer_falls_back_to_newest_complete(tmp_path):
    checkpoint.save(state(1), tmp_path, keep=3)
    checkpoint.save(state(2), tmp_path, keep=3)
    (tmp_path / "latest").write_text("step_00000099.pt\n")
    assert checkpoint.latest(tmp_path).name == "step_00000002.pt"
    (tmp_path / "latest").unlink()
    assert checkpoint.latest(tmp_path).name == "step_00000002.pt"
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_resolve_accepts_run_dir_checkpoint_dir_and_file(tmp_path):
    path = checkpoint.save(state(7), tmp_path / "checkpoints", keep=1)
    assert checkpoint.resolve(tmp_path) == path
    assert checkpoint.resolve(tmp_path / "checkpoints") == path
    assert checkpoint.resolve(path) == path
    with pytest.raises(FileNotFoundError):
        checkpoint.resolve(tmp_path / "elsewhere")


def test_checkpoints_cannot_carry_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))
    bad = tmp_path / "bad.pt"
    torch.save({"step": 1, "x": Evil()}, bad)
    with pytest.raises(Exception):
        checkpoint.load(bad)


WRITER = """
import sys, torch
from fastdcgan import checkpoint
step = 0
while True:
    step += 1
    checkpoint.save({"step": step, "G": {"w": torch.full((200_000,), float(step))}}, sys.argv[1], keep=2)
"""


def test_kill_9_at_any_moment_leaves_a_loadable_latest(tmp_path):
    checked = 0
    for attempt in range(6):
        d = tmp_path / str(attempt)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(d)])
        time.sleep(2.0 + 0.13 * attempt)  # import time, then a few saves of 800 kB each
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = checkpoint.latest(d)
        if latest is None:  # killed before the first save finished: nothing to lose
            continue
        s = checkpoint.load(latest)
        assert torch.equal(s["G"]["w"], torch.full((200_000,), float(s["step"])))
        checked += 1
    assert checked >= 3  # the kills landed after saves had started, so something was at stake
