from pathlib import Path

import pytest

from fastdcgan import config
from fastdcgan.config import UsageError
from fastdcgan.train import main


def test_defaults_are_the_papers():
    c = config.build()
    assert (c.train.batch_size, c.model.nz, c.model.ngf, c.model.ndf) == (128, 100, 64, 64)
    assert (c.optim.lr_g, c.optim.lr_d, c.optim.beta1, c.optim.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    assert c.data.image_size == 64 and c.train.real_label == 1.0 and c.model.d_dropout == 0.0


def test_overrides_are_typed():
    c = config.build(None, ["train.epochs=5", "optim.lr_d=1e-3", "channels_last=false", "data.root=/x",
                            "precision=fp32"])
    assert c.train.epochs == 5 and c.optim.lr_d == 1e-3 and c.channels_last is False
    assert c.data.root == "/x" and c.precision == "fp32"


def test_toml_file_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('device = "cpu"\n[train]\nepochs = 3\nbatch_size = 16\n[optim]\nlr_g = 1\n')
    c = config.build(str(f), ["train.epochs=7"])
    assert c.train.epochs == 7 and c.train.batch_size == 16 and c.device == "cpu"
    assert c.optim.lr_g == 1.0 and isinstance(c.optim.lr_g, float)


@pytest.mark.parametrize("override, words", [
    (["train.nope=1"], "unknown config key 'train.nope'"),
    (["train.epochs=lots"], "train.epochs"),
    (["data.image_size=48"], "data.image_size"),
    (["precision=fp8"], "precision"),
    (["channels_last=maybe"], "channels_last"),
    (["train.batch_size=0"], "train.batch_size"),
    (["optim.beta1=1.5"], "optim.beta1"),
    (["noequals"], "noequals"),
])
def test_bad_input_raises_naming_the_key(override, words):
    with pytest.raises(UsageError, match=words.replace(".", r"\.")):
        config.build(None, override)


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[model]\nwidth = 3\n")
    with pytest.raises(UsageError, match=r"bad\.toml.*model\.width"):
        config.build(str(f))
    f.write_text("[model]\nngf = 'wide'\n")
    with pytest.raises(UsageError, match=r"bad\.toml.*model\.ngf"):
        config.build(str(f))


def test_cli_exits_2_with_one_line(capsys):
    assert main(["train.epochs=x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochs" in err[0]
    assert main(["--config", "/no/such.toml"]) == 2
    assert "/no/such.toml" in capsys.readouterr().err


def test_dry_run_prints_a_config_that_round_trips(tmp_path, capsys):
    assert main(["--dry-run", "train.epochs=9", 'data.root=/a "quoted" path']) == 0
    text = capsys.readouterr().out
    f = tmp_path / "resolved.toml"
    f.write_text(text)
    c = config.build(str(f))
    assert c.train.epochs == 9 and c.data.root == '/a "quoted" path'
    assert config.to_dict(c) == config.to_dict(config.from_dict(config.to_dict(c)))


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, _, _ in config.iter_keys(config.Config()):
        assert key in out
    assert "PER PROCESS" in out


def test_diff_names_changed_keys():
    a = config.to_dict(config.build())
    b = config.to_dict(config.build(None, ["train.epochs=3"]))
    assert config.diff(a, b) == ["train.epochs: 25 -> 3"]


@pytest.mark.parametrize("name", sorted(p.name
                                        for p in (Path(__file__).parent.parent / "configs").glob("*.toml")))
def test_every_shipped_config_builds(name):
    """A config in configs/ with a key the code no longer has would fail its first user."""
    from fastdcgan import config as settings
    cfg = settings.build(str(Path(__file__).parent.parent / "configs" / name), [])
    assert cfg.train.run_dir.startswith("runs/")
