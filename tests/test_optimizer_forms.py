"""Each step mode builds the Adam form make_optimizers' docstring gives it, on CPU, for every mode a CPU
run can take: fp16 the fused kernel; compile (or graphs) a tensor learning rate, single-tensor on
CPU, so that a changed learning rate never recompiles the compiled optimizer step; eager a float lr.

test_fast_step.py's resume_across_modes tests compare a resumed optimizer with a fresh one of the
same mode, so a mode that built the wrong form fresh passed them (both were alike).
"""
from __future__ import annotations

import pytest
import torch

from fastdcgan.model import build_models
from fastdcgan.step import make_optimizers

# (compiled, graphs, amp_dtype) -> (lr is a tensor, the flags that must be set)
FORMS = {
    "eager": ((False, False, None), (False, {})),
    "eager bf16": ((False, False, torch.bfloat16), (False, {})),
    "compile": ((True, False, None), (True, {"foreach": False})),
    "compile bf16": ((True, False, torch.bfloat16), (True, {"foreach": False})),
    "graphs": ((False, True, None), (True, {"foreach": False})),
    "fp16": ((False, False, torch.float16), (False, {"fused": True})),
    "compile fp16": ((True, False, torch.float16), (False, {"fused": True})),
}


@pytest.mark.parametrize("mode", FORMS)
def test_each_mode_builds_its_adam_form(mode):
    (compiled, graphs, amp), (tensor_lr, flags) = FORMS[mode]
    G, D = build_models(16, 8, 8, 32)
    for opt, lr in zip(make_optimizers(G, D, 2e-4, 1e-4, (0.5, 0.999), compiled=compiled, graphs=graphs,
                                       amp_dtype=amp), (2e-4, 1e-4), strict=True):
        for group in opt.param_groups:
            assert isinstance(group["lr"], torch.Tensor) == tensor_lr, (mode, group["lr"])
            assert float(group["lr"]) == pytest.approx(lr)
            assert group["betas"] == (0.5, 0.999)
            for key, value in flags.items():
                assert group[key] == value, (mode, key, group[key])
            if not tensor_lr and "fused" not in flags:
                assert not group.get("fused") and not group.get("capturable"), (mode, group)


@pytest.mark.parametrize("setting", ["off", "auto", "default"])
def test_the_trainer_builds_the_form_of_the_mode_it_resolved(celeba, tmp_path, setting):
    """compile=auto is off on CPU: the run's Adam is then the eager one, as compile=off builds it."""
    from conftest import tiny_args
    from fastdcgan import config
    from fastdcgan.train import Run
    run = Run(config.build(None, tiny_args(celeba, tmp_path / "run", compile=setting)))
    compiled = run.state.compile != "off"
    assert compiled == (setting == "default")
    for opt in (run.opt_g, run.opt_d):
        for group in opt.param_groups:
            assert isinstance(group["lr"], torch.Tensor) == compiled, (setting, group["lr"])
            assert group["foreach"] is (False if compiled else None), (setting, group["foreach"])
