"""The config's rules one by one, as a user meets them: every refused value names its key and the rule,
every accepted spelling is accepted, and a config written out reads back as the same config."""
import pytest

from fastdcgan import config
from fastdcgan.config import UsageError


def test_a_wrongly_typed_value_in_a_file_names_the_file_once_and_the_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[train]\nepochs = 1.5\n")
    with pytest.raises(UsageError) as e:
        config.build(str(f))
    assert str(e.value) == f"{f}: bad value for train.epochs: 1.5 (expected int)"


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("yes", True), ("on", True),
                                         ("TRUE", True), ("Yes", True), ("false", False), ("0", False),
                                         ("no", False), ("off", False), ("OFF", False)])
def test_every_spelling_of_a_switch_is_accepted(text, value):
    assert config.build(None, [f"data.hflip={text}"]).data.hflip is value


@pytest.mark.parametrize("override, message", [
    ("train.epochs=lots", "bad value for train.epochs: 'lots' (expected int)"),
    ("optim.lr_g=fast", "bad value for optim.lr_g: 'fast' (expected float)"),
    ("data.hflip=maybe", "bad value for data.hflip: 'maybe' (expected true or false)"),
    ("data.backend=gpu", "bad value for data.backend: 'gpu' (choose from auto, cache, dali, nvjpeg, torch)"),
    ("data.augment=color,flip", "bad value for data.augment: 'color,flip' (a comma list of color, "
                                "translation, cutout, or empty)"),
])
def test_a_bad_value_says_what_the_key_takes(override, message):
    with pytest.raises(UsageError) as e:
        config.build(None, [override])
    assert str(e.value) == message


# (overrides, None if accepted, else words the one-line refusal must contain)
RULES = [
    (["fid.n=2"], None),                                  # a covariance needs two samples, and two suffice
    (["fid.n=1"], ["fid.n", "at least 2"]),
    (["model.ema=0.999"], None),
    (["model.ema=1"], ["model.ema", "[0, 1)"]),           # a decay of 1 never moves the average
    (["optim.beta2=1"], ["optim.beta2", "[0, 1)"]),
    (["model.d_dropout=1"], ["model.d_dropout", "[0, 1)"]),
    (["train.real_label=1"], None),
    (["train.real_label=0.9"], None),
    (["train.real_label=0"], ["train.real_label", "(0, 1]"]),
    (["train.real_label=1.5"], ["train.real_label", "(0, 1]"]),
    (["cuda_graphs=true", "precision=bf16"], None),
    (["cuda_graphs=true", "precision=fp16"], ["cuda_graphs=true", "precision=fp16", "use precision=bf16"]),
    (["train.loss=lsgan", "train.real_label=0.9"], None),
    (["train.loss=wgan-gp", "train.real_label=0.9"], ["train.real_label", "train.loss=wgan-gp"]),
    (["train.loss=hinge", "train.real_label=0.9"], ["train.real_label", "train.loss=hinge"]),
    (["model.sync_bn=true"], None),
    (["train.r1_gamma=1"], None),
    (["train.r1_gamma=1", "model.sync_bn=true"],
     ["train.r1_gamma", "model.sync_bn=true", "second derivative"]),
    (["train.loss=wgan-gp", "model.sync_bn=true"],
     ["model.sync_bn=true", "train.loss=wgan-gp", "no BatchNorm"]),
    (["data.augment=translation,color"], None),
    (["data.augment= cutout , color "], None),
    (["fid.target=20", "fid.every=1"], None),
    (["fid.target=20"], ["fid.target=20", "fid.every > 0"]),
]


@pytest.mark.parametrize("overrides, words", RULES, ids=[" ".join(o) for o, _ in RULES])
def test_each_rule_refuses_exactly_its_side_of_the_boundary(overrides, words):
    if words is None:
        config.build(None, overrides)
        return
    with pytest.raises(UsageError) as e:
        config.build(None, overrides)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_an_override_value_may_contain_equals_signs():
    assert config.build(None, ["train.run_dir=runs/lr=2e-4,b=64"]).train.run_dir == "runs/lr=2e-4,b=64"


def nondefault() -> config.Config:
    """A config with a changed value of every kind: switches both ways, text that TOML must escape."""
    return config.build(None, ["precision=bf16", "channels_last=false", "data.hflip=true",
                               "model.ema_warmup=false", r'data.root=C:\data\celeba "aligned"',
                               "optim.lr_d=0.0003", "train.epochs=7", "data.augment=color,cutout"])


def test_a_written_config_reads_back_as_the_same_config(tmp_path):
    cfg = nondefault()
    f = tmp_path / "config.toml"
    f.write_text(config.to_toml(cfg))
    assert config.to_dict(config.build(str(f))) == config.to_dict(cfg)


def test_a_stored_config_from_an_older_version_restores_what_it_has_and_defaults_the_rest():
    """A checkpoint keeps to_dict's output; keys added since get their defaults, keys since removed are
    ignored."""
    stored = config.to_dict(nondefault())
    del stored["model"]["ema_warmup"], stored["fid"]
    stored["train"]["retired_key"] = 3
    cfg = config.from_dict(stored)
    assert cfg.precision == "bf16" and cfg.channels_last is False and cfg.train.epochs == 7
    assert cfg.data.root == r'C:\data\celeba "aligned"' and cfg.optim.lr_d == 0.0003
    assert cfg.model.ema_warmup is True and cfg.fid.n == config.Fid().n


def test_diff_skips_keys_the_old_config_did_not_have():
    old, new = config.to_dict(config.build()), config.to_dict(nondefault())
    del old["precision"], old["data"]["hflip"]
    changed = config.diff(old, new)
    assert "train.epochs: 25 -> 7" in changed and "channels_last: True -> False" in changed
    assert not any(line.startswith(("precision", "data.hflip")) for line in changed)


def test_help_gives_each_key_its_default_and_its_choices_on_one_line():
    text = config.help_text()
    header, *rows = text.splitlines()
    keys = [k for k, _, _ in config.iter_keys(config.Config())]
    assert len(rows) == len(keys) and [r.split()[0] for r in rows] == keys
    by_key = {r.split()[0]: r for r in rows}
    assert by_key["data.backend"].split()[1] == '"auto"'
    assert by_key["data.backend"].endswith("[auto|cache|dali|nvjpeg|torch]")
    assert by_key["channels_last"].split()[1] == "true" and by_key["cuda_graphs"].split()[1] == "false"
    assert (by_key["train.epochs"].split()[1] == "25"
            and by_key["train.epochs"].endswith("passes over the dataset"))


def test_a_file_that_is_not_toml_is_named_with_the_parsers_reason(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("[train\nepochs = 3\n")
    with pytest.raises(UsageError) as e:
        config.build(str(f))
    assert str(e.value).startswith(f"{f}: not valid TOML: ") and "line 1" in str(e.value)


def test_every_setting_is_declared_with_opt_so_its_choices_and_bounds_are_checked():
    for key, _, f in config.iter_keys(config.Config()):
        assert {"help", "choices", "bounds"} <= set(f.metadata), f"{key}: declare it with opt()"


FLOATS = [key for key, obj, f in config.iter_keys(config.Config()) if isinstance(getattr(obj, f.name), float)]


@pytest.mark.parametrize("key", FLOATS)
def test_every_number_setting_refuses_nan_and_the_infinities_from_a_file_or_an_override(key, tmp_path):
    """No bound holds NaN out by itself (every comparison with it is false), and no setting means
    anything at infinity: a learning rate of inf trains NaN, a timeout of inf fails once the run has
    started. Every float setting, the ones added later too, from the command line and from TOML (which
    has nan and inf literals)."""
    assert len(FLOATS) >= 10
    section, name = key.rsplit(".", 1) if "." in key else ("", key)
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(UsageError) as e:
            config.build(None, [f"{key}={text}"])
        assert str(e.value).startswith(f"bad value for {key}: {text}"), str(e.value)
        toml = tmp_path / "c.toml"
        toml.write_text(f"[{section}]\n{name} = {text}\n" if section else f"{name} = {text}\n")
        with pytest.raises(UsageError) as e:
            config.build(str(toml))
        assert f"bad value for {key}: {text}" in str(e.value), str(e.value)


@pytest.mark.parametrize("value, bounds, broken", [
    (1, {"at_least": 1}, None),
    (0, {"at_least": 1}, "must be at least 1"),
    (1e-9, {"above": 0}, None),
    (0, {"above": 0}, "must be positive"),
    (0.5, {"above": 0.5}, "must be above 0.5"),
    (0.6, {"above": 0.5}, None),
    (0, {"at_least": 0, "below": 1}, None),
    (1, {"at_least": 0, "below": 1}, "must be in [0, 1)"),
    (-0.5, {"at_least": 0, "below": 1}, "must be in [0, 1)"),
    (1, {"above": 0, "at_most": 1}, None),
    (0, {"above": 0, "at_most": 1}, "must be in (0, 1]"),
    (1.5, {"above": 0, "at_most": 1}, "must be in (0, 1]"),
    (-7, {}, None),
])
def test_bounds_refuse_exactly_the_values_outside_and_say_which_way(value, bounds, broken):
    assert config._out_of_bounds(value, bounds) == broken


# The rules between settings, each refusal word for word: one line a user can act on.
CROSS_RULES = [
    (["train.loss=hinge", "train.real_label=0.9"],
     "train.real_label applies to train.loss=bce|lsgan only, not train.loss=hinge"),
    (["train.loss=wgan-gp", "model.sync_bn=true"],
     "model.sync_bn=true does not go with train.loss=wgan-gp: its critic has no BatchNorm (layer norm per "
     "image)"),
    (["train.r1_gamma=1", "model.sync_bn=true"],
     "train.r1_gamma > 0 does not work with model.sync_bn=true: R1 differentiates D's input gradient, and "
     "torch's SyncBatchNorm has no second derivative"),
    (["cuda_graphs=true", "precision=fp16"],
     "cuda_graphs=true does not work with precision=fp16: its GradScaler checks for overflow on the host "
     "every step; use precision=bf16"),
    (["fid.target=20"],
     "fid.target=20 needs fid.every > 0: with fid.every=0 no FID is scored during training"),
]


@pytest.mark.parametrize("overrides, message", CROSS_RULES, ids=[" ".join(o) for o, _ in CROSS_RULES])
def test_each_rule_between_settings_says_what_clashes(overrides, message):
    with pytest.raises(UsageError) as e:
        config.build(None, overrides)
    assert str(e.value) == message


@pytest.mark.parametrize("graphs, device, world, refused", [
    (True, "cuda", 2, True), (True, "cuda", 1, False), (True, "cpu", 2, False), (False, "cuda", 2, False),
])
def test_cuda_graphs_are_refused_only_for_several_processes_on_cuda(graphs, device, world, refused):
    """On CPU cuda_graphs is ignored (the help says so), so only CUDA with several processes is refused."""
    cfg = config.build(None, [f"cuda_graphs={str(graphs).lower()}"])
    if not refused:
        config.check_launch(cfg, world, device)
        return
    with pytest.raises(UsageError) as e:
        config.check_launch(cfg, world, device)
    assert str(e.value) == "cuda_graphs=true works in one process only; with several use compile=default"


# (overrides, processes, the note, or None where the setting acts), on the torch backend; each noted is one
# setting on one process, which test_train.py runs to see it change nothing
INERT = [
    ([], 1, None),
    (["data.prefetch=4"], 1, "data.prefetch=4 does nothing: the torch backend decodes no batches ahead"),
    (["fid.n=64"], 1, "fid.n=64 does nothing: fid.every=0 (no FID during training; python -m fastdcgan.fid "
                      "takes --n)"),
    (["fid.n=64", "fid.every=10"], 1, None),
    (["train.gp_lambda=5"], 1, "train.gp_lambda=5 does nothing: train.loss=bce, not wgan-gp"),
    (["train.gp_lambda=5", "train.loss=wgan-gp"], 1, None),
    (["train.r1_every=4"], 1, "train.r1_every=4 does nothing: train.r1_gamma=0 (R1 off)"),
    (["train.r1_every=4", "train.r1_gamma=1"], 1, None),
    (["model.ema_warmup=false"], 1, "model.ema_warmup=false does nothing: model.ema=0 (no EMA)"),
    (["model.ema_warmup=false", "model.ema=0.9"], 1, None),
    (["model.sync_bn=true"], 1, "model.sync_bn=true does nothing in one process"),
    (["model.sync_bn=true"], 2, None),
    (["optim.scale_lr=true"], 1, "optim.scale_lr=true does nothing in one process"),
    (["optim.scale_lr=true"], 2, None),
]


@pytest.mark.parametrize("overrides, world, note", INERT, ids=[f"{' '.join(o)} x{w}" for o, w, _ in INERT])
def test_a_setting_that_does_nothing_beside_the_others_is_named_with_why(overrides, world, note):
    """A setting changed where another makes it do nothing gets a note (the trainer prints it), and only
    there: it is then not silently ignored. test_train.py checks that each noted one changes nothing."""
    assert config.inert(config.build(None, overrides), world, "torch") == ([note] if note else [])
    assert not note or (len(overrides), world) == (1, 1)  # what test_train.py runs


def test_data_prefetch_is_noted_on_the_backends_that_do_not_read_ahead_only():
    cfg = config.build(None, ["data.prefetch=4"])
    assert [b for b in ("torch", "cache", "dali", "nvjpeg") if config.inert(cfg, 1, b)] == ["torch", "cache"]
