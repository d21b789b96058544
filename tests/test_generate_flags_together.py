"""Flags a sub-command would silently ignore, given the others, are refused: exit 2, one line naming them,
no file written. A user who asks for `--seeds 1,2 --seed 3`, `--drop-channels 1 --positive 2` or the EMA
weights of an exported file (which holds one network) would otherwise get a picture that looks like an
answer to what they asked and is not."""
import pytest

from fastdcgan.fid import main as fid
from fastdcgan.generate.cli import main as generate


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "g.pt"
    assert generate(["export", "--checkpoint", str(tiny_run), "--out", str(out)]) == 0
    return out


# sub-command and its arguments (without --checkpoint and --out), and what the line must say
TOGETHER = {
    "grid --seeds with --n": (["grid", "--seeds", "1,2", "--n", "3"], ["--seeds", "--n"]),
    "grid --seeds with --seed": (["grid", "--seeds", "1,2", "--seed", "3"], ["--seeds", "--seed"]),
    "grid --single with --nrow": (["grid", "--n", "2", "--single", "--nrow", "2"], ["--single", "--nrow"]),
    "forget --drop-channels with --positive": (["forget", "--drop-channels", "1", "--positive", "2,3"],
                                               ["--drop-channels", "--positive"]),
    # what chooses the channels from marked seeds, with channels named: each would be ignored
    **{f"forget --drop-channels with {flag}": (["forget", "--drop-channels", "1", flag, value],
                                               ["--drop-channels", flag])
       for flag, value in (("--k", "2"), ("--score", "logistic"), ("--box", "0.1,0.1,0.5,0.5"))},
    "interpolate --fps with a PNG strip": (["interpolate", "--seeds", "1,2", "--fps", "3"], ["--fps", "PNG"]),
}


@pytest.mark.parametrize("case", TOGETHER)
def test_flags_that_exclude_each_other_are_refused_in_one_line(case, tiny_run, tmp_path, capsys):
    argv, named = TOGETHER[case]
    out = tmp_path / "out.png"
    code = generate([*argv, "--checkpoint", str(tiny_run), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    assert all(flag in err[0] for flag in named), err[0]
    assert not out.exists()


EXPORT_EMA = {
    **{f"generate {c}": [c, *more] for c, more in (("grid", ["--n", "2"]),
                                                   ("interpolate", ["--seeds", "1,2"]),
                                                   ("arithmetic", ["--a", "1", "--c", "2"]))},
    "fid": None,
}


@pytest.mark.parametrize("tool", EXPORT_EMA)
def test_the_ema_weights_of_an_exported_generator_are_refused_in_one_line(tool, exported, celeba,
                                                                         tiny_fid_net, tmp_path, capsys):
    out = tmp_path / "out.png"
    if tool == "fid":
        code = fid(["--checkpoint", str(exported), "--ema", "--data", str(celeba),
                    "--weights", str(tiny_fid_net), "--n", "4"])
    else:
        code = generate([*EXPORT_EMA[tool], "--checkpoint", str(exported), "--ema", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    assert exported.name in err[0] and "EMA" in err[0], err[0]
    assert not out.exists() and not (exported.parent / "fid.jsonl").exists()
