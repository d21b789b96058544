import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, tiny_args
from fastdcgan.generate.cli import main
from fastdcgan.generate.export import load_generator
from fastdcgan.train import main as train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import make_celeba
    tmp = tmp_path_factory.mktemp("gen")
    root = make_celeba(tmp / "celeba", 16)
    assert train(tiny_args(root, tmp / "run", train__max_steps=3)) == 0
    return tmp / "run"


def pixels(path):
    return np.asarray(Image.open(path))


def test_same_seed_same_images_other_seed_other_images(run_dir, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["--checkpoint", str(run_dir), "--n", "9", "--seed", str(seed),
                     "--out", str(tmp_path / f"{name}.png")]) == 0
    a, b, c = (pixels(tmp_path / f"{n}.png") for n in "abc")
    assert a.shape == (3 * 34 + 2, 3 * 34 + 2, 3)  # 3x3 grid of 32px images, 2px padding
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_checkpoint_file_and_generator_pth_give_the_same_images(run_dir, tmp_path):
    from fastdcgan import checkpoint
    sources = [run_dir, checkpoint.latest(run_dir / "checkpoints"), run_dir / "generator.pth"]
    outs = []
    for i, src in enumerate(sources):
        out = tmp_path / f"{i}.png"
        assert main(["--checkpoint", str(src), "--n", "4", "--out", str(out)]) == 0
        outs.append(pixels(out))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_single_writes_one_png_per_image(run_dir, tmp_path):
    assert main(["--checkpoint", str(run_dir), "--n", "5", "--seed", "3", "--out", str(tmp_path / "faces"),
                 "--single"]) == 0
    files = sorted((tmp_path / "faces").glob("*.png"))
    assert len(files) == 5 and pixels(files[0]).shape == (32, 32, 3)
    assert [f.name for f in files] == [f"seed3_{i:05d}.png" for i in range(5)]
    # --seeds: each file is named by its seed, and holds that seed's face whatever list it came in
    for name, seeds in (("pair", "7,3"), ("alone", "7")):
        out = str(tmp_path / name)
        assert main(["--checkpoint", str(run_dir), "--seeds", seeds, "--out", out, "--single"]) == 0
    assert sorted(f.name for f in (tmp_path / "pair").glob("*.png")) == ["seed3.png", "seed7.png"]
    assert np.array_equal(pixels(tmp_path / "pair" / "seed7.png"), pixels(tmp_path / "alone" / "seed7.png"))


def test_loaded_generator_is_in_eval_mode(run_dir):
    G = load_generator(run_dir)
    assert not G.training and G.image_size == 32 and G.nz == 16


def test_cli_help_and_missing_checkpoint(tmp_path):
    r = run_cli("fastdcgan.generate", "--help")
    assert r.returncode == 0 and "--checkpoint" in r.stdout and "--single" in r.stdout
    r = run_cli("fastdcgan.generate", "--checkpoint", tmp_path / "nothing")
    assert r.returncode == 2 and "cannot load a generator" in r.stderr
