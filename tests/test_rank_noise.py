"""Every rank of a run of any size draws noise of its own, fresh and resumed at another number of ranks.

test_dist.py's two-process test sees rank 0 and rank 1 draw different noise, but two processes cannot
tell "every rank its own stream" from "rank 0 apart from all the rest" (ranks 1 to N-1 alike: G trained
on N-1 copies of one batch of fakes). Here four ranks' TrainStates are built in one process, each
given its rank (the seeding reads only that; the process group beneath DDP is a one-process gloo one),
and the noise each would draw next is compared: the weights alike on every rank, the noise different.
"""
from __future__ import annotations

import torch

from fastdcgan import checkpoint, config, dist
from fastdcgan.state import TrainState

WORLD = 4
ARGS = ["model.nz=8", "model.ngf=8", "model.ndf=8", "data.image_size=32", "device=cpu", "train.seed=11"]



def built(rank: int, world: int, args=()) -> TrainState:
    return TrainState(config.build(None, [*ARGS, *args]), dist.Env(rank=rank, world=world),
                      torch.device("cpu"))


def next_noise() -> torch.Tensor:
    return torch.randn(16)  # the step draws its noise from torch's global generator


def test_every_rank_of_a_four_process_run_draws_its_own_noise_on_the_same_weights(one_process_group):
    noise, weights = [], []
    for rank in range(WORLD):
        s = built(rank, WORLD)
        noise.append(next_noise())
        weights.append(torch.cat([p.detach().flatten() for p in [*s.G.parameters(), *s.D.parameters()]]))
    assert all(torch.equal(w, weights[0]) for w in weights)
    assert len({tuple(n.tolist()) for n in noise}) == WORLD, "two ranks draw the same noise"


def test_every_rank_resumed_at_another_number_of_ranks_draws_its_own_noise(one_process_group, tmp_path):
    """A checkpoint of 2 ranks resumed on 4: the saved random states do not map onto the new ranks, so
    each new rank seeds a stream of its own (and not the stream of the fresh run's same rank)."""
    saved = built(0, 1).state_dict() | {"world": 2}
    saved["rng"] = saved["rng"] * 2
    path = tmp_path / "step.pt"
    checkpoint.atomic_write(path, lambda f: torch.save(saved | {"step": 5}, f))
    noise, fresh = [], []
    for rank in range(WORLD):
        built(rank, WORLD)
        fresh.append(tuple(next_noise().tolist()))
        s = built(rank, WORLD)
        s.load(path)
        noise.append(tuple(next_noise().tolist()))
    assert len(set(noise)) == WORLD, "two ranks draw the same noise after the resume"
    assert not set(noise) & set(fresh)
