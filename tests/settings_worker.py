"""One rank of the settings table's two-process run (tests/test_every_setting.py), under torchrun.

    python -m torch.distributed.run --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d \\
        --rdzv_endpoint=127.0.0.1:PORT tests/settings_worker.py OUT key=value ...    # twice: two nodes

Builds the Run as `python -m fastdcgan.train` would, trains one step on this rank's own first batch
(what the settings govern there), then one step on a batch that is the same on every rank (where only
per-rank randomness can make the ranks differ), and saves what each rank saw, gathered, to OUT.
"""
import sys

import torch
import torch.distributed as dist
from torch import nn

from fastdcgan.augment import AUGMENTATIONS, augment
from fastdcgan.step import to_model_input
from fastdcgan.train import Run, parse_args


def record(run: Run) -> dict:
    seen = {"noise": [], "d_in": [], "dropped": []}
    run.G.register_forward_pre_hook(lambda m, args: seen["noise"].append(args[0].detach().clone()))
    run.D.register_forward_pre_hook(lambda m, args: seen["d_in"].append(args[0].detach().clone()))
    for m in run.D.modules():
        if isinstance(m, nn.Dropout):
            m.register_forward_hook(lambda m, args, out: seen["dropped"].append((out == 0) & (args[0] != 0)))
    return seen


def flips(run: Run) -> list[bool]:
    """Which images of this rank's epoch 0 data.hflip mirrored: the wrapped backend's batches against
    what the wrapper hands the step."""
    if not hasattr(run.loader, "loader"):
        return []
    plain = list(run.loader.loader.epoch(0))
    return [not torch.equal(a, b) for x, y in zip(run.loader.epoch(0), plain, strict=True)
            for a, b in zip(x, y, strict=True)]


def resumed(run: Run, out: str) -> dict:
    """A checkpoint of this state (as if taken after batch 1 of epoch 0, at step 2), loaded back after the
    random state moved on: loaded as saved (the same number of processes: each rank its own random
    state, the same position) and as if saved by one process at the same batch size (another number of
    processes: each rank new noise of its own; the position converted by the images seen). What each
    rank draws next and where it is, against what it would have drawn uninterrupted."""
    s = run.state
    s.step, s.epoch, s.batch_in_epoch, s.images = 2, 0, 1, 2 * run.cfg.train.batch_size * run.env.world
    rng = torch.get_rng_state()
    state = s.state_dict()  # a collective: every rank's random state, gathered
    seen = {"uninterrupted": torch.randn(8)}
    torch.set_rng_state(rng)
    paths = {"same_world": f"{out}.rank{run.env.rank}.pt", "one_process": f"{out}.rank{run.env.rank}.one.pt"}
    torch.save(state, paths["same_world"])
    torch.save(state | {"world": 1, "rng": state["rng"][:1]}, paths["one_process"])
    # the same, as if saved two steps later: a resume at another step must draw other noise, not replay
    # what an earlier one (or the run's start) drew
    paths["one_process_later"] = f"{out}.rank{run.env.rank}.later.pt"
    torch.save(state | {"world": 1, "rng": state["rng"][:1], "step": 4}, paths["one_process_later"])
    for kind, path in paths.items():
        torch.manual_seed(12345)  # the random state moved on since the save
        s.load(path)
        seen[kind] = torch.randn(8)
        seen[f"{kind}_position"] = (s.step, s.epoch, s.batch_in_epoch, s.images)
        seen[f"{kind}_lr"] = [run.opt_g.param_groups[0]["lr"], run.opt_d.param_groups[0]["lr"]]
    torch.set_rng_state(rng)
    return seen


def readings(run: Run) -> dict:
    """What the loop reads from the step's running sums (the log's means, the non-finite check, the
    epoch's D-output histograms) when each rank has summed one step of values of its own (rank + 1), and
    rank 1 a NaN for the check."""
    m, r = run.gan.metrics, run.env.rank
    m.sums.fill_(r + 1.0)
    m.sums[-1] = 1.0  # the count of steps
    m.hist.fill_(r + 1.0)
    seen = {"means": run.gan.read(), "histograms": run.gan.take_histograms()}
    m.sums[0] = float("nan") if r == 1 else 0.0
    seen["finite"] = run.gan.finite()
    m.sums.zero_()
    return seen


OWN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def shared(run: Run) -> dict:
    """What DDP keeps the same on every rank, gradients being averaged: a checkpoint's contents (the
    weights, the EMA, the optimizers' moments and rates, the step's counters) less what is each rank's own
    by design (its random state, its running sums, BatchNorm's statistics of its own batches without
    sync_bn, the clock), and the plan the rank built from the settings."""
    s = run.state.state_dict()  # a collective
    del s["rng"], s["wall_s"], s["gan"]["ranks"]
    for net in ("G", "D", "G_ema"):
        if net in s:
            s[net] = {k: v for k, v in s[net].items() if not k.endswith(OWN_BUFFERS)}
    return s | {"plan": run.state.plan(run.loader.name)}


def main(out: str, overrides: list[str]) -> None:
    run = Run(parse_args(overrides)[0])
    own = record(run)
    run.gan.step(next(iter(run.loader.epoch(0))))
    norms = [m for m in run.D.modules() if "Norm" in type(m).__name__]
    shared_batch = torch.randint(0, 256, (run.cfg.train.batch_size, run.cfg.data.image_size,
                                          run.cfg.data.image_size, 3),
                                 dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    same = record(run)
    run.gan.step(shared_batch)
    # each DiffAugment operation, as the step draws it
    x = to_model_input(shared_batch, run.cfg.channels_last)
    per_op = {op: augment(x, (op,)) for op in AUGMENTATIONS}
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    agree = shared(run)
    mine = {
        "shared": agree,
        "lr": [run.opt_g.param_groups[0]["lr"], run.opt_d.param_groups[0]["lr"]],
        "norm_kinds": sorted({type(m).__name__ for m in norms}),
        "running_means": [m.running_mean.clone() for m in norms
                          if getattr(m, "running_mean", None) is not None],
        "timeout_s": backend.options._timeout.total_seconds(),
        "own_batch_mean": own["d_in"][0].float().mean().item(),
        "noise": same["noise"][0], "augmented_real": same["d_in"][0], "per_op": per_op,
        "dropped": same["dropped"][0] if same["dropped"] else None,
        "flips": flips(run),
        "resumed": resumed(run, out),
    }
    mine["readings"] = readings(run)  # last: it overwrites the running sums
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if run.main:
        torch.save(every, out)
    del run  # its DDP wrappers hold the process group: gone before the group (see tests/test_dist.py)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
