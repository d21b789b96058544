"""train.loss, WGAN-GP's gradient penalty, R1 and model.spectral_norm: values worked out by hand,
then each inside the step (eager, compiled, AMP, DDP) and through the trainer."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import REPO, HostReads, needs_cuda, tiny_args, weights
from fastdcgan import losses
from fastdcgan.model import Discriminator, build_models, d_norm_for
from fastdcgan.step import GANStep, StepOptions, make_optimizers
from fastdcgan.train import main

REAL, FAKE = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])  # D's outputs on two real, two fake images


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


@pytest.mark.parametrize("kind, d, g", [
    # bce: -log sigmoid(r) = softplus(-r), -log(1 - sigmoid(f)) = softplus(f); G: softplus(-f)
    ("bce", (softplus(-2) + softplus(1)) / 2 + (softplus(0.5) + softplus(-3)) / 2,
     (softplus(-0.5) + softplus(3)) / 2),
    # lsgan: 0.5 mean((r - 1)^2) + 0.5 mean(f^2) = 0.5 (1 + 4) / 2 + 0.5 (0.25 + 9) / 2;
    # G: 0.5 (0.25 + 16) / 2
    ("lsgan", 1.25 + 2.3125, 4.0625),
    # hinge: mean(relu(1 - r)) + mean(relu(1 + f)) = (0 + 2) / 2 + (1.5 + 0) / 2; G: -mean(f)
    ("hinge", 1.0 + 0.75, 1.25),
    # wgan: mean(f) - mean(r) = -1.25 - 0.5; G: -mean(f)
    ("wgan-gp", -1.75, 1.25),
])
def test_losses_for_known_outputs(kind, d, g):
    assert losses.d_loss(kind, REAL, FAKE).item() == pytest.approx(d, rel=1e-6)
    assert losses.g_loss(kind, FAKE).item() == pytest.approx(g, rel=1e-6)


def test_real_label_is_the_real_target_of_bce_and_lsgan():
    # bce with target t: t softplus(-r) + (1 - t) softplus(r)
    bce_real = sum(0.9 * softplus(-r) + 0.1 * softplus(r) for r in (2.0, -1.0)) / 2
    assert losses.d_loss("bce", REAL, FAKE, 0.9).item() == pytest.approx(
        bce_real + (softplus(0.5) + softplus(-3)) / 2, rel=1e-6)
    # lsgan: 0.5 mean((r - 0.9)^2) = 0.5 (1.1^2 + 1.9^2) / 2
    assert losses.d_loss("lsgan", REAL, FAKE, 0.9).item() == pytest.approx(1.205 + 2.3125, rel=1e-6)


def test_reported_outputs_and_histogram_values():
    assert torch.allclose(losses.reported("bce", REAL),
                          torch.tensor([1 / (1 + math.exp(-2)), 1 / (1 + math.e)]))
    for kind in ("lsgan", "hinge", "wgan-gp"):
        assert torch.equal(losses.reported(kind, REAL), REAL)
    assert torch.equal(losses.for_histogram("hinge", torch.tensor([-1.0, 0.0, 1.0])),
                       torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(losses.for_histogram("lsgan", REAL), REAL)


def linear_d(w):
    """D(x) = w . x: its gradient with respect to x is w for every image."""
    return lambda x: (x.flatten(1) * w).sum(1)


def test_gradient_penalty_and_r1_of_a_linear_d():
    w = torch.zeros(12)
    w[:2] = torch.tensor([3.0, 4.0])  # |w| = 5
    w.requires_grad_(True)
    real, fake = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    gp = losses.gradient_penalty(linear_d(w), real, fake)
    assert gp.item() == pytest.approx(16.0)  # (5 - 1)^2
    (grad,) = torch.autograd.grad(gp, w)  # the penalty trains D: 2 (|w| - 1) w / |w| = 1.6 w
    assert torch.allclose(grad[:2], torch.tensor([4.8, 6.4])) and not grad[2:].any()
    r1 = losses.r1_penalty(linear_d(w), real)
    assert r1.item() == pytest.approx(25.0)  # |w|^2
    (grad,) = torch.autograd.grad(r1, w)
    assert torch.allclose(grad[:2], torch.tensor([6.0, 8.0]))  # 2 w


def test_penalties_average_over_images():
    """D(x) = sum(x^2) has gradient 2x: |grad|^2 = 4 |x|^2, 48 for an image of twelve ones, 0 for zeros."""
    quadratic = lambda x: x.flatten(1).square().sum(1)  # noqa: E731
    ones = torch.ones(1, 3, 2, 2)
    assert losses.r1_penalty(quadratic, torch.cat([ones, 0 * ones])).item() == pytest.approx(24.0)
    # between two equal images every interpolate is that image: |grad| = 2 sqrt(12)
    assert losses.gradient_penalty(quadratic, ones, ones).item() == pytest.approx(
        (2 * math.sqrt(12) - 1) ** 2)


def test_gradient_penalty_is_taken_between_each_real_and_fake_image():
    seen = []

    def record(x):
        seen.append(x.detach())
        return x.flatten(1).sum(1)
    torch.manual_seed(0)
    losses.gradient_penalty(record, torch.ones(64, 3, 2, 2), torch.zeros(64, 3, 2, 2))
    eps = seen[0].flatten(1)  # eps * 1 + (1 - eps) * 0
    assert torch.equal(eps, eps[:, :1].expand_as(eps))  # one eps per image
    assert eps.min() >= 0 and eps.max() <= 1 and eps[:, 0].std() > 0.2  # uniform on [0, 1]


# The step with a linear D: what it reports and the gradient D's optimizer gets, by hand.

class LinearD(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(1)


def linear_gan(**kw):
    torch.manual_seed(0)
    G, _ = build_models(16, 8, 8, 32)
    w = torch.zeros(3 * 32 * 32)
    w[:2] = torch.tensor([1.2, 1.6])  # |w| = 2
    D = LinearD(w)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4) for m in (G, D))
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, **kw))
    calls, grads = [], []  # D's (input, output) per call; D's gradient per D update
    D.register_forward_hook(lambda m, args, out: calls.append((args[0].detach().flatten(1), out.detach())))
    D.w.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.clone()))
    return gan, D, calls, grads


def batch(seed=0):
    return torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_wgan_gp_step_minimises_the_critic_loss_plus_lambda_times_the_penalty():
    gan, D, calls, grads = linear_gan(loss="wgan-gp", gp_lambda=10.0)
    w = D.w.detach().clone()
    gan.step(batch())
    assert len(calls) == 4  # real, fake, the penalty's interpolates, the G phase's fake
    (x_real, out_real), (x_fake, out_fake) = calls[:2]
    m = gan.read()
    assert m["loss_d"] == pytest.approx((out_fake.mean() - out_real.mean()).item() + 10 * (2 - 1) ** 2,
                                        rel=1e-5)
    assert m["d_real"] == pytest.approx(out_real.mean().item(), rel=1e-5)  # the critic's raw mean
    # d/dw: mean(x_fake) - mean(x_real) + 10 * 2 (|w| - 1) w / |w| = ... + 10 w
    assert len(grads) == 1
    assert torch.allclose(grads[0], x_fake.mean(0) - x_real.mean(0) + 10 * w, atol=1e-5)


def test_lazy_r1_adds_every_times_gamma_over_2_of_the_penalty_on_due_steps():
    gan, D, calls, grads = linear_gan(r1_gamma=0.5, r1_every=2)
    for step, due in enumerate([True, False, True]):
        calls.clear()
        grads.clear()
        w = D.w.detach().clone()
        gan.step(batch(step))
        assert len(calls) == (4 if due else 3)
        (x_real, o_real), (x_fake, o_fake) = calls[:2]
        bce = (torch.log1p(torch.exp(-o_real)).mean() + torch.log1p(torch.exp(o_fake)).mean()).item()
        # 2 * 0.5 / 2 * |w|^2, and its gradient 2 * 0.5 / 2 * 2 w = 0.5 * 2 w
        penalty, penalty_grad = (2 * 0.5 / 2 * w.square().sum().item(), w) if due else (0.0, 0 * w)
        assert gan.read()["loss_d"] == pytest.approx(bce + penalty, rel=1e-5)
        p_real, p_fake = torch.sigmoid(o_real), torch.sigmoid(o_fake)
        bce_grad = ((p_real - 1)[:, None] * x_real).mean(0) + (p_fake[:, None] * x_fake).mean(0)
        assert torch.allclose(grads[0], bce_grad + penalty_grad, atol=1e-5)
    assert gan.state_dict()["steps"] == 3


def test_layer_norm_critic_scores_each_image_alone():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    critic = Discriminator(8, 32, norm="layer")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())
    assert torch.allclose(critic(x)[:1], critic(x[:1]), atol=1e-6)
    batch_norm = Discriminator(8, 32)
    assert not torch.allclose(batch_norm(x)[:1], batch_norm(x[:1]), atol=1e-3)
    assert (d_norm_for("wgan-gp") == "layer"
            and all(d_norm_for(k) == "batch" for k in ("bce", "lsgan", "hinge")))


def test_spectral_norm_brings_each_convs_largest_singular_value_to_1():
    torch.manual_seed(0)
    _, D = build_models(16, 8, 8, 32, spectral_norm=True)
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(hasattr(c, "parametrizations") for c in convs)
    with torch.no_grad():
        for c in convs:
            c.parametrizations.weight.original.mul_(50)  # sigma about 50 x what init gave
        for _ in range(30):  # one power iteration per forward in training mode
            D(torch.randn(2, 3, 32, 32))
    for c in convs:
        sigma = torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-2)
    # without it: the init's sigma (N(0, 0.02) weights), far from 1
    _, plain = build_models(16, 8, 8, 32)
    sigmas = [torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
              for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert max(sigmas) < 0.9


def test_spectral_norm_state_dict_round_trips():
    torch.manual_seed(0)
    _, D = build_models(16, 8, 8, 32, spectral_norm=True)
    D(torch.randn(2, 3, 32, 32))  # moves u, v from their start
    sd = D.state_dict()
    assert "main.0.parametrizations.weight.original" in sd and "main.0.parametrizations.weight.0._u" in sd
    torch.manual_seed(1)
    _, other = build_models(16, 8, 8, 32, spectral_norm=True)
    other.load_state_dict(sd)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(D.eval()(x), other.eval()(x))


# The step's variants with every new setting on.

EVERYTHING = dict(loss="wgan-gp", r1_gamma=1.0, r1_every=2, augment="translation,color,cutout")


def train_gan(steps=4, compile="off", amp=None, device="cpu", graphs=False, spectral_norm=True, **kw):
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32, d_norm=d_norm_for(kw.get("loss", "bce")), spectral_norm=spectral_norm)
    G.to(device, memory_format=torch.channels_last)
    D.to(device, memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(G, D, 2e-4, 2e-4, (0.5, 0.999), compiled=compile != "off", graphs=graphs,
                                   amp_dtype=amp)
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, channels_last=True, compile=compile, amp_dtype=amp,
                                                  cuda_graphs=graphs, **kw))
    rows = []
    for k in range(steps):
        torch.manual_seed(100 + k)
        gan.step(batch(k).to(device))
        rows.append(list(gan.read().values()))
    params = torch.cat([p.detach().float().flatten().cpu() for p in [*G.parameters(), *D.parameters()]])
    return torch.tensor(rows), params, gan


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_each_loss_trains_with_penalties_augmentation_and_spectral_norm(kind):
    rows, params, _ = train_gan(loss=kind, r1_gamma=1.0, r1_every=2, augment="translation,color,cutout")
    assert torch.isfinite(rows).all() and torch.isfinite(params).all()
    _, before, _ = train_gan(steps=0, loss=kind)
    assert not torch.equal(params, before)


def test_compiled_step_with_penalties_matches_eager_and_compiles_nothing_after_its_first_steps():
    """The penalties run D eagerly (AOTAutograd has no double backward); the rest compiles. Same
    noise, augmentation draws and interpolates as eager: fp32 reorderings only (test_fast_step.py)."""
    from torch._dynamo.utils import counters
    eager_rows, eager_params, _ = train_gan(**EVERYTHING)
    torch._dynamo.reset()
    counters.clear()
    rows, params, gan = train_gan(steps=2, compile="default", **EVERYTHING)  # a step with R1 and one without
    graphs = counters["stats"]["unique_graphs"]
    for k in range(2, 4):
        torch.manual_seed(100 + k)
        gan.step(batch(k))
        rows = torch.cat([rows, torch.tensor([list(gan.read().values())])])
    params = torch.cat([p.detach().float().flatten() for p in [*gan.G.parameters(), *gan.D.parameters()]])
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    assert ((rows - eager_rows).abs() / eager_rows.abs().clamp(min=1)).max() < 1e-5  # loss_d reaches ~50
    assert (params - eager_params).abs().max() < 1e-6


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_amp_with_penalties_trains(amp):
    rows, params, gan = train_gan(steps=6, amp=amp, **EVERYTHING)
    assert torch.isfinite(rows).all() and torch.isfinite(params).all()
    _, before, _ = train_gan(steps=0, **EVERYTHING)
    assert not torch.equal(params, before)


def test_a_step_with_every_setting_reads_nothing_on_the_host():
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32, d_norm="layer", spectral_norm=True)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, fused=True) for m in (G, D))
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, **{**EVERYTHING, "r1_every": 1}))
    gan.step(batch())
    with HostReads() as spy:
        gan.step(batch(1))
    assert spy.reads == []


def test_ddp_averages_the_penalty_gradient(tmp_path):
    """R1 runs through the plain D, not its DDP wrapper; its gradient still reaches the all-reduce:
    two processes on half batches end where one process on the whole batch does."""
    worker = str(REPO / "tests" / "penalty_worker.py")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker]
    out = subprocess.run([*run, tmp_path / "two.pt"], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    subprocess.run([sys.executable, worker, tmp_path / "one.pt"], check=True, env=env, cwd=REPO, timeout=240)
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    moved = max((one["D"][k].float() - one["D0"][k].float()).abs().max().item() for k in one["D"])
    assert moved > 1e-3  # it trained, by far more than the tolerance below
    for net in ("G", "D"):
        for k, v in one[net].items():
            assert torch.allclose(two[net][k].float(), v.float(), atol=2e-6), (net, k)


@needs_cuda
def test_cuda_graphs_capture_penalties_and_augmentation_and_match_eager():
    """Both kinds of step (with R1, without) captured; the double backward inside the graphs."""
    eager_rows, eager_params, _ = train_gan(device="cuda", **EVERYTHING)
    rows, params, gan = train_gan(device="cuda", graphs=True, **EVERYTHING)
    assert set(gan.graphs) == {True, False}
    assert ((rows - eager_rows).abs() / eager_rows.abs().clamp(min=1)).max() < 1e-5
    assert (params - eager_params).abs().max() < 1e-6


@needs_cuda
def test_cuda_all_switches_with_every_setting_track_eager():
    eager_rows, eager_params, _ = train_gan(device="cuda", **EVERYTHING)
    rows, params, _ = train_gan(device="cuda", compile="default", amp=torch.bfloat16, graphs=True,
                                **EVERYTHING)
    assert (torch.isfinite(rows).all()
            and ((rows - eager_rows).abs() / eager_rows.abs().clamp(min=1)).max() < 0.05)
    assert (params - eager_params).abs().mean() < 1e-4


# Through the trainer.

@pytest.mark.parametrize("kind, at_chance", [("bce", 2 * math.log(2)), ("lsgan", 0.5), ("hinge", 2.0)])
def test_a_short_run_with_each_loss_finishes(celeba, tmp_path, kind, at_chance):
    """Two steps in, D is near chance: its first logged loss tells the losses apart."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__loss=kind, train__max_steps=4)) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss_d", "loss_g", "d_real", "d_fake"))
    assert rows[0]["loss_d"] == pytest.approx(at_chance, abs=0.25)


def test_a_short_wgan_gp_run_finishes_with_a_critic_without_batchnorm(celeba, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__loss="wgan-gp", train__max_steps=4)) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss_d", "loss_g", "d_real", "d_fake"))
    assert rows[0]["loss_d"] > 5  # 10 (|grad| - 1)^2 with the small input gradient of a fresh critic
    assert not any("running_mean" in k for k in weights(run / "discriminator.pth"))


def test_augmentation_r1_and_spectral_norm_resume_exactly_and_generate_reads_g_only(celeba, tmp_path):
    import fastdcgan
    extra = dict(data__augment="translation,color,cutout", train__r1_gamma=1.0, train__r1_every=3,
                 model__spectral_norm="true")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(tiny_args(celeba, whole, train__max_steps=7, **extra)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=4, **extra)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=7, **extra)) == 0  # R1 fell on steps 0, 3, 6
    for name in ("generator.pth", "discriminator.pth"):
        a, b = weights(whole / name), weights(split / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert "main.0.parametrizations.weight.original" in weights(whole / "discriminator.pth")
    G = fastdcgan.load_generator(split)
    assert G.sample(2, seed=0).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("override, words", [
    (["train.loss=hinge", "train.real_label=0.9"], "train.real_label"),
    (["train.loss=wgan-gp", "model.sync_bn=true"], "model.sync_bn=true"),
    (["train.r1_gamma=1", "model.sync_bn=true"], "train.r1_gamma"),
    (["data.augment=translation,flip"], "data.augment"),
    (["train.loss=wgan"], "train.loss"),
    (["train.gp_lambda=0"], "train.gp_lambda"),
    (["train.r1_every=0"], "train.r1_every"),
    (["train.r1_gamma=-1"], "train.r1_gamma"),
])
def test_refused_settings_exit_2_with_one_line(capsys, override, words):
    assert main([*override, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
