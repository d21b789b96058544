"""Look inside the generator: per-layer feature maps, and the paper's section 6.1 "forgetting".

A layer here is a hidden ConvTranspose block of `Generator.main` (ConvT, BatchNorm, ReLU), counted
from 0 at the 4x4 block; its feature maps are the block's output after the ReLU, which is what the
next layer reads. At 64x64 the layers are 0: (ngf*8) x 4x4, 1: (ngf*4) x 8x8, 2: (ngf*2) x 16x16,
3: ngf x 32x32. Negative indices count from the top, so -1 is the last hidden layer, the one the
output convolution reads (the paper dropped feature maps in its "second highest" layer).

Forgetting a feature (Radford et al. 2015, 6.1): the paper fit a logistic regression on activations
inside and outside bounding boxes of windows and dropped every feature map with a positive weight.
Faces have no boxes here, so the user marks whole samples instead: seeds where the feature shows
(positive) and seeds where it does not (negative). Each channel is summarised by its spatial mean
activation per sample and scored by how well it separates the two sets; the top-k are zeroed at
every spatial position during generation, by a forward hook, leaving the weights untouched.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

SCORES = ("diff", "logistic")


def hidden_layers(G: nn.Module) -> list[nn.Module]:
    """The ReLU closing each hidden ConvTranspose block, in order: hooks on them see each layer's maps."""
    mods = list(G.main)
    return [mods[i + 2] for i, m in enumerate(mods)
            if isinstance(m, nn.ConvTranspose2d) and i + 2 < len(mods) and isinstance(mods[i + 2], nn.ReLU)]


def layer_index(G: nn.Module, layer: int) -> int:
    """A layer number, negative ones counted from the top, checked against G's depth."""
    n = len(hidden_layers(G))
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} does not exist: this generator has hidden layers 0..{n - 1} "
                         f"(or -{n}..-1 from the top)")
    return layer % n


def layer_channels(G: nn.Module, layer: int) -> int:
    convs = [m for m in G.main if isinstance(m, nn.ConvTranspose2d)]
    return convs[layer_index(G, layer)].out_channels


@torch.no_grad()
def activations(G: nn.Module, z: torch.Tensor,
                layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """Feature maps of the given layers (default: all) for z, in eval mode, each (N, C, h, w)."""
    mods = hidden_layers(G)
    wanted = [layer_index(G, i) for i in layers] if layers is not None else list(range(len(mods)))
    seen: dict[int, torch.Tensor] = {}
    handles = [mods[i].register_forward_hook(
                   lambda m, inp, out, i=i: seen.__setitem__(i, out.detach().clone()))
               for i in wanted]
    was_training = G.training
    G.eval()
    try:
        G(z)
    finally:
        G.train(was_training)
        for h in handles:
            h.remove()
    return seen


@contextmanager
def dropped_channels(G: nn.Module, layer: int, channels: Sequence[int]) -> Iterator[None]:
    """Within the block, G runs with these feature maps of `layer` set to zero everywhere."""
    i = layer_index(G, layer)
    n = layer_channels(G, i)
    bad = [c for c in channels if not 0 <= c < n]
    if bad:
        raise ValueError(f"channels {bad} do not exist: layer {i} has channels 0..{n - 1}")
    keep = torch.ones(n)
    keep[list(channels)] = 0.0

    def zero(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * keep.to(out.device, out.dtype).view(1, -1, 1, 1)

    handle = hidden_layers(G)[i].register_forward_hook(zero) if channels else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' as fractions of the image (0,0 top left), e.g. '0.3,0.65,0.7,0.9' for a mouth."""
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"bad box {text!r}: expected x0,y0,x1,y1 as fractions of the image, "
                         "e.g. 0.3,0.65,0.7,0.9") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"bad box {text!r}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return x0, y0, x1, y1


def channel_means(G: nn.Module, z: torch.Tensor, layer: int,
                  box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """Each channel's mean activation per sample, (N, C), over the whole map or inside `box`.

    The paper scored activations inside the boxes it drew around windows; CelebA faces are aligned,
    so one box (fractions of the image) finds the same part, e.g. the mouth, in every sample.
    """
    i = layer_index(G, layer)
    maps = activations(G, z, [i])[i]
    if box is not None:
        h, w = maps.shape[2:]
        x0, y0, x1, y1 = box
        rows = slice(int(y0 * h), max(int(y0 * h) + 1, math.ceil(y1 * h)))
        cols = slice(int(x0 * w), max(int(x0 * w) + 1, math.ceil(x1 * w)))
        maps = maps[:, :, rows, cols]
    return maps.mean(dim=(2, 3))


def score_channels(pos: torch.Tensor, neg: torch.Tensor, method: str = "diff") -> torch.Tensor:
    """One score per channel, higher = more present when the feature is (pos, neg: (N, C) features).

    diff: (mean over positives - mean over negatives) / the channel's std over all samples, a
    standardised mean difference, so loud channels do not win by scale alone. logistic: the weights
    of an L2-regularised, class-balanced logistic regression on standardised features, the paper's
    tool; with few samples it spreads weight over correlated channels where diff ranks each alone.
    """
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("scoring needs at least one positive and one negative sample")
    x = torch.cat([pos, neg]).double()
    std = x.std(0, unbiased=False)
    scale = torch.where(std > 1e-8, std, torch.ones_like(std))
    if method == "diff":
        score = (pos.double().mean(0) - neg.double().mean(0)) / scale
        return torch.where(std > 1e-8, score, torch.zeros_like(score)).float()
    if method == "logistic":
        return _logistic_weights((x - x.mean(0)) / scale, len(pos)).float()
    raise ValueError(f"unknown score {method!r}: choose one of {', '.join(SCORES)}")


def _logistic_weights(x: torch.Tensor, n_pos: int, l2: float = 1e-2, iters: int = 200) -> torch.Tensor:
    """Weights of logistic regression y ~ sigmoid(x w + b), positives first in x; fit with L-BFGS."""
    y = torch.zeros(len(x), dtype=x.dtype)
    y[:n_pos] = 1.0
    # balance the classes: a few marked seeds against many references must still count
    weight = torch.where(y > 0, 0.5 / n_pos, 0.5 / (len(x) - n_pos))
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        loss = (weight * nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).sum()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(loss_fn)
    return w.detach()


def top_channels(score: torch.Tensor, k: int) -> list[int]:
    """The k highest-scoring channels, best first (only those with a positive score)."""
    order = torch.argsort(score, descending=True, stable=True)[:k]
    return [int(c) for c in order if score[c] > 0]
