import pytest
import torch
from torch import nn

from conftest import tiny_state
from fastdcgan.losses import LOSSES
from fastdcgan.model import (Discriminator, Generator, build_models, d_norm_for, fixed_noise,
                             generator_from_state_dict, sample)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes(size):
    G, D = build_models(nz=20, ngf=8, ndf=8, image_size=size)
    z = torch.randn(3, 20, 1, 1)
    x = G(z)
    assert x.shape == (3, 3, size, size)
    assert x.min() >= -1 and x.max() <= 1  # Tanh
    logits = D(x)
    assert logits.shape == (3,)
    assert isinstance(D.main[-1], nn.Conv2d)  # logits: no Sigmoid at the end


def test_widths_follow_the_reference_at_64():
    G, D = build_models(nz=100, ngf=64, ndf=64, image_size=64)
    g_convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    d_convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in g_convs] == [512, 256, 128, 64, 3]
    assert [c.out_channels for c in d_convs] == [64, 128, 256, 512, 1]
    # pytorch/examples' state_dict keys, so generator.pth files are interchangeable with the tutorial's
    conv_keys = lambda m: [k for k, v in m.state_dict().items() if v.dim() == 4]  # noqa: E731
    assert conv_keys(G) == ["main.0.weight", "main.3.weight", "main.6.weight", "main.9.weight",
                            "main.12.weight"]
    assert conv_keys(D) == ["main.0.weight", "main.2.weight", "main.5.weight", "main.8.weight",
                            "main.11.weight"]
    assert all(c.bias is None for c in g_convs + d_convs)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_init_statistics(size):
    torch.manual_seed(0)
    G, D = build_models(nz=100, ngf=32, ndf=32, image_size=size)
    for m in list(G.modules()) + list(D.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            w = m.weight
            if w.numel() > 2000:
                assert abs(w.mean().item()) < 0.003 and abs(w.std().item() - 0.02) < 0.002
        if isinstance(m, nn.BatchNorm2d):
            assert abs(m.weight.mean().item() - 1) < 0.01
            assert torch.all(m.bias == 0)


def test_other_sizes_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        Generator(image_size=48)
    with pytest.raises(ValueError, match="image_size"):
        Discriminator(image_size=256)


def test_dropout_only_when_asked():
    assert not any(isinstance(m, nn.Dropout) for m in Discriminator(8, 32, 0.0).modules())
    assert sum(isinstance(m, nn.Dropout) for m in Discriminator(8, 32, 0.3).modules()) == 3


@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_rebuilt_from_plain_state_dict(size):
    G = Generator(nz=12, ngf=8, image_size=size)
    G2 = generator_from_state_dict(G.state_dict())
    assert (G2.nz, G2.ngf, G2.image_size) == (12, 8, size)
    z = fixed_noise(2, 12, seed=1)
    assert torch.equal(sample(G, z), sample(G2, z))


def test_sampling_leaves_batchnorm_statistics_and_mode_untouched():
    G, _ = build_models(nz=16, ngf=8, ndf=8, image_size=32)
    G.train()
    G(torch.randn(4, 16, 1, 1))  # give the running stats something other than their init
    before = {k: v.clone() for k, v in G.state_dict().items()}
    sample(G, torch.randn(8, 16, 1, 1))
    assert G.training
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fixed_noise_is_repeatable_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = fixed_noise(4, 10, seed=3)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(a, fixed_noise(4, 10, seed=3))
    assert not torch.equal(a, fixed_noise(4, 10, seed=4))


@pytest.mark.parametrize("loss", ["bce", "wgan-gp"])
def test_the_papers_layers_and_the_losss_normalisation_reach_the_built_models(loss):
    """G: ReLU blocks, Tanh out; D: LeakyReLU(0.2) after every conv but the last, normalised from its
    second block on, with BatchNorm, or one-group GroupNorm (layer norm) for a WGAN-GP critic, whose
    penalty is per image (d_norm_for); spectral_norm reaches every D conv."""
    G, D = build_models(nz=8, ngf=4, ndf=4, image_size=64, d_norm=d_norm_for(loss))
    kinds = lambda m: [type(x).__name__ for x in m.main]  # noqa: E731
    assert kinds(G) == ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 4 + ["ConvTranspose2d", "Tanh"]
    norm = "BatchNorm2d" if loss == "bce" else "GroupNorm"
    assert kinds(D) == ["Conv2d", "LeakyReLU"] + ["Conv2d", norm, "LeakyReLU"] * 3 + ["Conv2d"]
    assert {m.negative_slope for m in D.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}
    assert all(m.num_groups == 1 for m in D.modules() if isinstance(m, nn.GroupNorm))
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(D(x), D.main(x).flatten())
    _, Dsn = build_models(nz=8, ngf=4, ndf=4, image_size=64, spectral_norm=True)
    convs = [m for m in Dsn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(hasattr(c, "parametrizations") for c in convs)


@pytest.mark.parametrize("loss", LOSSES)
def test_a_runs_critic_under_a_per_image_penalty_scores_each_image_on_its_own(loss):
    """WGAN-GP's penalty is on each image's gradient, which BatchNorm ties to the rest of the batch: a
    run's D (as the trainer builds it, in training mode) must score image 0 the same whatever the other
    images are, under wgan-gp; under the other losses BatchNorm does tie them (this test can see it)."""
    D = tiny_state(f"train.loss={loss}").D.train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    others = torch.cat([x[:1], torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        alone = torch.allclose(D(x)[0], D(others)[0], atol=1e-6)
    assert alone == (loss == "wgan-gp"), loss
