"""The sub-commands of python -m fastdcgan.generate, run as a user runs them, on a tiny trained run."""
import shutil

import numpy as np
import pytest
from PIL import Image

import fastdcgan
from fastdcgan import dissect
from fastdcgan.generate import main

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
    assert main(["grid", "--checkpoint", str(tiny_run), "--seeds", "2,5", "--nrow", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "5,2", "--frames", "3",
                 "--out", str(tmp_path / "w.png")]) == 0
    assert main(["--checkpoint", str(tiny_run), "--n", "1", "--seed", "5", "--out", str(tmp_path / "p.png")]) == 0
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
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "1,2,3", "--frames", "4", "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 2 * 4 + 1 and gif.size == (32, 32)
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "1,2,3", "--frames", "4", "--loop",
                 "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 3 * 4  # back to seed 1, without repeating it at the end


def test_mp4_without_ffmpeg_exits_2(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no ffmpeg to find
    assert main(["interpolate", "--checkpoint", str(tiny_run), "--seeds", "1,2", "--out", str(tmp_path / "w.mp4")]) == 2
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
    box = ["forget", "--checkpoint", str(tiny_run), "--positive", "1,5,9", "--negative", "2,3,4", "--out", str(out)]
    assert main(box + ["--box", "0.3,0.6,0.7,0.9", "--score", "logistic"]) == 0
    assert main(box + ["--box", "0.7,0.6,0.3,0.9"]) == 2
    feat = tmp_path / "maps.png"
    assert main(["features", "--checkpoint", str(tiny_run), "--seeds", "5", "--layer", "0", "--out", str(feat)]) == 0
    assert "32 maps of layer 0 (4x4)" in capsys.readouterr().out  # ngf 8 * 4 channels at 4x4
    assert Image.open(feat).size[0] > 6 * 44  # a 6x6 grid of tiles next to the face
