"""Every setting of the step holds on every path the step can take, by construction: each probe of
tests/test_every_setting.py whose runs take one step is checked again with a mode on in both of its
runs (another loss, two D updates a step, R1, the EMA, augmentation, mirroring, dropout, bf16, the
contiguous layout, the decoded cache; not fp16, whose first steps the loss scaler skips while it finds
its scale). A setting that acts on one path and is silently dropped on
another (real_label under lsgan, the augmentation inside a penalty, dropout of a LayerNorm critic)
fails here with the pair's name. A pair the config refuses is listed in REFUSED with its refusal, and
must be refused so; a pair whose probe cannot be read on that path is listed in NOT_READ with why.
"""
import pytest

from fastdcgan.config import UsageError
from test_every_setting import PROBES, launch, places  # noqa: F401 (places: its fixture, here too)

MODES = {
    "lsgan": {"train.loss": "lsgan"}, "hinge": {"train.loss": "hinge"}, "wgan-gp": {"train.loss": "wgan-gp"},
    "d_steps=2": {"train.d_steps": 2}, "r1": {"train.r1_gamma": 1.0}, "ema": {"model.ema": 0.9},
    "augment": {"data.augment": "color,translation"}, "hflip": {"data.hflip": True},
    "dropout": {"model.d_dropout": 0.2}, "bf16": {"precision": "bf16"},
    "contiguous": {"channels_last": False}, "cache": {"data.backend": "cache"},
}
# Probes whose observation reads one D update's calls by position, or solves for one update, on the
# paths that add D calls or updates (a second D update, R1's call, WGAN-GP's call on mixed images).
PENALTY = "reads the penalty as loss_d less the loss of one update's D outputs"
ONE_UPDATE = {
    "data.augment": (("d_steps=2", "wgan-gp"), "reads D's calls by position (reals, fakes, R1's reals, "
                                               "the G phase's fakes); WGAN-GP's are mixed images"),
    "train.real_label": (("d_steps=2", "r1"), "solves loss_d from one update's D outputs with no penalty"),
    "train.loss": (("d_steps=2", "r1"), "solves loss_d from one update's D outputs with no penalty"),
    "train.gp_lambda": (("d_steps=2", "r1"), PENALTY),
    "train.r1_gamma": (("d_steps=2", "wgan-gp"), PENALTY),
    "train.r1_every": (("d_steps=2", "wgan-gp"), PENALTY),
    "optim.beta1": (("d_steps=2",), "solves Adam's decay from the moments of one update"),
    "optim.beta2": (("d_steps=2",), "solves Adam's decay from the moments of one update"),
}
NOT_READ = {(key, mode): why for key, (modes, why) in ONE_UPDATE.items() for mode in modes}
# Translation's indexing gives channels_last strides whatever it is given, so under channels_last=false
# D computes on channels_last images. Left so: put back in D's layout, dropout draws its masks in
# another element order, and a run no longer matches one of the other layout (test_fast_step.py).
NOT_READ[("channels_last", "augment")] = "translation gives D channels_last images in either layout"
# Pairs the config refuses, each with what the one-line refusal says (test_config_rules.py's rules).
REFUSED = {("train.real_label", "hinge"): "train.real_label applies to train.loss=bce|lsgan only",
           ("train.real_label", "wgan-gp"): "train.real_label applies to train.loss=bce|lsgan only"}
CASES = [(key, mode) for key, probe in PROBES.items() if probe.stage == "step" for mode, on in MODES.items()
         if key not in on and not on.keys() & {**probe.base, **(probe.changed or {})}.keys()]


def test_the_modes_reach_most_settings_and_every_exception_is_a_case():
    assert len(CASES) >= 250
    assert not (NOT_READ.keys() | REFUSED.keys()) - set(CASES), "exceptions that are not cases"


@pytest.mark.parametrize("key, mode", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_the_setting_governs_what_it_names_in_every_mode(key, mode, request):
    request.getfixturevalue("places")  # the shared runs' folders and files
    if (key, mode) in NOT_READ:
        pytest.skip(NOT_READ[(key, mode)])
    probe, on = PROBES[key], MODES[mode]
    base = launch("step", {**on, **probe.base})
    changed = {**on, **(probe.changed or probe.base), key: probe.value}
    if (key, mode) in REFUSED:  # refused before any work, in one line
        with pytest.raises(UsageError, match=REFUSED[(key, mode)]):
            launch("step", changed)
        return
    changed = launch("step", changed)
    assert not base.error and not changed.error, base.error or changed.error
    probe.check(base, changed)
