"""Real and generated images reach the FID network by one path: the training input's decode for the real
files, the PNG quantisation for G's output, and from uint8 on the same resize and network. So a
"generator" that draws exactly the decoded real images has their statistics, and scores 0 against them.
A step that only one of the two paths takes (a transposed or differently scaled real batch, a generated
image rounded otherwise) shows as a score above 0 for identical images."""
import numpy as np
import torch
from torch import nn

from conftest import make_celeba
from fastdcgan.data import folder
from fastdcgan.data.torch import ImageFiles
from fastdcgan.metrics import extractors
from fastdcgan.metrics.frechet import frechet_distance, generator_stats, real_stats


class Replay(nn.Module):
    """Draws the given uint8 NCHW images in order, as a generator's output in [-1, 1]."""

    nz = 4

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.register_buffer("images", images.float() / 127.5 - 1)
        self.anchor = nn.Parameter(torch.zeros(()))  # generator_stats finds G's device by its parameters
        self.drawn = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.images[self.drawn:self.drawn + len(z)]
        self.drawn += len(z)
        return out


def test_a_generator_that_draws_the_real_images_has_their_statistics_and_scores_zero(tmp_path, tiny_fid_net):
    files = folder.scan(make_celeba(tmp_path / "celeba", 10)).files
    decoded = ImageFiles(files, 32)  # the training input's decode, resize and crop: H x W x 3 uint8
    images = torch.stack([decoded[i] for i in range(len(files))]).permute(0, 3, 1, 2)
    extractor = extractors.load(str(tiny_fid_net))
    real, _ = real_stats(files, 32, extractor, batch=4)
    fake = generator_stats(Replay(images), len(files), extractor, batch=3)
    assert fake.n == real.n == len(files)
    assert np.allclose(fake.mean, real.mean, rtol=0, atol=1e-6)
    assert np.allclose(fake.cov, real.cov, rtol=0, atol=1e-6)
    # 0 up to the rounding of the square roots of the (many) zero eigenvalues of 10 images' covariance
    tolerance = 1e-4 * np.trace(real.cov)
    assert abs(frechet_distance(real, fake)) < tolerance
    # the same images transposed are another set: the comparison above can tell them apart
    other = generator_stats(Replay(images.transpose(2, 3)), len(files), extractor, batch=3)
    print(f"tolerance {tolerance:.2e}, transposed {frechet_distance(real, other):.2e}")
    assert frechet_distance(real, other) > 100 * tolerance
