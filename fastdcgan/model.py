"""The DCGAN of Radford et al. (2015) as pytorch/examples builds it, with D returning logits.

At 64x64 the layers, and so the state_dict keys (`main.0.weight`, ...), are the reference's:
a generator.pth from here loads into the tutorial's netG and back. Other sizes add or remove one
stride-2 block per factor of two; the widest layer is ngf * image_size / 8 (8 * ngf at 64).

Generator, image_size=64:             Discriminator, image_size=64:
  z: nz x 1 x 1                         input: 3 x 64 x 64
  ConvT -> (ngf*8) x 4 x 4              Conv -> ndf x 32 x 32        (no BN on the first layer)
  ConvT -> (ngf*4) x 8 x 8              Conv -> (ndf*2) x 16 x 16
  ConvT -> (ngf*2) x 16 x 16            Conv -> (ndf*4) x 8 x 8
  ConvT -> ngf x 32 x 32                Conv -> (ndf*8) x 4 x 4
  ConvT -> 3 x 64 x 64, Tanh            Conv -> 1 x 1 x 1, a logit  (no Sigmoid: BCE-with-logits)

D's BatchNorm becomes a layer norm (GroupNorm with one group: per image, over channels and positions)
for WGAN-GP, whose gradient penalty is per image: BatchNorm would make each image's critic value
depend on the rest of the batch. The WGAN-GP paper recommends layer norm as the replacement; it
keeps the network's shape and its normalised blocks, where dropping the norm altogether would not.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

SIZES = (32, 64, 128)


def _width(image_size: int) -> int:
    """Channel multiplier at 4x4: 8 at 64x64, as in the paper; doubles per extra block."""
    if image_size not in SIZES:
        raise ValueError(f"image_size must be one of {SIZES}, got {image_size}")
    return image_size // 8


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, image_size: int = 64):
        super().__init__()
        self.nz, self.ngf, self.image_size = nz, ngf, image_size
        mult = _width(image_size)
        # z -> (ngf*mult) x 4 x 4
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * mult),
            nn.ReLU(True),
        ]
        # each block: channels / 2, side x 2, down to ngf x (image_size/2) x (image_size/2)
        while mult > 1:
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * mult // 2),
                nn.ReLU(True),
            ]
            mult //= 2
        # ngf x (image_size/2)^2 -> 3 x image_size x image_size, in [-1, 1]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, ndf: int = 64, image_size: int = 64, dropout: float = 0.0, norm: str = "batch"):
        super().__init__()
        self.ndf, self.image_size = ndf, image_size
        top = _width(image_size)
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm must be batch or layer, got {norm!r}")

        def normalise(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(1, channels)

        def drop() -> list[nn.Module]:
            return [nn.Dropout(dropout)] if dropout > 0 else []

        # 3 x image_size^2 -> ndf x (image_size/2)^2
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        layers += drop()
        # each block: channels x 2, side / 2, up to (ndf*top) x 4 x 4
        mult = 1
        while mult < top:
            layers += [
                nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                normalise(ndf * mult * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            layers += drop()
            mult *= 2
        # (ndf*top) x 4 x 4 -> 1 x 1 x 1
        layers.append(nn.Conv2d(ndf * top, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per image, shape (N,)."""
        return self.main(x).flatten()


def init_weights(m: nn.Module) -> None:
    """The paper's init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def d_norm_for(loss: str) -> str:
    """D's normalisation for a train.loss: layer norm for wgan-gp (see the module's docstring)."""
    return "layer" if loss == "wgan-gp" else "batch"


def build_models(nz: int, ngf: int, ndf: int, image_size: int, d_dropout: float = 0.0, d_norm: str = "batch",
                 spectral_norm: bool = False) -> tuple[Generator, Discriminator]:
    """G and D with the paper's init. spectral_norm: each of D's convolutions divided by the largest
    singular value of its weight (as an out x in*k*k matrix), estimated by one power iteration per
    forward in training mode (Miyato et al. 2018); D's state_dict then holds each weight as
    `main.N.parametrizations.weight.original` and the iteration's vectors `..._u`, `..._v`."""
    G = Generator(nz, ngf, image_size)
    D = Discriminator(ndf, image_size, d_dropout, d_norm)
    G.apply(init_weights)
    D.apply(init_weights)
    if spectral_norm:  # after the init: the parametrized weight is computed, so it cannot be written to
        for conv in [m for m in D.modules() if isinstance(m, nn.Conv2d)]:
            add_spectral_norm(conv)
    return G, D


def generator_from_state_dict(sd: dict[str, torch.Tensor]) -> Generator:
    """A Generator shaped to fit a plain state_dict (generator.pth): nz, ngf and size read off the weights."""
    first = sd["main.0.weight"]  # (nz, ngf*mult, 4, 4)
    n_convs = sum(1 for k in sd if k.endswith(".weight") and sd[k].dim() == 4)
    image_size = 4 * 2 ** (n_convs - 1)
    nz, ngf = first.shape[0], first.shape[1] // _width(image_size)
    G = Generator(nz, ngf, image_size)
    G.load_state_dict(sd)
    return G


@torch.no_grad()
def sample(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """G(z) in eval mode, restoring G's mode after: sampling never moves BatchNorm's running stats."""
    was_training = G.training
    G.eval()
    try:
        return G(z)
    finally:
        G.train(was_training)


def fixed_noise(n: int, nz: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The same z for the same (n, nz, seed) on any device, without touching the global RNG."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, nz, 1, 1, generator=g).to(device)
