"""Checkpoint folders at their edges: a save into a folder not made yet, what a crash leaves behind,
step numbers past the zero padding, a pointer to an older step, and the error for nothing found."""
import pytest
import torch

from fastdcgan import checkpoint
from fastdcgan.rundir import find_weights


def state(step):
    return {"step": step, "G": {"w": torch.full((3,), float(step))}}


def names(d):
    return sorted(p.name for p in d.iterdir())


def test_a_save_makes_the_whole_path_to_its_folder(tmp_path):
    path = checkpoint.save(state(1), tmp_path / "runs" / "new" / "checkpoints", keep=2)
    assert checkpoint.load(path)["step"] == 1


def test_the_save_after_a_crash_leaves_only_complete_checkpoints_and_the_pointer(tmp_path, monkeypatch):
    checkpoint.save(state(1), tmp_path, keep=3)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(state(2), tmp_path, keep=3)
    monkeypatch.undo()
    assert len(names(tmp_path)) == 3  # step 1, latest, and the partial file of step 2
    checkpoint.save(state(3), tmp_path, keep=3)
    assert names(tmp_path) == ["latest", "step_00000001.pt", "step_00000003.pt"]


def test_steps_past_eight_digits_still_rotate_and_fall_back_by_number(tmp_path):
    for step in (99_999_998, 99_999_999, 100_000_000):
        checkpoint.save(state(step), tmp_path, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_99999999.pt",
                                                                       "step_100000000.pt"]
    (tmp_path / "latest").unlink()
    assert checkpoint.latest(tmp_path).name == "step_100000000.pt"


def test_without_a_pointer_the_newest_of_several_wins(tmp_path):
    for step in (3, 1, 4, 2):
        checkpoint.save(state(step), tmp_path, keep=5)
    (tmp_path / "latest").unlink()
    assert checkpoint.latest(tmp_path).name == "step_00000004.pt"


def test_the_pointer_names_the_last_save_even_when_a_higher_step_is_on_disk(tmp_path):
    """A run resumed from an earlier checkpoint into the same folder: its own newest state is what
    resuming again must take, not the abandoned future of the first attempt."""
    checkpoint.save(state(8), tmp_path, keep=3)
    checkpoint.save(state(6), tmp_path, keep=3)
    assert checkpoint.latest(tmp_path).name == "step_00000006.pt"
    assert find_weights(tmp_path).name == "step_00000006.pt"


def test_nothing_to_resolve_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=f"no checkpoint or generator.pth found at {tmp_path / 'elsewhere'}"):
        find_weights(tmp_path / "elsewhere")
