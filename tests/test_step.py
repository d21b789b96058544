import math

import pytest
import torch

from fastdcgan.model import build_models
from fastdcgan.step import GANStep, StepOptions, to_model_input


def make(real_label=1.0, d_steps=1, g_steps=1, dropout=0.0):
    torch.manual_seed(0)
    G, D = build_models(nz=16, ngf=8, ndf=8, image_size=32, d_dropout=dropout)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, real_label=real_label, d_steps=d_steps,
                                                  g_steps=g_steps))
    return gan, G, D


def batch(n=8, seed=0):
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_input_conversion():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 4, 4, 3).contiguous()
    y = to_model_input(x, channels_last=False)
    assert y.shape == (2, 3, 4, 4) and y.is_contiguous()
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)
    assert to_model_input(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_one_step_updates_each_network_only_in_its_phase():
    gan, G, D = make()
    g0, d0 = params(G), params(D)
    seen = {}
    # At D's optimizer step, G must be untouched and hold no gradient (fakes were detached).
    gan.opt_d.register_step_post_hook(lambda *a: seen.update(g_at_d=params(G), d_after_d=params(D),
                                                             g_grads=[p.grad for p in G.parameters()]))
    gan.step(batch())
    assert same(seen["g_at_d"], g0)
    assert all(g is None for g in seen["g_grads"])
    assert not same(seen["d_after_d"], d0)
    # The G phase leaves D's weights as the D phase left them (test_settings.py checks that it adds no
    # gradient to D's weights either).
    assert same(params(D), seen["d_after_d"])
    assert not same(params(G), g0)


def test_metrics_accumulate_on_device_and_read_resets():
    gan, _, _ = make()
    for s in range(3):
        gan.step(batch(seed=s))
    m = gan.read()
    assert set(m) == {"loss_d", "loss_g", "d_real", "d_fake"}
    assert 0 < m["d_real"] < 1 and 0 < m["d_fake"] < 1
    # at init D is near chance, so its loss is near 2 log 2 and G's near log 2 (+ what D learnt)
    assert abs(m["loss_d"] - 2 * math.log(2)) < 0.7
    assert gan.read() == {}
    hist = gan.take_histograms()
    assert hist.shape[0] == 2 and hist[0].sum() == 3 * 8 and hist[1].sum() == 3 * 8
    assert gan.take_histograms().sum() == 0


def test_label_smoothing_changes_d_loss():
    a, _, _ = make(real_label=1.0)
    b, _, _ = make(real_label=0.9)
    torch.manual_seed(1)
    a.step(batch())
    torch.manual_seed(1)
    b.step(batch())
    assert a.read()["loss_d"] != b.read()["loss_d"]


def test_d_steps_and_g_steps_count_optimizer_updates():
    gan, G, D = make(d_steps=3, g_steps=2)
    gan.step(batch())
    d_state = gan.opt_d.state[next(D.parameters())]
    g_state = gan.opt_g.state[next(G.parameters())]
    assert int(d_state["step"]) == 3 and int(g_state["step"]) == 2


def test_nonfinite_is_detected():
    gan, _, _ = make()
    gan.step(batch())
    assert gan.finite()
    gan.metrics.sums[0] = float("nan")
    assert not gan.finite()


def test_histogram_matches_histc_on_random_inputs():
    from fastdcgan.step import HIST_BINS, add_to_histogram
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 1000, 100_000):
        p = torch.rand(n, generator=g)
        p[: min(n, 2)] = torch.tensor([0.0, 1.0])[: min(n, 2)]  # both edges: 1.0 counts in the last bin
        hist = torch.zeros(HIST_BINS)
        add_to_histogram(hist, p)
        assert torch.equal(hist, torch.histc(p, HIST_BINS, 0.0, 1.0))
    edges = torch.arange(HIST_BINS + 1) / HIST_BINS  # every bin edge exactly
    hist = torch.zeros(HIST_BINS)
    add_to_histogram(hist, edges)
    assert torch.equal(hist, torch.histc(edges, HIST_BINS, 0.0, 1.0))


def test_the_step_keeps_no_histc():
    """torch.histc cannot be captured in a CUDA graph; the step must not call it."""
    import inspect
    from fastdcgan import step
    assert "histc(" not in inspect.getsource(step.GANStep)


def test_max_autotune_never_brings_inductors_cuda_graphs():
    from fastdcgan.step import compile_mode
    assert compile_mode("max-autotune") == "max-autotune-no-cudagraphs"
    assert compile_mode("default") is None


def fp16_gan(d_steps=1, g_steps=1):
    from fastdcgan.step import make_optimizers
    torch.manual_seed(0)
    G, D = build_models(nz=16, ngf=8, ndf=8, image_size=32)
    opt_g, opt_d = make_optimizers(G, D, 2e-4, 2e-4, (0.5, 0.999), compiled=False, graphs=False,
                                   amp_dtype=torch.float16)
    return GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, amp_dtype=torch.float16, d_steps=d_steps,
                                                   g_steps=g_steps)), G, D


def test_fp16_with_several_updates_per_step_trains():
    """One GradScaler for both optimizers, stepped d_steps + g_steps times per training step."""
    for d_steps, g_steps in ((2, 1), (1, 2), (3, 2)):
        gan, G, D = fp16_gan(d_steps, g_steps)
        before = params(G) + params(D)
        for k in range(6):
            gan.step(batch(seed=k))
        m = gan.read()
        assert all(math.isfinite(v) for v in m.values()), m
        assert gan.scaler.get_scale() < 2.0 ** 16  # it met overflows and backed off, as fp16 does at first
        assert not same(before, params(G) + params(D))  # and it trained


@pytest.mark.parametrize("mode", ["fp32", "fp16", "fp16 d_steps=2 g_steps=2", "d_steps=2 g_steps=2", "ema"])
def test_a_step_reads_nothing_on_the_host(mode):
    """No .item(), bool() or .tolist() of a tensor inside a step: on a GPU each is a sync that stalls
    the queue (fp16's GradScaler used to read its overflow flag every step)."""
    from conftest import HostReads
    from fastdcgan.step import make_ema
    d, g = (2, 2) if "steps=2" in mode else (1, 1)
    if mode.startswith("fp16"):
        gan, G, D = fp16_gan(d, g)
    else:  # fused Adam, as make_optimizers builds it on CUDA (CPU Adam reads its host-side step counter)
        torch.manual_seed(0)
        G, D = build_models(nz=16, ngf=8, ndf=8, image_size=32)
        opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
                        for m in (G, D))
        ema = make_ema(G) if mode == "ema" else None
        gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, d_steps=d, g_steps=g, ema_decay=0.9), ema=ema)
    gan.step(batch())  # the first step creates the optimizers' state
    with HostReads() as spy:
        gan.step(batch(seed=1))
    assert spy.reads == []
