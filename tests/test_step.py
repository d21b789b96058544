import math

import torch

from fastdcgan.model import build_models
from fastdcgan.step import GANStep, to_model_input


def make(real_label=1.0, d_steps=1, g_steps=1, dropout=0.0):
    torch.manual_seed(0)
    G, D = build_models(nz=16, ngf=8, ndf=8, image_size=32, d_dropout=dropout)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    gan = GANStep(G, D, opt_g, opt_d, nz=16, real_label=real_label, d_steps=d_steps, g_steps=g_steps)
    return gan, G, D


def batch(n=8, seed=0):
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


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
    gan.opt_g.register_step_pre_hook(lambda *a: seen.update(d_grads=[p.grad for p in D.parameters()]))
    gan.step(batch())
    assert same(seen["g_at_d"], g0)
    assert all(g is None for g in seen["g_grads"])
    assert not same(seen["d_after_d"], d0)
    # The G phase leaves D's weights as the D phase left them, and D's grads are still the D phase's.
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
    gan.sums[0] = float("nan")
    assert not gan.finite()
