"""Settings reach the step the trainer builds: each test builds a Run as `python -m fastdcgan.train`
does (config.build + Run), trains one step and looks at what the step did, not at the config."""
import pytest
import torch
import torch.nn.functional as F

from conftest import make_celeba, tiny_args
from fastdcgan import config
from fastdcgan.train import Run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_celeba(tmp_path_factory.mktemp("settings") / "celeba", 16)


@pytest.fixture
def make_run(data, tmp_path):
    def make(**overrides) -> Run:
        return Run(config.build(None, tiny_args(data, tmp_path / "run", **overrides)))
    return make


def a_batch(seed=0):
    return torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def d_outputs(run: Run) -> list[torch.Tensor]:
    """Every D output of the next steps, in call order: real, detached fake, then the G phase's."""
    outputs = []
    run.D.register_forward_hook(lambda m, args, out: outputs.append(out.detach().float()))
    return outputs


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target)).item()


def test_real_label_is_ds_target_for_reals_and_not_gs_target(make_run):
    run = make_run(train__real_label=0.8)
    outs = d_outputs(run)
    run.gan.step(a_batch())
    real, fake, g_phase = outs
    m = run.gan.read()
    assert m["loss_d"] == pytest.approx(bce(real, 0.8) + bce(fake, 0.0), rel=1e-5)
    assert m["loss_d"] != pytest.approx(bce(real, 1.0) + bce(fake, 0.0), rel=1e-3)  # 0.8 tells apart
    assert m["loss_g"] == pytest.approx(bce(g_phase, 1.0), rel=1e-5)  # smoothing is one-sided


@pytest.mark.parametrize("d_steps,g_steps", [(1, 1), (3, 2)])
def test_d_steps_and_g_steps_are_the_optimizer_updates_per_step(make_run, d_steps, g_steps):
    run = make_run(train__d_steps=d_steps, train__g_steps=g_steps)
    run.gan.step(a_batch())
    assert {int(s["step"]) for s in run.opt_d.state.values()} == {d_steps}
    assert {int(s["step"]) for s in run.opt_g.state.values()} == {g_steps}


def test_each_network_moves_at_its_own_learning_rate(make_run):
    """Adam's first update moves each weight by lr * g / (|g| + eps): the largest move is the lr."""
    run = make_run(optim__lr_g=1e-4, optim__lr_d=3e-4)
    g0 = [p.detach().clone() for p in run.G.parameters()]
    d0 = [p.detach().clone() for p in run.D.parameters()]
    run.gan.step(a_batch())
    g_move = max((p - q).abs().max().item() for p, q in zip(run.G.parameters(), g0, strict=True))
    d_move = max((p - q).abs().max().item() for p, q in zip(run.D.parameters(), d0, strict=True))
    assert g_move == pytest.approx(1e-4, rel=1e-3)
    assert d_move == pytest.approx(3e-4, rel=1e-3)


@pytest.mark.parametrize("on", [True, False])
def test_channels_last_sets_the_memory_format_of_weights_and_activations(make_run, on):
    run = make_run(channels_last=on)
    inputs = []
    run.D.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    run.gan.step(a_batch())
    fmt = torch.channels_last if on else torch.contiguous_format
    convs = [p for p in [*run.G.parameters(), *run.D.parameters()] if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=fmt) for p in convs)
    # the reals and G's fakes as D sees them (the formats differ for these shapes: C > 1, H, W > 1)
    assert len(inputs) == 3 and all(x.is_contiguous(memory_format=fmt) for x in inputs)


def test_d_gets_no_weight_gradient_in_the_g_phase(make_run):
    """After D's optimizer step, nothing accumulates into D's .grad (the G phase runs D frozen)."""
    run = make_run()
    phase, accumulated = ["D"], []
    run.opt_d.register_step_post_hook(lambda *a: phase.__setitem__(0, "G"))
    for p in run.D.parameters():
        p.register_post_accumulate_grad_hook(lambda p: accumulated.append(phase[0]))
    run.gan.step(a_batch())
    assert phase == ["G"] and "D" in accumulated
    assert "G" not in accumulated
    assert all(p.requires_grad for p in run.D.parameters())  # and D trains again next step


@pytest.mark.parametrize("g_steps", [1, 2])
def test_the_g_phase_reuses_the_d_phases_fakes(make_run, g_steps):
    """One G forward per G update: the first G update trains on the D phase's fakes, as the
    reference does; each further update draws new noise."""
    run = make_run(train__g_steps=g_steps)
    fakes, seen_by_d = [], []
    run.G.register_forward_hook(lambda m, args, out: fakes.append(out))
    run.D.register_forward_pre_hook(lambda m, args: seen_by_d.append(args[0]))
    run.gan.step(a_batch())
    assert len(fakes) == g_steps
    # D's inputs: real, fake.detach(), then the G phase's fakes: the first is the D phase's tensor
    assert torch.equal(seen_by_d[1], fakes[0]) and torch.equal(seen_by_d[2], fakes[0])
