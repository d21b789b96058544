"""compile=default|max-autotune reaches every network call and optimizer step of the GAN step, with
and without DDP: the step's D runs three times (real, detached fake, and the G phase's fake), and an
eager call among them costs the compiled run its speed while its numbers stay the same, so only the
modules the step calls can show it (test_fast_step.py compares numbers, which are alike either way).

No compilation happens here: torch.compile wraps lazily, and the wrappers are what is checked.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from fastdcgan.model import build_models
from fastdcgan.step import GANStep, StepOptions, make_optimizers


def build(compile: str, distributed: bool) -> GANStep:
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32)
    opt_g, opt_d = make_optimizers(G, D, 2e-4, 2e-4, (0.5, 0.999), compiled=compile != "off", graphs=False)
    return GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, compile=compile, distributed=distributed))


def wrapped(module) -> torch.nn.Module:
    """The plain network under a compile and/or DDP wrapper."""
    while isinstance(module, (OptimizedModule, DDP)):
        module = module._orig_mod if isinstance(module, OptimizedModule) else module.module
    return module


def check(gan: GANStep, compiled: bool, distributed: bool) -> None:
    calls = {"G": gan.run_G, "D (D phase)": gan.run_D, "D (G phase)": gan.frozen_D}
    for name, module in calls.items():
        assert isinstance(module, OptimizedModule) == compiled, (name, type(module))
        assert wrapped(module) is (gan.G if name == "G" else gan.D), name
    # the D phase's calls are DDP's (gradients averaged); the G phase's D is the plain one, frozen
    inner = [m._orig_mod if isinstance(m, OptimizedModule) else m for m in calls.values()]
    assert [isinstance(m, DDP) for m in inner] == [distributed, distributed, False]
    for opt in (gan.opt_g, gan.opt_d):  # no GradScaler here: the optimizer steps are compiled too
        assert (gan.opt_steps[opt] != opt.step) == compiled  # a bound method: equal, not identical


@pytest.mark.parametrize("compile", ["off", "default", "max-autotune"])
def test_compile_reaches_every_call_of_the_step(compile):
    check(build(compile, distributed=False), compile != "off", False)


@pytest.mark.parametrize("compile", ["off", "default"])
def test_compile_reaches_every_call_of_the_step_under_ddp(compile, one_process_group):
    check(build(compile, distributed=True), compile != "off", True)


@pytest.mark.parametrize("compile", ["default", "max-autotune"])
def test_every_compile_of_the_step_is_in_the_mode_the_setting_names(compile, monkeypatch):
    """max-autotune compiles each network and optimizer step in compile_mode's mode (its autotuning,
    without inductor's CUDA graphs), not the default one: numbers alike, only the call shows it."""
    from fastdcgan.step import compile_mode
    modes, real = [], torch.compile

    def recording_compile(fn, *args, **kw):
        modes.append(kw.get("mode"))
        return real(fn, *args, **kw)
    monkeypatch.setattr(torch, "compile", recording_compile)
    build(compile, distributed=False)
    assert modes == [compile_mode(compile)] * 4, modes  # G, D, and the two optimizer steps
