"""Every random draw a training step makes is each rank's own, in a run of any size, fresh and resumed,
and follows train.seed on every rank.

test_dist.py's two-process test sees rank 0 and rank 1 draw different noise, but two processes cannot
tell "every rank its own stream" from "rank 0 apart from all the rest" (ranks 1 to N-1 alike: G trained
on N-1 copies of one batch of fakes). Here four ranks' TrainStates are built in one process, each
given its rank (the seeding reads only that; the process group beneath DDP is a one-process gloo one),
and each takes one step on the same batch. Every random tensor the step draws (torch's ops tagged
`nondeterministic_seeded`, seen below autograd: the noise, DiffAugment's parameters, dropout's masks,
WGAN-GP's interpolation, and any draw added later) must differ between every two ranks, while the
weights are alike on every rank.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastdcgan import checkpoint, config, dist
from fastdcgan.state import TrainState, rng_state, set_rng_state

WORLD = 4
ARGS = ["model.nz=8", "model.ngf=8", "model.ndf=8", "data.image_size=32", "device=cpu", "train.seed=11",
        "train.batch_size=16"]
# Every kind of draw the step can make: noise, DiffAugment's three, dropout, WGAN-GP's interpolation.
DRAWING = ["data.augment=color,translation,cutout", "model.d_dropout=0.5", "train.loss=wgan-gp"]
Draws = list[tuple[str, torch.Tensor]]  # (op, tensor), in the order drawn
# 16 images: a draw of few bits per image (a translation's offsets, 9 values each) is then alike in two
# ranks by chance once in 9^16, not once in 9^4 as at 4 images, across the dozen streams compared below
BATCH = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


class RandomDraws(TorchDispatchMode):
    """Every tensor a random op makes or fills while it is on, in order, as (op, tensor)."""

    def __init__(self):
        super().__init__()
        self.draws: Draws = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.nondeterministic_seeded in func.tags:
            self.draws.append((str(func), out.detach().clone()))
        return out


def built(rank: int, world: int, args=()) -> TrainState:
    return TrainState(config.build(None, [*ARGS, *DRAWING, *args]), dist.Env(rank=rank, world=world),
                      torch.device("cpu"))


def step_draws(s: TrainState) -> Draws:
    """The step's draws. The ranks share this process's generators, so each rank is built (or resumed)
    and stepped before the next rank is built: each step draws from the state its own rank left."""
    with RandomDraws() as seen:
        s.gan.step(BATCH)
    return seen.draws


def weights(s: TrainState) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in [*s.G.parameters(), *s.D.parameters()]])


def assert_each_ranks_own(draws: list[Draws], names: list[str] | None = None) -> None:
    """The ranks (of one launch or several, named by `names`) draw alike in kind (the same ops, shapes,
    in the same order), never alike in value."""
    names = names or [f"rank {r}" for r in range(len(draws))]
    kinds = [[(op, t.shape) for op, t in d] for d in draws]
    assert all(k == kinds[0] for k in kinds), "the ranks' steps draw different kinds of random tensors"
    expected = {"aten.randn.default", "aten.rand.default", "aten.randint.low", "aten.bernoulli_.float"}
    assert expected <= {op for op, _ in kinds[0]}  # noise; color and WGAN-GP; translation and cutout; dropout
    for i, (op, _) in enumerate(draws[0]):
        for a in range(len(draws)):
            for b in range(a):
                assert not torch.equal(draws[a][i][1], draws[b][i][1]), (
                    f"{names[b]} and {names[a]} draw the same {op} (the step's draw {i})")


def test_every_rank_of_a_four_process_run_draws_its_own_on_the_same_weights(one_process_group):
    draws, weights_ = [], []
    for rank in range(WORLD):
        s = built(rank, WORLD)
        weights_.append(weights(s))
        draws.append(step_draws(s))
    assert all(torch.equal(w, weights_[0]) for w in weights_)
    assert_each_ranks_own(draws)
    # and from its rank alone: rank 0 built again after the others draws what it drew first (ranks built
    # one after another in one process would otherwise differ by any generator the build does not seed)
    again = step_draws(built(0, WORLD))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(again, draws[0], strict=True))


@pytest.mark.parametrize("saved_world", [WORLD, 2])
def test_every_rank_resumed_draws_its_own(one_process_group, tmp_path, saved_world):
    """Resumed on 4 ranks from a checkpoint of 4 (each rank its own saved random state: the draws its
    uninterrupted self makes) or of 2 (the states do not map onto the new ranks: each seeds a stream of
    its own, which no rank of the fresh run draws, nor any rank of a launch resumed one step later)."""
    rngs, sums, uninterrupted = [], [], []
    for rank in range(saved_world):  # what each rank's checkpoint holds, then its next step
        s = built(rank, saved_world)
        state = s.state_dict()  # a one-process group gathers this rank's alone
        rngs.append(state["rng"][0])
        sums.append(state["gan"]["ranks"][0])
        uninterrupted.append(step_draws(s))
    state |= {"rng": rngs, "world": saved_world}
    state["gan"]["ranks"] = sums

    def resumed_at(step: int) -> list[Draws]:
        path = tmp_path / f"step{step}.pt"
        checkpoint.atomic_write(path, lambda f: torch.save(state | {"step": step}, f))
        draws = []
        for rank in range(WORLD):
            s = built(rank, WORLD)
            s.load(path)
            draws.append(step_draws(s))
        return draws

    resumed = resumed_at(5)
    assert_each_ranks_own(resumed)
    if saved_world == WORLD:
        for rank in range(WORLD):
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed[rank], uninterrupted[rank],
                                                                   strict=True)), rank
    else:  # every draw of every rank, across the three launches, its own
        fresh = [step_draws(built(rank, WORLD)) for rank in range(WORLD)]
        launches = ["resumed at step 5", "fresh", "resumed at step 6"]
        assert_each_ranks_own(resumed + fresh + resumed_at(6),
                              [f"{launch}, rank {r}" for launch in launches for r in range(WORLD)])


@pytest.mark.parametrize("resumed", [False, True])
def test_every_ranks_draws_follow_the_seed(one_process_group, tmp_path, resumed):
    """train.seed reaches every rank's stream, fresh and resumed from a checkpoint of another number of
    processes (where each rank seeds anew): two seeds draw apart on every rank, not on rank 0 alone (ranks
    1 to N-1 seeded from their rank only would repeat their draws in every run whatever its seed)."""
    path = tmp_path / "one_process.pt"
    if resumed:
        state = built(0, 1).state_dict()
        checkpoint.atomic_write(path, lambda f: torch.save(state | {"step": 5}, f))

    def draws(rank: int, seed: int) -> Draws:
        s = built(rank, WORLD, [f"train.seed={seed}"])
        if resumed:
            s.load(path)
        return step_draws(s)

    for rank in range(WORLD):
        a, b = draws(rank, 11), draws(rank, 12)
        assert [op for op, _ in a] == [op for op, _ in b]
        for i, ((op, x), (_, y)) in enumerate(zip(a, b, strict=True)):
            assert not torch.equal(x, y), f"rank {rank} draws the same {op} (draw {i}) at seeds 11 and 12"


# A draw from each generator a checkpoint's random state holds (state.rng_state()'s keys).
DRAW = {"torch": lambda: torch.rand(8), "cuda": lambda: torch.rand(8, device="cuda").cpu(),
        "numpy": lambda: torch.from_numpy(np.random.rand(8)),
        "python": lambda: torch.tensor([random.random() for _ in range(8)])}


def test_a_saved_random_state_puts_back_every_generator_it_holds():
    """After set_rng_state, each generator draws again what it drew just after the save. A generator
    added to the saved state without a draw here fails; CUDA's is drawn where there is a GPU (the next
    test is its CPU-checkable part)."""
    saved = rng_state()
    assert set(saved) == set(DRAW)
    held = [k for k in DRAW if saved[k] is not None]
    first = {k: DRAW[k]() for k in held}
    set_rng_state(saved)
    assert {k: torch.equal(DRAW[k](), first[k]) for k in held} == dict.fromkeys(held, True)


def test_a_saved_cuda_random_state_is_handed_to_torch_cuda(monkeypatch):
    """On a GPU a resumed run draws on from its saved CUDA stream (noise, augmentation, dropout are drawn
    there), not from the seed's start again: the saved state reaches torch.cuda.set_rng_state."""
    state = {**rng_state(), "cuda": torch.arange(16, dtype=torch.uint8)}
    given = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", given.append)
    set_rng_state(state)
    assert len(given) == 1 and torch.equal(given[0], state["cuda"])
