"""FID during training (metrics/tracker.py) without a trainer: the start-up line, the metrics row,
the same noise at every evaluation, and checkpoints/best_fid kept as the run improves, across a
resume and on a filesystem without hard links. A tiny TorchScript network stands in for Inception."""
import json
import os

import pytest
import torch

from conftest import make_celeba
from fastdcgan import checkpoint, config
from fastdcgan.data import folder
from fastdcgan.metrics import tracker
from fastdcgan.metrics import extractors
from fastdcgan.metrics.frechet import stats_key
from fastdcgan.model import Generator


@pytest.fixture
def setup(tmp_path, tiny_fid_net):
    files = folder.scan(make_celeba(tmp_path / "celeba", 8)).files
    cfg = config.build(None, [f"fid.weights={tiny_fid_net}", "fid.n=6", "fid.batch=4", "fid.every=50",
                              "data.image_size=32", "data.workers=0", "data.split=train"])
    return cfg, files, tmp_path / "run" / "checkpoints"


def make(setup, ema=False):
    cfg, files, ckpt_dir = setup
    return tracker.FIDTracker(cfg, files, extractors.load(cfg.fid.weights), ckpt_dir, ema)


def test_prepare_says_what_is_measured_and_whether_the_real_statistics_were_cached(setup):
    t = make(setup, ema=True)
    first = t.prepare().splitlines()
    assert len(first) == 2
    assert (first[0].startswith("FID every 50 steps on 6 samples of the EMA generator; "
                                "real statistics of 8 images computed in ")
            and first[0].endswith(" s and cached"))
    key = stats_key(setup[1], 32, t.extractor.name)
    assert first[1].startswith(f"FID protocol: network {t.extractor.name}; 6 generated images against 8 real "
                               "(split train, decoded and cropped as in training at 32x32); ")
    assert first[1].endswith(f"; real statistics {key}")
    assert make(setup).prepare().splitlines()[0] == ("FID every 50 steps on 6 samples; "
                                                     "real statistics of 8 images from the cache")


def test_an_evaluation_is_a_metrics_row_with_the_same_noise_every_time(setup):
    t = make(setup, ema=True)
    torch.manual_seed(0)
    G = Generator(nz=16, ngf=8, image_size=32)
    rng = torch.get_rng_state()
    row = t.evaluate(G, step=100, epoch=3)  # prepares the real statistics itself
    assert torch.equal(torch.get_rng_state(), rng)  # training's random stream is untouched
    assert set(row) == {"step", "epoch", "fid", "fid_n", "fid_ema", "fid_s", "fid_network", "fid_stats",
                        "time"}
    assert (row["step"], row["epoch"], row["fid_n"], row["fid_ema"]) == (100, 3, 6, True)
    assert (row["fid_network"] == t.extractor.name
            and row["fid_stats"] == stats_key(setup[1], 32, t.extractor.name))
    assert row["fid"] > 0 and row["fid_s"] >= 0 and row["time"] > 1.6e9
    assert t.extractor.images_seen == 8 + 6
    again = t.evaluate(G, step=200, epoch=5)
    assert again["fid"] == row["fid"] and t.extractor.images_seen == 8 + 6 + 6  # real statistics kept


def rows(*fids):
    return [{"step": 10 * (i + 1), "fid": f, "fid_n": 6, "fid_ema": False} for i, f in enumerate(fids)]


def test_best_fid_is_a_hard_link_to_the_steps_checkpoint_and_outlives_its_rotation(setup):
    t = make(setup)
    ckpt_dir = setup[2]
    first, worse, better = rows(90.0, 95.0, 80.0)
    saved = checkpoint.save({"step": 10, "w": torch.ones(2)}, ckpt_dir, keep=1)
    assert t.keep_if_best(first, saved)
    assert os.path.samefile(ckpt_dir / "best_fid", saved)
    assert json.loads((ckpt_dir / "best_fid.json").read_text()) == {"step": 10, "fid": 90.0, "n": 6,
                                                                     "ema": False}
    assert not t.keep_if_best(worse, checkpoint.save({"step": 20}, ckpt_dir, keep=1))
    assert not saved.exists() and checkpoint.load(ckpt_dir / "best_fid")["step"] == 10  # rotated away, kept
    assert json.loads((ckpt_dir / "best_fid.json").read_text())["step"] == 10
    assert t.keep_if_best(better, checkpoint.save({"step": 30}, ckpt_dir, keep=1))
    assert checkpoint.load(ckpt_dir / "best_fid")["step"] == 30
    assert json.loads((ckpt_dir / "best_fid.json").read_text()) == {"step": 30, "fid": 80.0, "n": 6,
                                                                     "ema": False}
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best_fid", "best_fid.json", "latest",
                                                          "step_00000030.pt"]


def test_nan_is_never_best_and_a_resumed_run_keeps_its_best(setup):
    t = make(setup)
    assert not t.is_best({"fid": float("nan")}) and t.is_best({"fid": 1e9})
    t.keep_if_best(rows(70.0)[0], checkpoint.save({"step": 10}, setup[2], keep=1))
    resumed = make(setup)
    assert resumed.best == 70.0
    assert not resumed.is_best({"fid": 75.0}) and resumed.is_best({"fid": 65.0})
    (setup[2] / "best_fid.json").write_text("{not json")
    assert make(setup).best == float("inf")


def test_only_the_writing_rank_touches_files_but_every_rank_agrees_on_the_best(setup):
    t = make(setup)
    assert t.keep_if_best(rows(50.0)[0], None, write=False)
    assert t.best == 50.0 and not setup[2].exists()


def test_without_hard_links_best_fid_is_a_copy(setup, monkeypatch):
    t = make(setup)
    ckpt_dir = setup[2]
    saved = checkpoint.save({"step": 10, "w": torch.ones(2)}, ckpt_dir, keep=1)
    (ckpt_dir / "best_fid.link").write_text("left by a crash")

    def no_links(src, dst):
        raise OSError("operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    assert t.keep_if_best(rows(90.0)[0], saved)
    assert not os.path.samefile(ckpt_dir / "best_fid", saved)
    assert (ckpt_dir / "best_fid").read_bytes() == saved.read_bytes()
    assert not (ckpt_dir / "best_fid.link").exists()


class Clock:
    """tracker's time: perf_counter moves 1.23456 s per reading; time() a fixed wall time."""
    def __init__(self):
        self.now = 50.0

    def perf_counter(self):
        self.now += 1.23456
        return self.now

    def time(self):
        return 1.75e9


def test_the_timings_are_seconds_spent_to_the_hundredth(setup, monkeypatch):
    monkeypatch.setattr(tracker, "time", Clock())
    t = make(setup)
    assert "computed in 1 s and cached" in t.prepare()
    row = t.evaluate(Generator(nz=16, ngf=8, image_size=32), step=1, epoch=1)
    assert row["fid_s"] == 1.23 and row["time"] == 1.75e9


def test_the_feature_network_sees_batches_of_fid_batch_images(setup):
    t = make(setup)
    sizes = []
    net = t.extractor.net
    t.extractor.net = lambda x: sizes.append(len(x)) or net(x)
    t.evaluate(Generator(nz=16, ngf=8, image_size=32), step=1, epoch=1)
    assert sizes == [4, 4, 4, 2]  # 8 real images, then 6 generated, fid.batch = 4 at a time


def test_the_score_is_the_one_fastdcgan_fid_gives_for_the_same_generator(setup, tmp_path, capsys):
    """The trainer's FID row and `python -m fastdcgan.fid` agree (--seed 0, "as during training")."""
    from fastdcgan import fid
    cfg, files, _ = setup
    torch.manual_seed(0)
    G = Generator(nz=16, ngf=8, image_size=32)
    row = make(setup).evaluate(G, step=1, epoch=1)
    torch.save(G.state_dict(), tmp_path / "generator.pth")
    assert fid.main(["--checkpoint", str(tmp_path / "generator.pth"), "--data", str(tmp_path / "celeba"),
                     "--n", "6", "--batch", "4", "--weights", cfg.fid.weights, "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "fid.jsonl").read_text())["fid"] == row["fid"]


def test_an_equal_score_is_no_new_best(setup):
    t = make(setup)
    ckpt_dir = setup[2]
    assert t.keep_if_best(rows(60.0)[0], checkpoint.save({"step": 10}, ckpt_dir, keep=2))
    again = {"step": 20, "fid": 60.0, "fid_n": 6, "fid_ema": False}
    assert not t.keep_if_best(again, checkpoint.save({"step": 20}, ckpt_dir, keep=2))
    assert json.loads((ckpt_dir / "best_fid.json").read_text())["step"] == 10
