"""Every command-line flag of the tools, proven by construction, as tests/test_every_setting.py proves
the config keys: python -m fastdcgan.generate's sub-commands, python -m fastdcgan.fid and python -m
fastdcgan.prepare; and python -m fastdcgan.train's own flags (its settings are the other table's).

Each flag their parsers define has a probe here (a command, and the same command with that flag
changed: what the flag governs must change) or an exemption with its reason. A flag added later
without a probe fails `test_every_flag_has_a_probe` by name; a flag a tool parses and then ignores
fails its probe. What is compared is what the user gets: the files written (bytes), the exit code,
the score's record in fid.jsonl (clock aside) and the largest batch the FID network was given, the
cache's images.
"""
import argparse
import json
import re
from pathlib import Path
import shlex
import tomllib
from dataclasses import dataclass

import pytest
import torch

from conftest import make_celeba, tiny_args, write_tiny_fid_net
from fastdcgan import fid, prepare, train
from fastdcgan.metrics import extractors
from fastdcgan.generate.cli import COMMANDS
from fastdcgan.generate.cli import main as generate_main
from fastdcgan.generate.export import load_generator
from fastdcgan.train import main as train_main

PARSERS = {f"generate {name}": build for name, (build, _) in COMMANDS.items()}
PARSERS |= {"fid": fid.parser, "prepare": prepare.parser, "train": train.parser}


def flags(build) -> list[str]:
    return [a.option_strings[0] if a.option_strings else a.dest for a in build()._actions if a.dest != "help"]


@dataclass(frozen=True)
class Probe:
    base: str       # the command's arguments, with {run}, {other}, {ema}, {out}, {data}... filled in below
    changed: str    # the same with the flag changed: it must succeed, unless
    refused: str = ""  # what it must say, with exit code 2, when the flag's value is refused here


# --device: no CUDA here, so the flag is read if asking for it is refused (on a GPU machine the two
# commands may give the same bytes; these probes skip there).
NO_CUDA = "but no CUDA device is available"


def changes(tool: str, base: str, values: dict[str, str]) -> dict[tuple[str, str], Probe]:
    """A probe per flag: the base command, and the base command with that flag set to its value."""
    return {(tool, flag): Probe(base, f"{base} {flag} {value}", NO_CUDA if flag == "--device" else "")
            for flag, value in values.items()}


def shared(tool: str, base: str, out: str, truncation: bool = True) -> dict[tuple[str, str], Probe]:
    """What every generate sub-command shares: --checkpoint, --out, --ema, --device (and --truncation)."""
    mine = f"--checkpoint {{run}} {base}"
    probes = {
        (tool, "--checkpoint"): Probe(mine, f"--checkpoint {{other}} {base}"),
        (tool, "--out"): Probe(f"{mine} --out {{out}}/{out}", f"{mine} --out {{out}}/elsewhere/{out}"),
        (tool, "--ema"): Probe(f"--checkpoint {{ema}} {base}", f"--checkpoint {{ema}} {base} --ema"),
        **changes(tool, mine, {"--device": "cuda:7"}),
    }
    return probes | (changes(tool, mine, {"--truncation": "0.3"}) if truncation else {})


GRID = "--n 4 --out {out}/grid.png"
WALK = "--seeds 1,2 --frames 3 --out {out}/walk.gif"
ARITH = "--a 1,2 --b 3 --c 4 --n 3 --out {out}/a.png"
# layer 0 (4x4, the most channels): enough score above zero under every flag and pair of flags
# (test_flags_in_pairs.py) that --k and what scores the channels each change the channels chosen
FORGET = "--layer 0 --positive 10,11,12 --negative 20,21,22 --k 3 --seeds 1,2 --out {out}/f.png"
FEATURES = "--seeds 0 --tile 8 --out {out}/features.png"
FID = "--weights {net} --n 8 --batch 4"
PREPARE = "{celeba} --image-size 32 --device cpu --threads 1"
TRAIN = ("data.root={celeba} data.backend=torch data.workers=0 data.image_size=32 model.nz=16 model.ngf=8 "
         "model.ndf=8 train.batch_size=8 train.max_steps=1 device=cpu train.run_dir={out}/run")


def run(base: str) -> str:
    return f"--checkpoint {{run}} {base}"


PROBES: dict[tuple[str, str], Probe] = {
    **shared("generate grid", GRID, "grid.png"),
    ("generate grid", "--seeds"): Probe(run("--seeds 0-3 --out {out}/grid.png"),
                                        run("--seeds 1-4 --out {out}/grid.png")),
    **changes("generate grid", run(GRID), {"--n": "2", "--seed": "1", "--nrow": "3", "--single": ""}),

    **shared("generate interpolate", WALK, "walk.gif"),
    **changes("generate interpolate", run(WALK),
              {"--seeds": "1,3", "--frames": "2", "--method": "linear", "--loop": "", "--fps": "5"}),

    **shared("generate arithmetic", ARITH, "a.png"),
    **changes("generate arithmetic", run(ARITH),
              {"--a": "1,5", "--b": "6", "--c": "7", "--n": "5", "--noise": "0.5", "--noise-seed": "1"}),

    **shared("generate forget", FORGET, "f.png"),
    **changes("generate forget", run(FORGET),
              {"--layer": "1", "--positive": "3,4", "--negative": "5,6,7", "--k": "1", "--score": "logistic",
               "--box": "0.2,0.2,0.6,0.6", "--seeds": "3,4"}),
    ("generate forget", "--drop-channels"): Probe(run("--drop-channels 1 --seeds 1,2 --out {out}/f.png"),
                                                  run("--drop-channels 2,5 --seeds 1,2 --out {out}/f.png")),

    **shared("generate features", FEATURES, "features.png"),
    **changes("generate features", run(FEATURES), {"--seeds": "1", "--layer": "1", "--tile": "64"}),

    **shared("generate export", "--out {out}/g.pt", "g.pt", truncation=False),

    # fid: the score's record in the run's fid.jsonl
    **changes("fid", run(FID), {"--data": "{data}", "--split": "valid", "--n": "6", "--seed": "1",
                                "--weights": "{other_net}", "--device": "cuda"}),
    ("fid", "--checkpoint"): Probe(run(FID), f"--checkpoint {{other}} {FID}"),
    ("fid", "--ema"): Probe(f"--checkpoint {{ema}} {FID}", f"--checkpoint {{ema}} {FID} --ema"),
    # the score is the same at any batch (one draw of noise; test_fid_stats.py), the memory it takes not
    ("fid", "--batch"): Probe(f"--checkpoint {{run}} {FID}", f"--checkpoint {{run}} {FID} --batch 2"),

    # prepare: the cache it builds
    **changes("prepare", PREPARE, {"--image-size": "64", "--split": "valid", "--device": "cuda"}),
    ("prepare", "root"): Probe(PREPARE, PREPARE.replace("{celeba}", "{data}")),

    # train (its settings are tests/test_every_setting.py's): what it prints and writes
    ("train", "--config"): Probe(f"--dry-run {TRAIN}", f"--dry-run --config {{toml}} {TRAIN}"),
    ("train", "--dry-run"): Probe(TRAIN, f"--dry-run {TRAIN}"),
    ("train", "overrides"): Probe(f"--dry-run {TRAIN}", f"--dry-run {TRAIN} model.ngf=4"),
}

EXEMPT = {
    ("fid", "--fetch"): "a download, not a score: tests/test_fid.py fetches from a local wheel, in and out "
                        "of process, and checks where the network lands",
    ("prepare", "--threads"): "speed only: the cache holds the same images with any number of threads",
}


def write_toml(path):
    path.write_text("[train]\nseed = 7\n")
    return path


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flags")
    celeba = make_celeba(tmp / "celeba", 24)
    net = write_tiny_fid_net(tmp / "net0.pt", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTDCGAN_CACHE", str(tmp / "cache"))
        # "run" records its own settings where a flag may override them (fid.weights for fid --weights):
        # a flag that loses to the run's setting is a flag ignored, and must fail its probe
        for name, extra in {"run": {"fid__weights": net}, "other": {"train__seed": 1},
                            "ema": {"model__ema": 0.5}}.items():
            assert train_main(tiny_args(celeba, tmp / name, train__max_steps=3, **extra)) == 0
    # in the run directory: fid appends its record there, as for the run's other files
    assert generate_main(["export", "--checkpoint", str(tmp / "run"), "--out", str(tmp / "run" / "g.pt")]) \
        == 0
    return {"run": tmp / "run", "other": tmp / "other", "ema": tmp / "ema", "celeba": celeba,
            "exported": tmp / "run" / "g.pt",
            "data": make_celeba(tmp / "data", 30), "tmp": tmp,
            "toml": write_toml(tmp / "small.toml"), "net": net,
            "other_net": write_tiny_fid_net(tmp / "net1.pt", seed=1)}


def outcome(tool: str, args: str, places: dict, folder, monkeypatch, capsys):
    """What the user gets from one command: its exit code and, by tool, the files it wrote (bytes), the
    score and what it was computed from (not the record's echo of the flags), or the cache's images;
    then what it said on stderr (not compared: a refusal's reason)."""
    folder.mkdir()
    argv = shlex.split(args.format(**places, out=folder))
    if tool.startswith("generate"):
        try:
            code = generate_main([tool.split()[1], *argv])
        except SystemExit as e:
            code = e.code
        printed = capsys.readouterr()
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        # and forget's table of the channels it chose, with their scores (its label of the method aside)
        scores = re.findall(r"^ *\d+ +[+-]\d+\.\d+$", printed.out, re.M)
        return code, files | ({"scores": scores} if scores else {}), printed.err
    if tool == "fid":
        # the largest batch the feature network was given (what bounds the memory a score takes)
        fed, call = [], extractors.Extractor.__call__
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(extractors.Extractor, "__call__",
                       lambda self, images: fed.append(len(images)) or call(self, images))
            code = fid.main(argv)
        log = [p / "fid.jsonl" for p in (places["run"], places["other"], places["ema"])]
        records = [json.loads(line) for f in log if f.exists() for line in f.read_text().splitlines()]
        for f in log:
            f.unlink(missing_ok=True)
        assert len(records) == (code == 0)
        return code, [{k: r[k] for k in ("fid", "step", "network", "stats")} | {"fed": max(fed, default=0)}
                      for r in records], capsys.readouterr().err
    if tool == "train":
        code = train.main(argv)
        printed = capsys.readouterr()
        written = sorted(p.name for p in (folder / "run").glob("*"))
        # a run's lines hold clocks: the dry run's printed config, the run's files
        return code, (written, printed.out.replace(str(folder), "{out}") if "--dry-run" in argv else ""), \
            printed.err
    monkeypatch.setenv("FASTDCGAN_CACHE", str(folder / "cache"))
    code = prepare.main(argv)
    return code, {p.parent.name: p.read_bytes() for p in (folder / "cache").rglob("images.npy")}, \
        capsys.readouterr().err


def test_every_flag_has_a_probe():
    listed = {(tool, flag) for tool, build in PARSERS.items() for flag in flags(build)}
    assert sorted(listed - PROBES.keys() - EXEMPT.keys()) == [], "flags without a probe"
    assert sorted((PROBES.keys() | EXEMPT.keys()) - listed) == [], "probes of flags no parser has"


@pytest.mark.parametrize("tool, flag", sorted(PROBES), ids=lambda x: x.replace(" ", "-"))
def test_the_flag_governs_what_it_names(tool, flag, places, tmp_path, monkeypatch, capsys):
    probe = PROBES[(tool, flag)]
    if probe.refused == NO_CUDA and torch.cuda.is_available():
        pytest.skip("this probe reads a refusal of CUDA, which a machine with CUDA does not give")
    code, base, err = outcome(tool, probe.base, places, tmp_path / "base", monkeypatch, capsys)
    assert code == 0 and base, f"the base command failed or gave nothing: {code} {err}"
    again = outcome(tool, probe.base, places, tmp_path / "again", monkeypatch, capsys)
    again = again[:2]
    assert again == (code, base), "the base command is not deterministic: this probe could not see a change"
    changed_code, changed, err = outcome(tool, probe.changed, places, tmp_path / "changed", monkeypatch,
                                         capsys)
    if probe.refused:
        assert changed_code == 2 and probe.refused in err, (changed_code, err)
    else:
        assert changed_code == 0, f"the changed command failed ({changed_code}): {err}"
        assert changed != base, f"{tool} {flag}: nothing the user gets changed"


# The forms --checkpoint takes (README), each holding the same generator: the run of 3 steps ends with
# its step-3 checkpoint, generator.pth and (from it) the export.
FORMS = {"run directory": "{run}", "checkpoint": "{run}/checkpoints/step_00000003.pt",
         "generator.pth": "{run}/generator.pth", "export": "{exported}"}
# forget and features read the layers (an export is one traced graph); export refuses to export an export
NO_EXPORT = {"generate forget", "generate features", "generate export"}


def drawn_by(exported: Path) -> torch.Tensor:
    """The images an exported file draws (its bytes also name the file it came from)."""
    return load_generator(exported)(torch.randn(4, 16, 1, 1, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("tool", [t for t in PARSERS if "--checkpoint" in flags(PARSERS[t])],
                         ids=lambda t: t.replace(" ", "-"))
def test_every_form_of_a_checkpoint_gives_the_same_output(tool, places, tmp_path, monkeypatch, capsys):
    """A tool that read one form of --checkpoint otherwise (another network of it, another step, its EMA)
    would give other output from the same generator. fid is given --data: a generator.pth or an export
    holds no config to find it."""
    base = PROBES[(tool, "--checkpoint")].base + (" --data {celeba}" if tool == "fid" else "")
    assert base.startswith("--checkpoint {run} ")
    got = {}
    for form, where in FORMS.items():
        if form == "export" and tool in NO_EXPORT:
            continue
        code, out, err = outcome(tool, base.replace("{run}", where, 1), places, tmp_path / form.split()[0],
                                 monkeypatch, capsys)
        assert code == 0, f"{tool} --checkpoint {form}: exit {code}: {err}"
        if tool == "fid":
            got[form] = [r["fid"] for r in out]  # the record's step: what the form holds
        elif tool == "generate export":
            got[form] = drawn_by(tmp_path / form.split()[0] / "g.pt")
        else:
            got[form] = out
    first = next(iter(got.values()))
    assert len(first), "nothing to compare"
    same = {form: torch.equal(v, first) if isinstance(v, torch.Tensor) else v == first
            for form, v in got.items()}
    assert all(same.values()), same


# A value out of a flag's range is refused with exit code 2, before any work, and the error's last line
# names what to mend; never accepted and used (a negative process count), never a traceback. The
# command, with the value that must be refused, and what the message must contain.
REFUSED = {
    ("prepare", "--threads"): (PREPARE.replace("--threads 1", "--threads -1"),
                               "--threads must be at least 0"),
    ("fid", "--n"): (f"{run(FID)} --n 1", "--n must be at least 2"),
    ("fid", "--batch"): (f"{run(FID)} --batch 0", "--batch at least 1"),
    ("generate grid", "--n"): (f"{run(GRID)} --n 0", "--n must be at least 1"),
    ("generate grid", "--truncation"): (f"{run(GRID)} --truncation -1", "--truncation"),
    ("generate interpolate", "--frames"): (f"{run(WALK)} --frames 0", "--frames"),
    ("generate interpolate", "--seeds"): (f"{run(WALK)} --seeds 1", "at least two seeds"),
    ("generate arithmetic", "--n"): (f"{run(ARITH)} --n 0", "--n"),
    ("generate forget", "--k"): (f"{run(FORGET)} --k 0", "--k"),
    ("generate forget", "--box"): (f"{run(FORGET)} --box 0.6,0.6,0.2,0.2", "bad box"),
    ("generate forget", "--layer"): (f"{run(FORGET)} --layer 9", "layer 9 does not exist"),
    ("generate features", "--tile"): (f"{run(FEATURES)} --tile 0", "--tile"),
    ("generate features", "--layer"): (f"{run(FEATURES)} --layer 9", "layer 9 does not exist"),
    ("generate grid", "--nrow"): (f"{run(GRID)} --nrow -2", "--nrow"),
    ("generate interpolate", "--fps"): (f"{run(WALK)} --fps 0", "--fps"),
    ("generate arithmetic", "--noise"): (f"{run(ARITH)} --noise -0.5", "--noise"),
    ("prepare", "--image-size"): (PREPARE.replace("--image-size 32", "--image-size 33"), "--image-size"),
    **{(tool, "--truncation"): (f"{run(base)} --truncation 0", "--truncation")
       for tool, base in (("generate interpolate", WALK), ("generate arithmetic", ARITH),
                          ("generate forget", FORGET), ("generate features", FEATURES))},
}
# Numbers any value of which is meaningful.
ANY_VALUE = {("generate grid", "--seed"): "a seed: every integer names a draw",
             ("generate arithmetic", "--noise-seed"): "a seed: every integer names a draw",
             ("fid", "--seed"): "a seed: every integer names a draw"}
NUMBER_TYPES = ("int", "float", "positive_int", "positive_float", "non_negative_int", "non_negative_float")


def test_every_numeric_flag_is_refused_out_of_range_or_takes_any_value():
    """A number flag added later is either checked here with a value it must refuse, or said to take any
    value: never a count of -2 that ends in a traceback, or a scale of -1 used as given."""
    numeric = {(tool, a.option_strings[0]) for tool, build in PARSERS.items() for a in build()._actions
               if getattr(a.type, "__name__", "") in NUMBER_TYPES}
    assert sorted(numeric - REFUSED.keys() - ANY_VALUE.keys()) == []
    assert not REFUSED.keys() & ANY_VALUE.keys()


@pytest.mark.parametrize("tool, flag", sorted(REFUSED), ids=lambda x: x.replace(" ", "-"))
def test_a_value_out_of_range_is_refused_with_exit_2(tool, flag, places, tmp_path, monkeypatch, capsys):
    args, says = REFUSED[(tool, flag)]
    try:
        code, made, err = outcome(tool, args, places, tmp_path / "out", monkeypatch, capsys)
    except SystemExit as e:  # fid's and prepare's argparse
        code, made, err = e.code, None, capsys.readouterr().err
    assert code == 2 and not made, (code, err)
    assert "Traceback" not in err and says in err.strip().splitlines()[-1], err


def takes_a_float(action) -> bool:
    """Whether the flag's type gives a float (found by what it gives, not by its name)."""
    try:
        return callable(action.type) and isinstance(action.type("1.5"), float)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False


FLOAT_FLAGS = sorted((tool, a.option_strings[0]) for tool, build in PARSERS.items() for a in build()._actions
                     if a.option_strings and takes_a_float(a))


@pytest.mark.parametrize("tool, flag", FLOAT_FLAGS, ids=lambda x: x.replace(" ", "-"))
def test_every_float_flag_refuses_nan_and_inf(tool, flag, places, tmp_path, monkeypatch, capsys):
    """NaN passes a range check written as `value < low` (every comparison with it is false), and no
    flag means anything at infinity: `--truncation nan` drew NaN images. Every float flag, later ones
    too, on the command its out-of-range check uses."""
    assert len(FLOAT_FLAGS) >= 6 and (tool, flag) in REFUSED, "give it a value to refuse in REFUSED"
    args = REFUSED[(tool, flag)][0]
    assert args.split()[-2] == flag, args
    for text in ("nan", "inf"):
        try:
            code, made, err = outcome(tool, f"{args.rsplit(' ', 1)[0]} {text}", places, tmp_path / text,
                                      monkeypatch, capsys)
        except SystemExit as e:
            code, made, err = e.code, None, capsys.readouterr().err
        assert code == 2 and not made, (text, code, err)
        assert "Traceback" not in err and flag in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("order", ["before", "after", "around", "between"])
def test_trains_overrides_may_come_anywhere_among_its_flags(order, tmp_path, capsys):
    """python -m fastdcgan.train's settings (section.key=value) before, after, around and between its flags,
    as its help says ("overrides may come before or after --config"): each one reaches the run, over the
    TOML file's. A parser that takes them only in one block refuses the rest as unrecognized (exit 2)."""
    toml = write_toml(tmp_path / "c.toml")  # train.seed = 7
    a, b, c = "model.ngf=4", "model.ndf=5", "train.seed=9"
    argv = {"before": [a, b, c, "--config", str(toml), "--dry-run"],
            "after": ["--config", str(toml), "--dry-run", a, b, c],
            "around": [a, "--config", str(toml), b, "--dry-run", c],
            "between": ["--dry-run", a, b, "--config", str(toml), c]}[order]
    assert train_main(argv) == 0
    settings = tomllib.loads(capsys.readouterr().out)
    assert (settings["model"]["ngf"], settings["model"]["ndf"], settings["train"]["seed"]) == (4, 5, 9)
