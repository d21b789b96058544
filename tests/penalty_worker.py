"""One DDP step with R1 and a spectrally normalised layer-norm D, on this rank's slice of a fixed global batch
and noise; rank 0 saves the weights (and D's before). Run under torchrun by tests/test_losses.py (argv:
out_path); with no process group (one process) it trains on the whole batch, the reference.

G's BatchNorm is synchronised so that its fakes are those of the whole batch; the hinge loss and R1
draw nothing random, so only the averaging of D's gradient over processes is left to check.
"""
import sys

import torch

from fastdcgan import dist
from fastdcgan.model import build_models
from fastdcgan.step import GANStep, StepOptions

from syncbn_worker import NZ, global_inputs


def one_step(out: str, batch: int = 16) -> None:
    env = dist.from_environment()
    device = dist.init(env, torch.device("cpu"), timeout_s=60)
    torch.manual_seed(0)
    G, D = build_models(NZ, 8, 8, 32, d_norm="layer", spectral_norm=True)
    if env.world > 1:
        G = dist.convert_sync_batchnorm(G, device)
    D0 = {k: v.clone() for k, v in D.state_dict().items()}
    # SGD: a weight moves by lr x its gradient (Adam's first step, lr x its sign, would hide a wrong size)
    opt_g, opt_d = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (G, D))
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=NZ, distributed=env.world > 1, loss="hinge",
                                                  r1_gamma=10.0, r1_every=1))
    images, noise = global_inputs(batch)
    part = batch // env.world
    mine = slice(env.rank * part, (env.rank + 1) * part)
    gan._noise = lambda n: noise[mine]
    gan.step(images[mine])
    if env.main:
        torch.save({"G": G.state_dict(), "D": D.state_dict(), "D0": D0}, out)
    dist.shutdown()


if __name__ == "__main__":
    one_step(sys.argv[1])
