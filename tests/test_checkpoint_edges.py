"""Checkpoint folders at their edges: a save into a folder not made yet, step numbers past the zero
padding, a pointer to an older step, the error for nothing found, and files that are no checkpoint."""
import pytest
import torch

from fastdcgan import checkpoint
from fastdcgan.config import UsageError
from fastdcgan.rundir import RunDir, find_weights


def state(step):
    return {"step": step, "G": {"w": torch.full((3,), float(step))}}


def test_a_save_makes_the_whole_path_to_its_folder(tmp_path):
    path = checkpoint.save(state(1), tmp_path / "runs" / "new" / "checkpoints", keep=2)
    assert checkpoint.load(path)["step"] == 1


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
    resuming again must take, not the abandoned future of the first attempt. The rotation keeps the
    newest `keep` by step, which the abandoned future fills: the save just made is kept all the same."""
    checkpoint.save(state(8), tmp_path, keep=2)
    checkpoint.save(state(9), tmp_path, keep=2)
    checkpoint.save(state(6), tmp_path, keep=2)
    assert checkpoint.latest(tmp_path).name == "step_00000006.pt"
    assert find_weights(tmp_path).name == "step_00000006.pt"
    assert checkpoint.load(checkpoint.latest(tmp_path))["step"] == 6


def test_a_checkpoint_or_a_weights_file_belongs_to_its_run_directory(tmp_path):
    """RunDir.of is where `fid` records a score for the file it was given."""
    run = tmp_path / "run"
    assert RunDir.of(run / "checkpoints" / "step_00000006.pt").root == run
    assert RunDir.of(str(run / "generator.pth")).root == run
    assert RunDir.of(tmp_path / "elsewhere" / "g.pt").metrics == tmp_path / "elsewhere" / "metrics.jsonl"
    assert RunDir(str(run)) == RunDir(run) and RunDir(str(run)).status == run / "STATUS"


def test_nothing_to_resolve_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=f"no checkpoint or generator.pth found at {tmp_path / 'elsewhere'}"):
        find_weights(tmp_path / "elsewhere")


@pytest.mark.parametrize("write, reason", [
    (lambda p: p.write_bytes(b"not a checkpoint\n"), "not a file torch.save wrote"),
    (lambda p: p.write_bytes(b""), "empty or cut short"),
    (lambda p: torch.save([1, 2, 3], p), "holds a list, not a dict"),
    (lambda p: p.write_bytes(b"PK\x03\x04 half a checkpoint"), "PytorchStreamReader failed reading zip"),
], ids=["text", "empty", "a list", "a cut zip"])
def test_a_file_that_is_no_checkpoint_is_one_unreadable_naming_it_and_why(tmp_path, write, reason):
    bad = tmp_path / "bad.pt"
    write(bad)
    with pytest.raises(checkpoint.Unreadable) as e:
        checkpoint.load(bad)
    assert e.value.reason.startswith(reason) and str(e.value) == f"{bad}: {e.value.reason}"
    assert "\n" not in str(e.value) and isinstance(e.value, UsageError)


def test_bytes_the_unpickler_takes_for_opcodes_are_an_unreadable_file_named_by_what_tripped(tmp_path):
    """Text starting with 't' (a pickle opcode: build a tuple from the stack) makes torch's unpickler raise
    IndexError: one Unreadable, naming the file and what tripped, as test_bad_input.py wants of every tool."""
    path = tmp_path / "notes.pt"
    path.write_bytes(b"these are not the weights\n")
    with pytest.raises(checkpoint.Unreadable) as caught:
        checkpoint.load(path)
    assert caught.value.reason == "not a file torch.save wrote (IndexError: pop from empty list)"
    assert str(caught.value).startswith(str(path))
