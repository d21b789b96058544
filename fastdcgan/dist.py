"""Processes, ranks and the process group: torchrun, srun without torchrun, or one process.

    python -m fastdcgan.train ...                                  # one process
    torchrun --nproc_per_node=4 -m fastdcgan.train ...             # one node, 4 processes
    srun --ntasks-per-node=4 python -m fastdcgan.train ...         # SLURM tasks, no torchrun
    sbatch slurm/train.sbatch                                      # several nodes, see README

NCCL with one GPU per local rank on CUDA, gloo on CPU. Collectives time out (train.timeout_s) so
that a lost process fails the others instead of hanging them. Rank 0 alone writes files and prints.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .config import UsageError

if dist.is_available():
    # Imported here, before any process group exists. Both modules take `group.WORLD` as a default
    # argument when first imported (torchvision pulls them in too); imported after the group is made
    # they keep it alive past destroy_process_group, and its gloo threads (ProcessGroupGloo::runLoop)
    # then free a finished work's Python-made tensors (c10::TensorImpl::decref_pyobject, which takes
    # the GIL) during interpreter exit: pthread_exit through a noexcept destructor, "terminate called
    # without an active exception", SIGABRT after all the work was done.
    import torch.distributed.nn.functional  # noqa: F401
    import torch.distributed.optim  # noqa: F401


def parse_device(name: str, what: str = "device") -> torch.device:
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N; a CUDA device where there is none,
    or a name torch does not know, is a UsageError naming `what` (the setting or flag)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"{what}: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{what}={name} but no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"{what}={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,7],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read SLURM node list {nodelist!r}")
    prefix, ranges = m.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def from_environment(environ: dict | None = None) -> Env:
    """Rank, world size and local rank from torchrun's variables, else SLURM's, else one process.

    Under SLURM without torchrun it also sets MASTER_ADDR (the first host of the job) and
    MASTER_PORT (derived from the job id, so two jobs on one node do not collide) when unset.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Env(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        env.setdefault("MASTER_ADDR", first_host(env["SLURM_JOB_NODELIST"]))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return Env(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return Env()


_cpu_group = None  # gloo group for small host-side agreements: no GPU sync, whatever the main backend


def init(env: Env, device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group (when there is more than one process); returns this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if env.world > 1 and not dist.is_initialized():
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a lost peer raises, not hangs
        timeout = timedelta(seconds=timeout_s)
        store, _, _ = next(dist.rendezvous("env://", rank=env.rank, world_size=env.world, timeout=timeout))
        # torchrun keeps its store across restarts; without a fresh prefix a restarted rank can read
        # the dead rank's address from the last round and fail to connect.
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world, timeout=timeout,
                                store=dist.PrefixStore(f"fastdcgan/restart{restart}", store),
                                device_id=device if device.type == "cuda" else None)
        global _cpu_group
        _cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else None
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def agree(flag: bool, value: int, most: int = 0) -> tuple[bool, int, int]:
    """(flag OR-ed over all ranks, rank 0's value, the largest `most`) on every rank: one small CPU
    collective, no GPU sync. value and most must be >= 0 (the other ranks' values are ignored)."""
    if not dist.is_initialized():
        return flag, value, most
    t = torch.tensor([int(flag), value if dist.get_rank() == 0 else 0, most], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group)
    return bool(t[0]), int(t[1]), int(t[2])


def under_torchrun() -> bool:
    """Started by torchrun (a torchelastic agent), which takes any exit code but 0 for a fault."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def all_gather(obj):
    """Every rank's obj, in rank order (one process: [obj])."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's statistics) in `module` on every rank, in place."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast(obj):
    """Rank 0's obj on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) over the default group, with the sum of the gradients as its backward.

    torch.distributed.nn.functional.all_reduce does the same but keeps the group in the autograd
    graph, so a graph that outlives the run keeps the process group (and its threads) alive too.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose batch statistics span all processes, on any device.

    torch.nn.SyncBatchNorm serves CUDA; it refuses CPU tensors, so gloo runs use this: per-channel
    sums and sums of squares go through a differentiable all-reduce, which also carries the
    gradient of the statistics back to every process, as SyncBatchNorm's backward does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        stats = _SumOverRanks.apply(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            # momentum None: the cumulative average, as torch's BatchNorms keep it (the EMA generator's
            # recalibration asks for that)
            m = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d made process-synchronised: torch's on CUDA, SyncBatchNorm2d elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module
