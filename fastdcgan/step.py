"""One DCGAN training step: D on a real and a fake batch, then G, as pytorch/examples does it.

The paper's non-saturating loss written with BCE-with-logits (safe under autocast). Nothing here
reads a value back to the host: losses and D outputs are summed on the device and read by
`GANStep.read()` every log.every steps, and D-output histograms are collected for the epoch plots.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

HIST_BINS = 50
METRICS = ("loss_d", "loss_g", "d_real", "d_fake")


def to_model_input(batch_u8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]. The permuted NHWC tensor already has channels_last strides."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x if channels_last else x.contiguous()


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class GANStep:
    """Holds the models, optimizers and on-device accumulators; `step(batch)` trains on one batch."""

    def __init__(self, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                 *, nz: int, real_label: float = 1.0, d_steps: int = 1, g_steps: int = 1,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = False):
        self.G, self.D, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.nz, self.real_label, self.d_steps, self.g_steps = nz, real_label, d_steps, g_steps
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        device = next(G.parameters()).device
        self.device = device
        # fp16 needs loss scaling; one scaler serves both optimizers (one update per step).
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.sums = torch.zeros(len(METRICS) + 1, device=device)  # last slot counts steps
        self.hist = torch.zeros(2, HIST_BINS, device=device)      # D(x), D(G(z)) for the epoch

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.nz, 1, 1, device=self.device)

    def _update(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)

    def step(self, batch_u8: torch.Tensor) -> None:
        real = to_model_input(batch_u8, self.channels_last)
        n = real.shape[0]
        self.D.requires_grad_(True)
        for _ in range(self.d_steps):
            with self._autocast():
                fake = self.G(self._noise(n))
                logit_real = self.D(real)
                logit_fake = self.D(fake.detach())
            loss_d = bce(logit_real, self.real_label) + bce(logit_fake, 0.0)
            self._update(self.opt_d, loss_d)
        # D's weights get no gradient in the G phase: less work, same result.
        self.D.requires_grad_(False)
        for i in range(self.g_steps):
            with self._autocast():
                if i > 0:  # the first G update reuses the D phase's fakes, as the reference does
                    fake = self.G(self._noise(n))
                loss_g = bce(self.D(fake), 1.0)
            self._update(self.opt_g, loss_g)
        self.D.requires_grad_(True)
        self.scaler.update()
        self._accumulate(loss_d, loss_g, logit_real, logit_fake)

    @torch.no_grad()
    def _accumulate(self, loss_d, loss_g, logit_real, logit_fake) -> None:
        p_real, p_fake = logit_real.float().sigmoid(), logit_fake.float().sigmoid()
        self.sums += torch.stack([loss_d.float(), loss_g.float(), p_real.mean(), p_fake.mean(),
                                  torch.ones((), device=self.device)])
        self.hist[0] += torch.histc(p_real, HIST_BINS, 0.0, 1.0)
        self.hist[1] += torch.histc(p_fake, HIST_BINS, 0.0, 1.0)

    def read(self) -> dict[str, float]:
        """Means since the last read (one host sync), then reset. Empty if no step ran."""
        sums = self.sums.tolist()
        self.sums.zero_()
        count = sums[-1]
        if count == 0:
            return {}
        return {k: v / count for k, v in zip(METRICS, sums)}

    def finite(self) -> bool:
        """False if any loss since the last read was NaN or infinite (one host sync)."""
        return bool(torch.isfinite(self.sums).all())

    def take_histograms(self) -> torch.Tensor:
        """The epoch's D(x) and D(G(z)) histograms (2 x HIST_BINS, on the host), then reset."""
        h = self.hist.cpu().clone()  # .cpu() is no copy on a CPU run
        self.hist.zero_()
        return h

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu().clone(), "hist": self.hist.cpu().clone(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.hist.copy_(state["hist"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
