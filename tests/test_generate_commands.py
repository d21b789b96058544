"""The sub-commands of python -m fastdcgan.generate, run as a user runs them, on a tiny trained run."""
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fastdcgan
from fastdcgan.generate import dissect
from fastdcgan.generate.cli import main
from fastdcgan.generate.latent import seed_noise, typical_length

TILE = 32 + 2  # a 32px image and its 2px padding in a grid


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def tile(grid, row, col):
    return grid[2 + row * TILE: row * TILE + TILE, 2 + col * TILE: col * TILE + TILE]



@pytest.mark.parametrize("seeds", ["5-3", "x", "1,,2"])
def test_bad_seed_list_exits_2_with_one_line(tiny_run, seeds, capsys):
    with pytest.raises(SystemExit) as e:
        main(["grid", "--checkpoint", str(tiny_run), "--seeds", seeds])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--seeds" in err and "bad seed list" in err


def test_grid_and_interpolate_draw_seed_5_alike(tiny_run, tmp_path):
    assert main(["grid", "--checkpoint", str(tiny_run), "--seeds", "2,5", "--nrow", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "5,2", "--frames", "3",
                 "--out", str(tmp_path / "w.png")]) == 0
    assert main(["--checkpoint", str(tiny_run), "--n", "1", "--seed", "5",
                 "--out", str(tmp_path / "p.png")]) == 0
    grid, walk, plain = (pixels(tmp_path / f"{n}.png") for n in "gwp")
    assert grid.shape == (TILE + 2, 2 * TILE + 2, 3) and walk.shape == (TILE + 2, 4 * TILE + 2, 3)
    five = tile(grid, 0, 1)
    assert np.abs(tile(walk, 0, 0) - five).max() <= 1  # one rounding step at most (batch of 2 vs 4)
    assert np.abs(tile(walk, 0, 3) - tile(grid, 0, 0)).max() <= 1
    assert plain.shape == (32, 32, 3) and np.abs(plain - five).max() <= 1  # one image: no padding
    assert not np.array_equal(tile(grid, 0, 0), five)


def test_grid_seeds_and_n_are_exclusive(tiny_run, capsys):
    assert main(["grid", "--checkpoint", str(tiny_run), "--seeds", "1", "--n", "4"]) == 2
    assert "not both" in capsys.readouterr().err


def test_gif_has_one_frame_per_step(tiny_run, tmp_path):
    out = tmp_path / "walk.gif"
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "1,2,3", "--frames", "4",
                 "--out", str(out)]) == 0
    with Image.open(out) as gif:
        # an endlessly looping GIF (the NETSCAPE loop extension, count 0): without it a viewer plays it once
        assert gif.n_frames == 2 * 4 + 1 and gif.size == (32, 32) and gif.info.get("loop") == 0
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "1,2,3", "--frames", "4", "--loop",
                 "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 3 * 4 and gif.info.get("loop") == 0  # back to seed 1, not repeating it


@pytest.mark.parametrize("n", range(2, 11))  # one image is itself, unpadded (make_grid)
def test_every_figure_holds_each_image_it_is_given_in_a_square_ish_grid(n):
    """The figure helpers: sample_grid (training's grids, generate grid), grid_image (the faces of forget,
    features and arithmetic) and labeled_tiles (features' channel maps). Each of the n images gets a
    place of its own, none cut off by a last row that is not full, and sample_grid is as square as n
    allows: sqrt(n) rounded columns (8 images: 3 x 3 with one empty, not 2 x 4)."""
    from fastdcgan import plots
    cols = math.floor(math.sqrt(n) + 0.5)
    white = plots.sample_grid(torch.ones(n, 3, 4, 4))  # on black padding
    assert white.shape == (3, math.ceil(n / cols) * 6 + 2, cols * 6 + 2)
    assert int((white == 1).all(0).sum()) == n * 16
    faces = np.asarray(plots.grid_image(-torch.ones(n, 3, 4, 4), nrow=3))  # black on white
    assert int((faces == 0).all(-1).sum()) == n * 16
    maps = np.asarray(plots.labeled_tiles(torch.zeros(n, 4, 4), [""] * n, tile=8, nrow=3))  # 8x8 tiles
    assert int((maps == 0).all(-1).sum()) == n * 64


def test_mp4_without_ffmpeg_exits_2(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no ffmpeg to find
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "1,2",
                 "--out", str(tmp_path / "w.mp4")]) == 2
    assert "ffmpeg" in capsys.readouterr().err and not (tmp_path / "w.mp4").exists()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_mp4_with_ffmpeg(tiny_run, tmp_path):
    out = tmp_path / "w.mp4"
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "1,2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_arithmetic_figure(tiny_run, tmp_path, capsys):
    out = tmp_path / "sum.png"
    assert main(["arithmetic", "--checkpoint", str(tiny_run), "--a", "1,2,3", "--b", "4,5,6", "--c", "7,8,9",
                 "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert h >= 3 * TILE and w >= 3 * 4 * TILE + 3 * TILE  # three panels of 3 seeds + mean, a 3x3 result
    assert "a - b + c" in capsys.readouterr().out


def test_bad_layer_or_channel_is_a_clear_error(tiny_run, capsys):
    with pytest.raises(ValueError, match="hidden layers 0..2"):
        dissect.layer_index(fastdcgan.load_generator(tiny_run).net, 3)
    assert main(["forget", "--checkpoint", str(tiny_run), "--layer", "0", "--drop-channels", "999"]) == 2
    assert "channels [999] do not exist" in capsys.readouterr().err


def test_forgets_scores_are_dissects_against_the_reference_seeds_that_are_not_positives(tiny_run, tmp_path,
                                                                                        capsys):
    """Without --negative, the positives are scored against the reference seeds (the faces forget shows
    by default, which a user may well mark) less the positives themselves: a seed cannot be both."""
    from fastdcgan.generate.forget import REFERENCE_SEEDS
    G = fastdcgan.load_generator(tiny_run)
    positive = list(REFERENCE_SEEDS[:3])
    negative = list(REFERENCE_SEEDS[3:])
    feats = [dissect.channel_means(G.net, seed_noise(s, G.nz), 1, None) for s in (positive, negative)]
    score = dissect.score_channels(*feats, method="diff")
    want = [(c, f"{score[c]:+.3f}") for c in dissect.top_channels(score, 4)]
    assert main(["forget", "--checkpoint", str(tiny_run), "--positive", ",".join(map(str, positive)),
                 "--k", "4", "--layer", "1", "--out", str(tmp_path / "forget.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    got = [(int(c), v) for c, v in (line.split() for line in lines[1:1 + len(want)])]
    assert lines[0].startswith("channel  score") and got == want


def test_forget_and_features_commands(tiny_run, tmp_path, capsys):
    out = tmp_path / "forget.png"
    assert main(["forget", "--checkpoint", str(tiny_run), "--positive", "1,5,9", "--k", "3", "--layer", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropped layer 1 channels" in printed and "--drop-channels" in printed
    w, h = Image.open(out).size
    assert w >= 2 * 8 * TILE and h >= 2 * TILE  # before and after: 3 positives + 8 reference seeds
    assert main(["forget", "--checkpoint", str(tiny_run), "--drop-channels", "0,1", "--seeds", "0-3",
                 "--out", str(out)]) == 0
    assert main(["forget", "--checkpoint", str(tiny_run), "--out", str(out)]) == 2
    box = ["forget", "--checkpoint", str(tiny_run), "--positive", "1,5,9", "--negative", "2,3,4",
           "--out", str(out)]
    assert main(box + ["--box", "0.3,0.6,0.7,0.9", "--score", "logistic"]) == 0
    assert main(box + ["--box", "0.7,0.6,0.3,0.9"]) == 2
    feat = tmp_path / "maps.png"
    assert main(["features", "--checkpoint", str(tiny_run), "--seeds", "5", "--layer", "0",
                 "--out", str(feat)]) == 0
    assert "32 maps of layer 0 (4x4)" in capsys.readouterr().out  # ngf 8 * 4 channels at 4x4
    assert Image.open(feat).size[0] > 6 * 44  # a 6x6 grid of tiles next to the face


# ---- the options take effect: each output is compared with G on the z the option must give -----

def vivid_generator(run, out):
    """The run's generator.pth with its last layer scaled so that images span the grey levels.

    After 3 steps the tiny generator draws the same flat grey (127/128) from every z; a test that
    tells z apart by pixels needs images that depend on z by more than a rounding step."""
    state = torch.load(run / "generator.pth", weights_only=True)
    body = torch.nn.Sequential(*list(fastdcgan.load_generator(run).net.main)[:-1])  # all but the Tanh
    last = [k for k in state if k.endswith(".weight")][-1]
    with torch.no_grad():
        state[last] = state[last] / body(seed_noise(range(8), 16)).std()  # pre-Tanh spread about 1
    torch.save(state, out)
    return out


@pytest.fixture(scope="module")
def vivid(tiny_run, tmp_path_factory):
    return vivid_generator(tiny_run, tmp_path_factory.mktemp("vivid") / "generator.pth")


def rendered(G, z):
    """G(z) as the tiles of a PNG show it: uint8 HWC, as every writer converts."""
    from fastdcgan.plots import to_uint8
    with torch.no_grad():
        return to_uint8(G(z)).numpy().astype(int)


def close(a, b):
    return np.abs(a - b).max() <= 1  # one rounding step at most (other batch sizes)


def test_truncation_clips_each_z_to_its_norm(vivid, tmp_path):
    G = fastdcgan.load_generator(vivid)
    z = seed_noise([0, 1, 2, 3], 16)
    limit = 0.5 * 16 ** 0.5  # T * sqrt(nz); a standard normal z of 16 is about 4 long, so every z is clipped
    clipped = z * (limit / z.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
    for name, extra in (("plain", []), ("trunc", ["--truncation", "0.5"])):
        assert main(["grid", "--checkpoint", str(vivid), "--seeds", "0-3", "--nrow", "4",
                     "--out", str(tmp_path / f"{name}.png"), *extra]) == 0
    plain, trunc = pixels(tmp_path / "plain.png"), pixels(tmp_path / "trunc.png")
    want_plain, want_trunc = rendered(G, z), rendered(G, clipped)
    assert not close(want_plain[0], want_trunc[0])  # the clipping shows in the images
    for i in range(4):
        assert close(tile(plain, 0, i), want_plain[i]) and close(tile(trunc, 0, i), want_trunc[i])


@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_interpolate_method_sets_the_path(vivid, tmp_path, method):
    """With --frames 2 the middle frame is t = 1/2: (z0 + z1) / 2 for linear, and on the great
    circle (z0 + z1) / (2 cos(omega / 2)) for slerp; the two differ by a third in length."""
    G = fastdcgan.load_generator(vivid)
    z0, z1 = seed_noise([1, 2], 16)
    omega = torch.arccos(torch.dot(z0.flatten(), z1.flatten()) / (z0.norm() * z1.norm()))
    middle = {"linear": (z0 + z1) / 2, "slerp": (z0 + z1) / (2 * torch.cos(omega / 2))}
    out = tmp_path / "walk.png"
    assert main(["interpolate", "--checkpoint", str(vivid), "--seeds", "1,2", "--frames", "2",
                 "--method", method, "--out", str(out)]) == 0
    got = tile(pixels(out), 0, 1)
    other = "linear" if method == "slerp" else "slerp"
    assert close(got, rendered(G, middle[method][None])[0])
    assert not close(got, rendered(G, middle[other][None])[0])


@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_truncation_clips_each_frame_of_the_walk_it_does_not_change_the_walk(vivid, tmp_path, method):
    """interpolate --truncation T: each frame is the walk's z clipped, as grid clips each seed's z; not a
    walk between clipped seeds, whose middle frames are shorter and paler (linear: by the angle between
    the seeds) or point elsewhere (slerp between clipped seeds of unequal length)."""
    from fastdcgan.generate.latent import interpolation_path, truncate
    G = fastdcgan.load_generator(vivid)
    z = seed_noise([1, 2], 16)
    walk = truncate(interpolation_path(z, 2, method), 0.5)
    between_clipped = interpolation_path(truncate(z, 0.5), 2, method)
    out = tmp_path / "walk.png"
    assert main(["interpolate", "--checkpoint", str(vivid), "--seeds", "1,2", "--frames", "2",
                 "--method", method, "--truncation", "0.5", "--out", str(out)]) == 0
    strip = pixels(out)
    for k in range(3):
        assert close(tile(strip, 0, k), rendered(G, walk[k:k + 1])[0])
    assert not close(tile(strip, 0, 1), rendered(G, between_clipped[1:2])[0])


def where(picture, face):
    """The top-left corner of this 32x32 face (within one rounding step) in the picture, or None."""
    h, w = face.shape[:2]
    for y, x in np.argwhere(np.abs(picture[: 1 - h or None, : 1 - w or None] - face[0, 0]).max(-1) <= 1):
        if np.abs(picture[y: y + h, x: x + w] - face).max() <= 1:
            return int(y), int(x)
    return None


def contains(picture, face):
    """Whether the picture holds this 32x32 face (within one rounding step) anywhere."""
    return where(picture, face) is not None


def test_arithmetic_result_is_mean_a_minus_mean_b_plus_mean_c(vivid, tmp_path):
    G = fastdcgan.load_generator(vivid)
    a, b, c = (seed_noise(s, 16).mean(0, keepdim=True) for s in ([1, 2], [3, 4], [5, 6]))
    out = tmp_path / "sum.png"
    assert main(["arithmetic", "--checkpoint", str(vivid), "--a", "1,2", "--b", "3,4", "--c", "5,6",
                 "--n", "1", "--out", str(out)]) == 0  # n 1: the exact result, no noisy neighbours
    picture = pixels(out)
    assert contains(picture, rendered(G, a - b + c)[0])
    for swapped in (b - a + c, a + b - c):  # the minus on another term
        assert not contains(picture, rendered(G, swapped)[0])
    # each concept's mean face beside its seeds' faces, at a z's typical length: a mean of two z is
    # about 0.7 times as long, and G draws a washed-out face from it
    for mean in (a, b, c):
        assert contains(picture, rendered(G, typical_length(mean))[0])
        assert not contains(picture, rendered(G, mean)[0])


def test_arithmetic_shows_the_exact_result_in_the_middle_of_its_seeded_neighbours(vivid, tmp_path):
    """The paper's layout: the exact result in the middle of the grid, the noisy copies around it in the
    order --noise-seed draws them (reading order: copies 1-4, the result, copies 5-8)."""
    from fastdcgan.generate.latent import arithmetic, jitter
    G = fastdcgan.load_generator(vivid)
    z = jitter(arithmetic(*(seed_noise(s, 16) for s in ([1, 2], [3], [4]))), 9, 0.5, 3)
    out = tmp_path / "sum.png"
    assert main(["arithmetic", "--checkpoint", str(vivid), "--a", "1,2", "--b", "3", "--c", "4", "--n", "9",
                 "--noise", "0.5", "--noise-seed", "3", "--out", str(out)]) == 0
    picture = pixels(out)
    found = [where(picture, face) for face in rendered(G, z)]
    assert None not in found
    reading_order = sorted(range(9), key=lambda k: found[k])
    assert reading_order == [1, 2, 3, 4, 0, 5, 6, 7, 8]
    assert len({y for y, _ in found}) == len({x for _, x in found}) == 3  # a 3x3 grid


# Each sub-command that draws z, with arguments that make it draw several images.
DRAWING = {"grid": ["--seeds", "0-3"], "interpolate": ["--seeds", "1,2", "--frames", "2"],
           "arithmetic": ["--a", "1,2", "--b", "3", "--c", "4", "--n", "3"],
           "forget": ["--drop-channels", "1", "--seeds", "1,2"], "features": ["--seeds", "0,1"]}


def test_every_sub_command_with_truncation_is_listed():
    from fastdcgan.generate.cli import COMMANDS
    truncating = {name for name, (build, _) in COMMANDS.items()
                  if any("--truncation" in a.option_strings for a in build()._actions)}
    assert truncating == set(DRAWING)


@pytest.mark.parametrize("command", DRAWING)
def test_truncation_reaches_every_image_a_sub_command_draws(tiny_run, tmp_path, monkeypatch, command):
    """Every z the generator draws an image from is clipped to --truncation T (norm <= T sqrt(nz)): the
    concept faces and the results of arithmetic, the walk, the grids before and after forget. A flag that
    reaches some of the images still changes the picture, which is all test_every_flag.py can see."""
    from fastdcgan.generate import cli
    norms, load = [], cli.load_generator

    def observed(*args, **kw):  # the real generator, with a hook that only reads what it is given
        G = load(*args, **kw)
        G.register_forward_pre_hook(lambda m, inputs: norms.append(inputs[0].detach().flatten(1).norm(dim=1)))
        return G
    monkeypatch.setattr(cli, "load_generator", observed)
    assert main([command, "--checkpoint", str(tiny_run), *DRAWING[command], "--truncation", "0.3",
                 "--out", str(tmp_path / "out.png")]) == 0
    drawn = torch.cat(norms)
    assert len(drawn) >= 2 and float(drawn.max()) <= 0.3 * 16 ** 0.5 * (1 + 1e-5)  # tiny_run: nz 16
