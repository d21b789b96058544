"""What interpolate, arithmetic and features draw, checked against the generator on the z each must give:
every output form of a walk (PNG strip, GIF, MP4) holds the walk's frames, each concept panel of
arithmetic is one row of its seeds' faces then their mean's, and features names the strongest channels of
the mean maps it shows."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastdcgan
from fastdcgan.generate import dissect
from fastdcgan.generate.cli import main
from fastdcgan.generate.latent import arithmetic, interpolation_path, jitter, seed_noise, typical_length
from test_generate_commands import TILE, close, pixels, rendered, tile, vivid_generator, where


@pytest.fixture(scope="module")
def vivid(tiny_run, tmp_path_factory):
    return vivid_generator(tiny_run, tmp_path_factory.mktemp("vivid") / "generator.pth")


# A stand-in ffmpeg on PATH that keeps what it is given: the raw RGB frames, and its arguments beside them.
FAKE_FFMPEG = """#!{python}
import json, sys
out = sys.argv[-1]
open(out, "wb").write(sys.stdin.buffer.read())
open(out + ".json", "w").write(json.dumps(sys.argv[1:]))
"""


@pytest.fixture
def ffmpeg(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "ffmpeg").write_text(FAKE_FFMPEG.format(python=sys.executable))
    (folder / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("loop", [False, True], ids=["open", "loop"])
def test_every_form_of_a_walk_holds_its_frames_at_the_rate_asked(vivid, tmp_path, ffmpeg, loop):
    G = fastdcgan.load_generator(vivid)
    frames = 2
    walk = interpolation_path(seed_noise([1, 2, 3] + ([1] if loop else []), 16), frames)
    want = rendered(G, walk)  # K x 32 x 32 x 3
    base = ["interpolate", "--checkpoint", str(vivid), "--seeds", "1,2,3", "--frames", str(frames),
            *(["--loop"] if loop else [])]
    for suffix in ("png", "gif", "mp4"):  # a PNG strip has no frame rate
        rate = [] if suffix == "png" else ["--fps", "5"]
        assert main([*base, *rate, "--out", str(tmp_path / f"walk.{suffix}")]) == 0
    # PNG: a row per pair of seeds (with --loop, the last back to the first), each from one seed to the next
    strip = pixels(tmp_path / "walk.png")
    rows = (len(want) - 1) // frames
    assert strip.shape == (rows * TILE + 2, (frames + 1) * TILE + 2, 3)
    for r in range(rows):
        for k in range(frames + 1):
            assert close(tile(strip, r, k), want[r * frames + k]), (r, k)
    # GIF and MP4: the walk's frames, a loop without its repeated first seed at the end, at 5 per second
    shown = want[:-1] if loop else want
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == len(shown) and gif.info["duration"] == 200
    raw = np.frombuffer((tmp_path / "walk.mp4").read_bytes(), np.uint8).reshape(-1, 32, 32, 3).astype(int)
    told = json.loads((tmp_path / "walk.mp4.json").read_text())
    assert float(told[told.index("-r") + 1]) == 5.0 and told[told.index("-s") + 1] == "32x32"
    assert len(raw) == len(shown) and all(close(a, b) for a, b in zip(raw, shown, strict=True))


@pytest.mark.parametrize("n", [3, 8])
def test_each_concept_panel_is_a_row_of_its_seeds_then_their_mean_and_the_results_a_square_ish_grid(
        n, vivid, tmp_path):
    """arithmetic's figure: a, b and c each one row (its seeds' faces, then their mean's at a typical
    length), left to right; then the n results in sqrt(n) rounded columns, as every grid is laid out
    (3 results: 2 columns, 8: 3)."""
    G = fastdcgan.load_generator(vivid)
    out = tmp_path / "sum.png"
    assert main(["arithmetic", "--checkpoint", str(vivid), "--a", "1,2", "--b", "3", "--c", "4,5,6",
                 "--n", str(n), "--noise", "1", "--out", str(out)]) == 0
    picture = pixels(out)
    right = -1
    for name, seeds in (("a", [1, 2]), ("b", [3]), ("c", [4, 5, 6])):
        z = seed_noise(seeds, 16)
        faces = rendered(G, torch.cat([z, typical_length(z.mean(0, keepdim=True))]))
        found = [where(picture, face) for face in faces]
        assert None not in found, f"panel {name} lacks a face: {found}"
        ys, xs = zip(*found, strict=True)
        assert len(set(ys)) == 1, f"panel {name} is not one row: {found}"
        steps = [b - a for a, b in zip(xs[:-1], xs[1:], strict=True)]
        assert steps == [TILE] * len(seeds), f"panel {name}: {found}"
        assert xs[0] > right, f"panel {name} is not right of the one before"
        right = xs[-1]
    z = jitter(arithmetic(*(seed_noise(s, 16) for s in ([1, 2], [3], [4, 5, 6]))), n, 1.0, 0)
    found = [where(picture, face) for face in rendered(G, z)]
    assert None not in found and min(x for _, x in found) > right, found
    cols = max(1, math.floor(math.sqrt(n) + 0.5))
    assert len({x for _, x in found}) == cols and len({y for y, _ in found}) == math.ceil(n / cols), found


def test_features_names_the_strongest_channels_of_the_mean_maps_of_its_seeds(tiny_run, tmp_path, capsys):
    G = fastdcgan.load_generator(tiny_run)
    maps = dissect.activations(G.net, seed_noise([0, 1, 2], 16), [1])[1]

    def strongest(m):
        return torch.argsort(m.mean(dim=(1, 2)), descending=True)[:10].tolist()
    want = strongest(maps.mean(0))
    assert want != strongest(maps[0]), "the first seed ranks the channels as the mean does: no test"
    assert main(["features", "--checkpoint", str(tiny_run), "--seeds", "0-2", "--layer", "1",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert capsys.readouterr().out.strip().endswith(f"strongest channels: {want}")
