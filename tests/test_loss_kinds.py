"""A loss name the losses do not know is an error that names it (the config refuses it first; this
is what a caller of fastdcgan.losses gets)."""
import pytest
import torch

from fastdcgan import losses


def test_an_unknown_loss_is_named():
    out = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown loss 'wgan'"):
        losses.d_loss("wgan", out, out)
    with pytest.raises(ValueError, match="unknown loss 'wgan'"):
        losses.g_loss("wgan", out)
