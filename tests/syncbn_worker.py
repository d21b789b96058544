"""One DDP training step on this rank's slice of a fixed global batch and noise; rank 0 saves the weights,
and G's BatchNorm statistics recalibrated as the EMA generator's are (cumulative: momentum None).

Run under torchrun by tests/test_dist.py (argv: out_path, global_batch, sync_bn 0|1); with no process
group (one process) it trains on the whole batch, the reference the 2-process result must match.
"""
import copy
import sys

import torch

from fastdcgan import dist
from fastdcgan.model import build_models
from fastdcgan.state import recalibrate_batchnorm
from fastdcgan.step import GANStep, StepOptions, make_optimizers

NZ = 16


def global_inputs(batch: int):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, generator=g)
    noise = torch.randn(batch, NZ, 1, 1, generator=g)
    return images, noise


def one_step(out: str, batch: int, sync_bn: bool) -> None:
    env = dist.from_environment()
    device = dist.init(env, torch.device("cpu"), timeout_s=60)
    torch.manual_seed(0)
    G, D = build_models(NZ, 8, 8, 32)
    if sync_bn and env.world > 1:
        G, D = dist.convert_sync_batchnorm(G, device), dist.convert_sync_batchnorm(D, device)
    opt_g, opt_d = make_optimizers(G, D, 2e-4, 2e-4, (0.5, 0.999), compiled=False, graphs=False)
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=NZ, distributed=env.world > 1))
    images, noise = global_inputs(batch)
    part = batch // env.world
    mine = slice(env.rank * part, (env.rank + 1) * part)
    gan._noise = lambda n: noise[mine]  # this rank's share of the one global z
    gan.step(images[mine])
    recalibrated = copy.deepcopy(G)
    recalibrate_batchnorm(recalibrated, NZ, device)  # as the trainer does: every rank the same noise
    if env.main:
        torch.save({"G": G.state_dict(), "D": D.state_dict(), "recalibrated": recalibrated.state_dict()}, out)
    dist.shutdown()


if __name__ == "__main__":
    one_step(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
