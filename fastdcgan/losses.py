"""The GAN losses (`train.loss`) and D's penalties: WGAN-GP's gradient penalty and R1.

Each loss takes D's outputs as D gives them (logits for bce, plain scores for the others) and is
computed in fp32. What D's outputs mean differs by loss, so do the numbers the step reports:

| loss | D's output | d_real / d_fake report | the D-output histogram bins (over [0, 1]) |
| --- | --- | --- | --- |
| bce | a logit | mean sigmoid(output), the probability of real | sigmoid(output) |
| lsgan | a score with targets 1 (real) and 0 (fake) | mean output | the output itself |
| hinge | a score with margins at +1 and -1 | mean output | (output + 1) / 2: the margins at 1 and 0 |
| wgan-gp | an unbounded critic value | mean output | sigmoid(output) |

For wgan-gp, d_real - d_fake is the Wasserstein estimate. Histogram values outside [0, 1] count in
the end bins.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("bce", "lsgan", "hinge", "wgan-gp")
# What d_real and d_fake are for each loss (the table above): loss.png's axis; only bce's are probabilities.
REPORTED = {"bce": "mean D(x), D(G(z)): probability of real",
            "lsgan": "mean D output (targets: 0 fake, 1 real)",
            "hinge": "mean D output (margins at -1 and +1)",
            "wgan-gp": "mean critic output"}
# The x-axis of the D-output histogram for each loss (see the table above).
HISTOGRAM_AXIS = {"bce": "D's probability of real, sigmoid(D)",
                  "lsgan": "D's output (targets: 0 fake, 1 real)",
                  "hinge": "(D + 1) / 2 (margins at 0 and 1)",
                  "wgan-gp": "sigmoid(critic's output)"}


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """What D minimises, from its outputs on real and fake images (WGAN-GP's penalty not included).
    real_label is the target for real images with bce and lsgan (< 1: one-sided label smoothing)."""
    if kind == "bce":  # the paper's, as binary cross-entropy on logits
        return bce(real, real_label) + bce(fake, 0.0)
    real, fake = real.float(), fake.float()
    if kind == "lsgan":  # Mao et al. 2017 with a = 0 (fake), b = real_label, c = 1
        return 0.5 * (real - real_label).square().mean() + 0.5 * fake.square().mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """What G minimises, from D's outputs on its images."""
    if kind == "bce":  # non-saturating: -log D(G(z))
        return bce(fake, 1.0)
    fake = fake.float()
    if kind == "lsgan":
        return 0.5 * (fake - 1).square().mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise ValueError(f"unknown loss {kind!r}")


def reported(kind: str, out: torch.Tensor) -> torch.Tensor:
    """D's outputs as d_real / d_fake average them: probabilities for bce, else as they are."""
    out = out.float()
    return out.sigmoid() if kind == "bce" else out


def for_histogram(kind: str, out: torch.Tensor) -> torch.Tensor:
    """D's outputs mapped to [0, 1], where the D-output histogram's bins are."""
    out = out.float()
    if kind == "lsgan":
        return out
    if kind == "hinge":
        return (out + 1) / 2
    return out.sigmoid()


def _input_gradient(D: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """d sum(D(x)) / dx, per image flattened, kept differentiable (the penalty is trained through)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).float().sum(), x, create_graph=True)
    return grad.flatten(1)


def gradient_penalty(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over images of (||grad D(x)||_2 - 1)^2 at x drawn uniformly
    on the line between each real image and a fake one. D must treat images independently (no BatchNorm)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x = torch.lerp(fake.detach().float(), real.float(), eps)  # eps * real + (1 - eps) * fake
    return (_input_gradient(D, x).norm(dim=1) - 1).square().mean()


def r1_penalty(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018) without its gamma / 2: mean over real images of ||grad_x D(x)||^2."""
    return _input_gradient(D, real).square().sum(dim=1).mean()
