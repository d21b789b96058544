import contextlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastdcgan import checkpoint


def state(step, size=10):
    return {"step": step, "epoch": 0, "config": {"a": 1}, "G": {"w": torch.full((size,), float(step))},
            "D": {}}


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
    assert len(list(tmp_path.iterdir())) == 3  # step 1, latest, and the partial file of step 2
    checkpoint.save(state(3), tmp_path, keep=3)  # the next save clears the stray temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001.pt", "step_00000003.pt"]


def test_stale_or_missing_pointer_falls_back_to_newest_complete(tmp_path):
    checkpoint.save(state(1), tmp_path, keep=3)
    checkpoint.save(state(2), tmp_path, keep=3)
    (tmp_path / "latest").write_text("step_00000099.pt\n")
    assert checkpoint.latest(tmp_path).name == "step_00000002.pt"
    (tmp_path / "latest").unlink()
    assert checkpoint.latest(tmp_path).name == "step_00000002.pt"
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_find_weights_takes_a_run_dir_its_checkpoints_a_file_or_a_generator_pth(tmp_path):
    from fastdcgan.rundir import find_weights
    (tmp_path / "generator.pth").write_bytes(b"")
    assert find_weights(tmp_path) == tmp_path / "generator.pth"  # no checkpoint yet: the plain weights
    path = checkpoint.save(state(7), tmp_path / "checkpoints", keep=1)
    assert find_weights(tmp_path) == path  # the latest checkpoint comes first
    assert find_weights(tmp_path / "checkpoints") == path
    assert find_weights(path) == path
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        find_weights(tmp_path / "elsewhere")


def test_every_form_of_a_run_with_several_checkpoints_means_its_latest(tmp_path):
    """A run keeps several checkpoints: the run directory and its checkpoints/ folder each mean the one
    `latest` names, and without the pointer the newest, never another that happens to be there."""
    from fastdcgan.rundir import find_weights
    folder = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        newest = checkpoint.save(state(step), folder, keep=3)
    for lost_pointer in (False, True):
        if lost_pointer:
            (folder / "latest").unlink()
        for where in (tmp_path, folder, str(folder) + "/"):
            assert find_weights(where) == newest, (where, lost_pointer)


def test_checkpoints_cannot_carry_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))
    bad = tmp_path / "bad.pt"
    torch.save({"step": 1, "x": Evil()}, bad)
    with pytest.raises(checkpoint.Unreadable) as e:
        checkpoint.load(bad)
    assert str(e.value) == (f"{bad}: it holds objects other than tensors and plain values, which could run "
                            "code when loaded; checkpoints never do")


WRITER = """
import sys, torch
from fastdcgan import checkpoint
step = 0
while True:
    step += 1
    checkpoint.save({"step": step, "G": {"w": torch.full((200_000,), float(step))}}, sys.argv[1], keep=2)
"""


def _saved_step(d) -> int:
    try:
        return int(checkpoint.NAME.search((d / "latest").read_text()).group(1))
    except (OSError, AttributeError):  # no pointer yet, or caught between its truncation and write
        return 0


def _poll(condition, proc, timeout=120):
    t = time.time()
    while not condition():
        assert proc.poll() is None and time.time() - t < timeout, "the writer died or stalled"
        time.sleep(0.001)


@contextlib.contextmanager
def _writer(d):
    """WRITER in a subprocess, killed on the way out: a failed assertion must not leave it saving
    on one core for good (a planted bug's failure did, for 10 minutes)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(d)])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _partial(d) -> bool:
    """A checkpoint temp file with some bytes in it."""
    for p in d.glob("step_*.tmp"):
        try:
            if p.stat().st_size:
                return True
        except FileNotFoundError:  # renamed between the listing and the look
            pass
    return False


def _assert_complete(d):
    """latest and every step_*.pt load and hold what their step says."""
    assert checkpoint.latest(d) is not None
    for path in [checkpoint.latest(d), *checkpoint.list_checkpoints(d)]:
        s = checkpoint.load(path)
        assert torch.equal(s["G"]["w"], torch.full((200_000,), float(s["step"]))), path


def test_kill_9_at_any_moment_leaves_a_loadable_latest(tmp_path):
    for attempt in range(4):
        d = tmp_path / str(attempt)
        with _writer(d) as proc:
            # a few saves done, whatever import took
            _poll(lambda d=d, attempt=attempt: _saved_step(d) >= 1 + 2 * attempt, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _assert_complete(d)


def test_kill_9_mid_write_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    """Killed while a checkpoint is half written: the partial file is a temp file, never taken for a
    checkpoint (a save that wrote step_N.pt in place would leave a partial step_N.pt here)."""
    for attempt in range(10):  # until the kill lands mid-write (almost always the first time)
        d = tmp_path / str(attempt)
        with _writer(d) as proc:
            _poll(lambda d=d: _saved_step(d) >= 2 and _partial(d), proc, timeout=60)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if list(d.glob("step_*.tmp")):
            break
    else:
        raise AssertionError("never killed mid-write")
    _assert_complete(d)
    assert checkpoint.latest(d).name == (d / "latest").read_text().strip()
