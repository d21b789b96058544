"""Every tool that runs a generator for an output draws in eval mode and leaves G's mode as it found it.

A fresh Generator's BatchNorm has running statistics (0, 1) far from any batch's, so a reader that runs G
in training mode draws other images (the batch's statistics) than one in eval mode; and a reader that
does not put the mode back leaves the trainer's G, or its EMA copy (kept in eval mode), in the wrong one
for what comes next. Each reader is run on G in both modes and compared with an eval-mode copy of G.
"""
import copy

import pytest
import torch

from fastdcgan.generate import dissect
from fastdcgan.metrics.frechet import fake_batches, quantize
from fastdcgan.model import Generator, sample

Z = torch.randn(6, 16, 1, 1, generator=torch.Generator().manual_seed(0))


def maps(G):
    """Every hidden layer's feature maps, one row per z."""
    return torch.cat([m.flatten(1) for m in dissect.activations(G, Z).values()], 1)


def reference(G):
    return copy.deepcopy(G).eval()


READERS = {
    # name: (what the reader gives for G, what it must equal, from an eval-mode copy of G)
    "model.sample": (lambda G: sample(G, Z), lambda E: E(Z)),
    "dissect.activations": (lambda G: maps(G), lambda E: maps(E)),
    "frechet.fake_batches": (lambda G: torch.cat(list(fake_batches(G, Z, len(Z)))), lambda E: quantize(E(Z))),
}


@pytest.mark.parametrize("training", [True, False], ids=["G in train mode", "G in eval mode"])
@pytest.mark.parametrize("reader", READERS)
def test_a_reader_of_the_generator_draws_in_eval_mode_and_restores_the_mode(reader, training):
    torch.manual_seed(0)
    G = Generator(nz=16, ngf=8, image_size=32)
    with torch.no_grad():
        in_train_mode = G.train()(Z)
        want = READERS[reader][1](reference(G))
    assert not torch.allclose(in_train_mode, G.eval()(Z)), "the modes draw alike: no test"
    G.train(training)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        got = READERS[reader][0](G)
    assert G.training == training, f"{reader} left G in {'train' if G.training else 'eval'} mode"
    assert all(m.training == training for m in G.modules()), f"{reader} left some layers in another mode"
    assert torch.equal(got, want), f"{reader} does not draw as G in eval mode does"
    after = G.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), f"{reader} moved G's running statistics"
