"""The pictures a user reads (plots.py): each shows the numbers it names, where it says. The figures'
data are read from matplotlib's artists as they are saved; the images from the files written."""
import json
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from fastdcgan import plots


def read_axes(ax) -> dict:
    """What one matplotlib axes shows: its words, ranges, lines, bars, legend and annotations."""
    legend = ax.get_legend()
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "ylim": ax.get_ylim(), "xlim": ax.get_xlim(),
            "lines": {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()), ln.get_marker())
                      for ln in ax.get_lines()},
            "bars": [[(p.get_x() + p.get_width() / 2, p.get_height(), p.get_width()) for p in c]
                     for c in ax.containers],
            "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            "texts": [(t.get_text(), t.xy) for t in ax.texts]}


@pytest.fixture
def figures(monkeypatch):
    """Each figure plots.py saves, its axes read just before the real _save writes and closes it."""
    seen = []
    save = plots._save

    def keep(fig, out, *metadata):
        seen.append([read_axes(ax) for ax in fig.axes])
        save(fig, out, *metadata)
    monkeypatch.setattr(plots, "_save", keep)
    return seen


def write_rows(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    return path


def test_metrics_rows_skip_cut_lines_and_rows_without_a_step(tmp_path):
    lines = ['{"step": 1, "loss_d": 0.5}', '{"step": 2, "lo', "[1, 2]", '{"fid": 3.0}', '{"step": 3}']
    assert plots.parse_metrics(lines) == [{"step": 1, "loss_d": 0.5}, {"step": 3}]
    assert plots.read_metrics(tmp_path / "none.jsonl") == []


def loss_rows(n):
    return [{"step": 10 * (i + 1), "loss_d": 1.0 + i, "loss_g": 2.0 + i, "d_real": 0.9 - 0.01 * i,
             "d_fake": 0.1 + 0.01 * i} for i in range(n)]


def png_size(path):
    with Image.open(path) as im:
        return im.size


@pytest.mark.parametrize("n", [3, 19, 20])
def test_the_loss_plot_shows_each_loss_and_d_output_under_its_name(tmp_path, figures, n):
    rows = loss_rows(n)
    metrics = write_rows(tmp_path / "metrics.jsonl", rows[:2] + [{"step": 15, "fid": 40.0}] + rows[2:])
    out = tmp_path / "run" / "plots" / "loss.png"
    plots.plot_losses(metrics, out)
    plots.plot_losses(metrics, out)  # drawn again over the last drawing, as every log step does
    assert png_size(out) == (900, 700) and plt.get_fignums() == []  # written, and the figure closed
    (top, bottom), again = figures
    assert again == [top, bottom]
    steps = [r["step"] for r in rows]  # the FID row is not a loss row
    marker = "o" if n < 20 else "None"  # a few points are drawn as points
    for ax, names in ((top, {"D": "loss_d", "G": "loss_g"}),
                      (bottom, {"D(x)": "d_real", "D(G(z))": "d_fake"})):
        assert ax["lines"] == {label: (steps, [r[k] for r in rows], marker) for label, k in names.items()}
        assert ax["legend"] == list(names)
    assert bottom["ylim"] == (0, 1) and bottom["xlabel"] == "step" and top["ylabel"] == "loss"


def test_the_fid_plot_marks_the_best_score_and_says_which_generator(tmp_path, figures):
    rows = [{"step": 100, "fid": float("nan"), "fid_n": 200}, {"step": 150, "loss_d": 1.0},
            {"step": 200, "fid": 90.0, "fid_n": 200}, {"step": 300, "fid": 35.5, "fid_n": 200},
            {"step": 400, "fid": 41.0, "fid_n": 500, "fid_ema": True}]
    metrics = write_rows(tmp_path / "m.jsonl", rows)
    plots.plot_fid(metrics, tmp_path / "a" / "plots" / "fid.png")
    plots.plot_fid(write_rows(tmp_path / "p.jsonl", rows[:4]), tmp_path / "fid2.png")
    (ax,), (plain,) = figures
    (xs, ys, marker), = ax["lines"].values()
    assert xs == [100, 200, 300, 400] and ys[1:] == [90.0, 35.5, 41.0] and marker == "o"
    assert ax["texts"] == [("best 35.5", (300, 35.5))]  # the NaN is never the best, even first
    assert ax["title"] == "FID on 500 samples (EMA generator), lower is better"  # the newest score's
    assert plain["title"] == "FID on 200 samples, lower is better"
    assert ax["ylabel"] == "FID" and ax["xlabel"] == "step" and png_size(tmp_path / "fid2.png") == (800, 450)
    plots.plot_fid(write_rows(tmp_path / "n.jsonl", rows[1:2]), tmp_path / "none.png")
    plots.plot_losses(write_rows(tmp_path / "o.jsonl", rows[:1]), tmp_path / "none2.png")
    assert len(figures) == 2  # no rows of its kind: no figure, no file
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "none2.png").exists()


def test_the_d_output_histogram_shows_each_rows_fractions_at_its_bins(tmp_path, figures):
    hist = torch.tensor([[0.0, 1.0, 3.0, 4.0], [6.0, 2.0, 0.0, 0.0]])
    plots.plot_d_outputs(hist, 3, tmp_path / "r" / "plots" / "d.png", axis="critic output", first=1)
    plots.plot_d_outputs(torch.zeros(2, 4), 5, tmp_path / "e.png", first=5)  # no rows: no division by 0
    plots.plot_d_outputs(hist, 3, tmp_path / "f.png")  # first = 0: that epoch alone
    (ax,), (empty,), (alone,) = figures
    assert alone["title"] == "Discriminator outputs, epoch 3"
    assert png_size(tmp_path / "e.png") == (800, 450)
    real, fake = ax["bars"]
    assert [round(h, 6) for _, h, _ in real] == [0.0, 0.125, 0.375, 0.5]
    assert [round(h, 6) for _, h, _ in fake] == [0.75, 0.25, 0.0, 0.0]
    assert [x for x, _, _ in real] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert {w for _, _, w in real + fake} == {0.25}
    assert ax["legend"] == ["D(x), real", "D(G(z)), fake"] and ax["xlabel"] == "critic output"
    assert ax["title"] == "Discriminator outputs, epochs 1-3" and ax["xlim"] == (0, 1)
    assert ax["ylabel"] == "fraction of images"
    assert empty["title"] == "Discriminator outputs, epoch 5" and all(h == 0 for _, h, _ in empty["bars"][0])


def tiles(n, side=4):
    """n images, image k all one value, spread over [-1, 1]."""
    values = torch.linspace(-1, 1, n)
    return values.view(n, 1, 1, 1).expand(n, 3, side, side).clone(), values


@pytest.mark.parametrize("n, nrow, cols", [(64, None, 8), (10, None, 3), (2, None, 1), (10, 4, 4)])
def test_a_grid_puts_image_k_at_row_k_over_nrow_in_zero_to_one(n, nrow, cols, tmp_path):
    images, values = tiles(n)
    grid = plots.sample_grid(images, nrow)
    rows = -(-n // cols)
    assert grid.shape == (3, 2 + rows * 6, 2 + cols * 6)  # 2 pixels of padding around each 4x4 image
    for k in range(n):
        y, x = 2 + (k // cols) * 6, 2 + (k % cols) * 6
        assert torch.allclose(grid[:, y:y + 4, x:x + 4], (values[k] + 1) / 2), k
    path = tmp_path / "a" / "grid.png"
    plots.save_grid(images, path, nrow)  # the file is that grid, rounded as save_image rounds
    written = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    assert torch.equal(written, grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8))


def test_to_uint8_rounds_as_the_saved_grids_do(tmp_path):
    images = torch.rand(1, 3, 5, 7) * 2.4 - 1.2  # out of range too: clamped
    plots.save_grid(images, tmp_path / "one.png")  # a grid of one image is that image, unpadded
    written = torch.from_numpy(np.array(Image.open(tmp_path / "one.png")))
    assert torch.equal(plots.to_uint8(images)[0], written)


def test_grid_image_is_save_grids_layout_on_white(tmp_path):
    images, values = tiles(5)
    images = images * 0.5  # not the whole range: a grid must not stretch it
    pic = np.asarray(plots.grid_image(images, nrow=3, pad=1))
    assert pic.shape == (1 + 2 * 5, 1 + 3 * 5, 3)
    for k in range(5):
        y, x = 1 + (k // 3) * 5, 1 + (k % 3) * 5
        assert (pic[y:y + 4, x:x + 4] == plots.to_uint8(images[k:k + 1])[0, 0, 0].numpy()).all(), k
    assert (pic[6:10, 11:15] == 255).all() and (pic[0] == 255).all()  # the empty place and the padding
    assert (np.asarray(plots.grid_image(-torch.ones(1, 3, 2, 2), nrow=1)) == 0).all()  # black is 0


def test_a_gif_has_every_frame_at_the_rate_asked_and_loops(tmp_path):
    frames, _ = tiles(6, side=8)
    plots.save_gif(frames, tmp_path / "g" / "h" / "a.gif", fps=20)
    plots.save_gif(frames[:2], tmp_path / "g" / "h" / "b.gif", fps=20)  # into a folder that is there
    with Image.open(tmp_path / "g" / "h" / "a.gif") as gif:
        assert gif.n_frames == 6 and gif.info["loop"] == 0
        for k in range(6):
            gif.seek(k)
            assert gif.info["duration"] == 50
            expected = plots.to_uint8(frames[k:k + 1])[0].numpy()
            assert np.array_equal(np.asarray(gif.convert("RGB")), expected), k


FAKE_FFMPEG = """#!{python}
import json, sys
data = sys.stdin.buffer.read()
out = sys.argv[-1]
if "fail" in out:
    sys.stderr.write("no encoder here\\n")
    sys.exit(1)
open(out, "w").write(json.dumps({{"args": sys.argv[1:], "bytes": len(data), "first": list(data[:3])}}))
"""


def test_an_mp4_is_every_frame_piped_raw_to_ffmpeg_at_its_size_and_rate(tmp_path):
    """What save_mp4 hands ffmpeg, read by a stand-in ffmpeg that records it (the real one is
    tested in test_generate_commands.py where it is installed)."""
    ffmpeg = tmp_path / "ffmpeg"
    ffmpeg.write_text(FAKE_FFMPEG.format(python=sys.executable))
    ffmpeg.chmod(0o755)
    frames = torch.full((5, 3, 6, 10), 1.0)
    plots.save_mp4(frames, tmp_path / "v" / "a.mp4", fps=24, ffmpeg=str(ffmpeg))
    told = json.loads((tmp_path / "v" / "a.mp4").read_text())
    args = told["args"]
    assert told["bytes"] == 5 * 6 * 10 * 3 and told["first"] == [255, 255, 255]
    assert args[args.index("-s") + 1] == "10x6" and args[args.index("-r") + 1] == "24"
    assert args[args.index("-pix_fmt") + 1] == "rgb24"
    assert args[-2:] == ["yuv420p", str(tmp_path / "v" / "a.mp4")]
    with pytest.raises(RuntimeError, match="ffmpeg failed: no encoder here"):
        plots.save_mp4(frames, tmp_path / "fail.mp4", fps=24, ffmpeg=str(ffmpeg))


def test_labeled_tiles_scale_each_map_by_a_whole_factor_under_its_label():
    maps = torch.stack([torch.full((3, 2), v) for v in (0.0, 0.5, 0.3)])
    maps[1, 0, 0] = 1.0
    pic = np.asarray(plots.labeled_tiles(maps, ["a", "b", "c"], tile=12, nrow=2))
    assert np.asarray(plots.labeled_tiles(maps, ["a", "b", "c"], tile=3, nrow=3)).shape[1] == 3 * (2 + 2) + 2
    scale, pad, label = 4, plots.PAD, 11  # round(12 / 3)
    tw, th = 2 * scale, 3 * scale
    assert pic.shape == (2 * (th + label + pad) + pad, 2 * (tw + pad) + pad, 3)
    for k, v in enumerate((0, 128, 76)):  # 255 x 0.3 = 76.5, rounded to even
        x, y = pad + (k % 2) * (tw + pad), pad + (k // 2) * (th + label + pad) + label
        tile = pic[y:y + th, x:x + tw]
        if k == 1:
            # one map pixel: a square of scale x scale
            assert (tile[:scale, :scale] == 255).all() and (tile[scale:] == v).all()
        else:
            assert (tile == v).all(), k
        assert (pic[y - label:y, x:x + tw] < 255).any()  # its label is drawn above it
    assert (pic[-(th + pad):-pad, -(tw + pad):-pad] == 255).all()  # no fourth map: white


def test_compose_sets_captioned_pictures_side_by_side_top_aligned():
    a, b = Image.new("RGB", (10, 20), (255, 0, 0)), Image.new("RGB", (30, 5), (0, 0, 255))
    pic = plots.compose([("left", a), ("right", b)], gap=4)
    assert pic.size == (4 + 10 + 4 + 30 + 4, 20 + 14 + 2 * plots.PAD)
    arr = np.asarray(pic)
    assert (arr[14:34, 4:14] == (255, 0, 0)).all() and (arr[14:19, 18:48] == (0, 0, 255)).all()
    assert (arr[19:, 18:48] == 255).all()  # under the shorter picture: white
    assert (arr[:14, 4:14] < 255).any() and (arr[:14, 18:48] < 255).any()  # each caption above its picture


def test_pictures_go_into_folders_made_for_them(tmp_path):
    for name in ("p.png", "q.png"):  # the second into the folder the first made
        plots.save_picture(Image.new("RGB", (4, 4)), tmp_path / "x" / "y" / name)
        assert png_size(tmp_path / "x" / "y" / name) == (4, 4)
    plots.save_grid(torch.zeros(2, 3, 4, 4), tmp_path / "s" / "t" / "g.png")
    assert png_size(tmp_path / "s" / "t" / "g.png") == (8, 14)  # two images: one column
