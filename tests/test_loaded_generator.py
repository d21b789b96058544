"""fastdcgan.load_generator's sampling (README: `G.sample(16, seed=0)` as `--n 16 --seed 0`,
`G.sample_seeds([3, 17], truncation=0.8)` as `--seeds 3,17 --truncation 0.8`) draws what the command line
draws: the same images, and the same clipping of z, for every option it takes."""
import numpy as np
import pytest

import fastdcgan
from fastdcgan.generate.cli import main
from fastdcgan.plots import to_uint8
from test_generate_commands import TILE, pixels, tile, vivid_generator


@pytest.fixture(scope="module")
def vivid(tiny_run, tmp_path_factory):
    return vivid_generator(tiny_run, tmp_path_factory.mktemp("vivid") / "generator.pth")


CASES = {  # the API call, and the same images from the command line
    "sample": (lambda G, T: G.sample(3, seed=2, truncation=T), ["--n", "3", "--seed", "2"]),
    "sample_seeds": (lambda G, T: G.sample_seeds([3, 17, 5], truncation=T), ["--seeds", "3,17,5"]),
}


@pytest.mark.parametrize("truncation", [None, 0.4], ids=["plain", "truncated"])
@pytest.mark.parametrize("call", CASES)
def test_the_api_draws_what_the_command_line_draws(call, truncation, vivid, tmp_path):
    G = fastdcgan.load_generator(vivid)
    draw, flags = CASES[call]
    out = tmp_path / "grid.png"
    more = ["--truncation", str(truncation)] if truncation else []
    assert main(["grid", "--checkpoint", str(vivid), *flags, "--nrow", "3", "--out", str(out), *more]) == 0
    got = to_uint8(draw(G, truncation)).numpy().astype(int)
    grid = pixels(out)
    assert grid.shape == (TILE + 2, 3 * TILE + 2, 3)
    for k in range(3):
        assert np.abs(tile(grid, 0, k) - got[k]).max() <= 1, k
    if truncation:  # the clipping shows: the same call unclipped draws other images
        assert np.abs(to_uint8(draw(G, None)).numpy().astype(int) - got).max() > 1
