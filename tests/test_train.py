"""The trainer end to end, on tiny models and data made here: artefacts, resume, signals, faults."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli, tiny_args, wait_for_step, weights
from test_config_rules import INERT
from fastdcgan import checkpoint, config, plots
from fastdcgan.generate.export import load_generator
from fastdcgan.model import fixed_noise, sample
from fastdcgan.train import main

# 48 images, batch 8: 6 steps per epoch, 12 steps in 2 epochs.


def test_short_run_writes_every_artefact(celeba, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run)) == 0
    assert (run / "config.toml").read_text().count("image_size = 32") == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    for key in ("epoch", "images", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s"):
        assert key in rows[-1]
    assert rows[-1]["images"] == 12 * 8
    for name in ("reals.png", "step_00000004.png", "step_00000012.png", "epoch_001.png", "epoch_002.png"):
        assert (run / "samples" / name).is_file(), name
    for name in ("loss.png", "d_outputs_epoch_001.png", "d_outputs_epoch_002.png"):
        assert (run / "plots" / name).is_file(), name
    latest = checkpoint.latest(run / "checkpoints")
    assert latest.name == "step_00000012.pt"
    s = torch.load(latest, weights_only=True)
    assert s["step"] == 12 and s["epoch"] == 2 and s["config"]["model"]["ngf"] == 8
    for key in ("G", "D", "opt_g", "opt_d", "rng", "batch_in_epoch"):
        assert key in s
    G = weights(run / "generator.pth")
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in G)
    assert all(torch.equal(G[k], s["G"][k]) for k in G)
    assert weights(run / "discriminator.pth").keys() == s["D"].keys()


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_every_grid_is_what_its_steps_checkpoint_samples(celeba, tmp_path, ema):
    """Each grid of samples/ (every sample.every steps, at each epoch's end, and at the last step of a run
    that ends mid-epoch) is the fixed noise through the generator that samples at its step: the EMA's
    when model.ema is on, as `generate --ema` reads it from that step's checkpoint; else G."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, model__ema=ema, train__max_steps=10, ckpt__every=1,
                          ckpt__keep=20)) == 0
    cfg = config.build(run / "config.toml", [])
    z = fixed_noise(cfg.sample.n, cfg.model.nz, cfg.train.seed + 1)
    grids = {"step_00000004.png": 4, "epoch_001.png": 6, "step_00000008.png": 8, "step_00000010.png": 10}
    assert sorted(p.name for p in (run / "samples").iterdir()) == sorted([*grids, "reals.png"])
    for name, step in grids.items():
        G = load_generator(run / "checkpoints" / f"step_{step:08d}.pt", ema=bool(ema)).net
        plots.write_grid(plots.sample_grid(sample(G, z)), tmp_path / name)
        assert np.array_equal(np.asarray(Image.open(run / "samples" / name)),
                              np.asarray(Image.open(tmp_path / name))), name


def test_resume_is_bit_identical_mid_epoch(celeba, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(tiny_args(celeba, whole, train__max_steps=9)) == 0
    # stops in epoch 2, batch 5 of 6... of epoch 1
    assert main(tiny_args(celeba, split, train__max_steps=5)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=9)) == 0  # resumes from step 5
    a, b = weights(whole / "generator.pth"), weights(split / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = weights(whole / "discriminator.pth"), weights(split / "discriminator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(checkpoint.latest(whole / "checkpoints"), weights_only=True)
    sb = torch.load(checkpoint.latest(split / "checkpoints"), weights_only=True)
    assert sa["opt_d"]["state"][0]["step"] == sb["opt_d"]["state"][0]["step"] == 9
    steps = [json.loads(x)["step"] for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log rows after the resume


def same_state(a, b, where: str = "") -> list[str]:
    """Where two checkpoints' contents differ (tensors bit for bit); the wall clock, the host's numpy and
    Python generators (the trainer draws nothing from them; a test process moves them) and the run's
    own place and resume setting left out."""
    if where in ("/wall_s", "/config/train/run_dir", "/config/train/resume") \
            or where.startswith(("/rng/0/numpy", "/rng/0/python")):
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a for d in same_state(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in same_state(x, y, f"{where}/{i}")]
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [where]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_a_resume_from_any_checkpoint_continues_every_record_as_if_uninterrupted(celeba, tmp_path):
    """Resumed from a checkpoint taken mid-launch (mid-epoch, between log lines, with the EMA on), a
    run ends with the uninterrupted run's checkpoint in every record it holds (counters, images seen,
    the step's running sums and histograms, optimizers, EMA, random state), logs the same rows, and
    draws the same sample grids and D-output histograms: nothing a checkpoint should carry is lost."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = dict(train__max_steps=9, ckpt__every=2, ckpt__keep=10, log__every=3, model__ema=0.9)
    assert main(tiny_args(celeba, whole, **common)) == 0
    start = whole / "checkpoints" / "step_00000002.pt"  # logged at 3: the sums of steps 1-2 are in it
    assert main(tiny_args(celeba, split, train__resume=start, **common)) == 0
    end = "checkpoints/step_00000009.pt"
    assert same_state(checkpoint.load(whole / end), checkpoint.load(split / end)) == []

    def rows(run):
        keys = ("step", "epoch", "images", "loss_d", "loss_g", "d_real", "d_fake")
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: r[k] for k in keys} for r in map(json.loads, lines)]
    assert rows(split) == rows(whole) and [r["step"] for r in rows(whole)] == [3, 6, 9]
    drawn = [p.relative_to(split) for p in sorted((split / "plots").glob("d_outputs_*.png"))]
    drawn += [p.relative_to(split) for p in sorted((split / "samples").glob("*_*.png"))]
    assert len(drawn) >= 5
    for name in drawn:
        assert (split / name).read_bytes() == (whole / name).read_bytes(), name


def test_a_resumed_launch_gives_its_first_step_a_line_of_its_own(celeba, tmp_path, capsys):
    """Without a progress bar, a launch's first step has a line (and its ETA this launch's pace) however
    far away the first log step is: resumed at step 4, that is step 5."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4, log__every=4)) == 0
    capsys.readouterr()
    assert main(tiny_args(celeba, run, train__max_steps=8, log__every=4)) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["5/8", "8/8"]
    assert steps[0].endswith("(then one every 4 steps)")


@pytest.mark.parametrize("setting", [o[0] for o, world, note in INERT if note])
def test_a_setting_noted_as_doing_nothing_does_nothing(celeba, tmp_path, capsys, setting):
    """config.inert's notes are true: each noted in test_config_rules.py's table, the run with it trains
    the same weights as the run without it, and prints the note."""
    plain, noted = tmp_path / "plain", tmp_path / "noted"
    assert main(tiny_args(celeba, plain, train__max_steps=3)) == 0
    capsys.readouterr()
    assert main([*tiny_args(celeba, noted, train__max_steps=3), setting]) == 0
    assert f"note: {setting} does nothing" in capsys.readouterr().out
    for name in ("generator.pth", "discriminator.pth"):
        a, b = weights(plain / name), weights(noted / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_with_worker_processes_is_bit_identical(celeba, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(tiny_args(celeba, whole, train__max_steps=8, data__workers=2)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=3, data__workers=2)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=8, data__workers=2)) == 0
    a, b = weights(whole / "generator.pth"), weights(split / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _start(celeba, run, **extra):
    args = tiny_args(celeba, run, **{"train__epochs": 1000, "ckpt__every": 100000, "sample__every": 100000,
                                     **extra})
    return subprocess.Popen([sys.executable, "-m", "fastdcgan.train", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_checkpoints_and_exits_resumable(celeba, tmp_path, sig):
    run = tmp_path / "run"
    proc = _start(celeba, run)
    wait_for_step(run, 4, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert f"stopped by {signal.Signals(sig).name}" in out
    s = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert s["step"] >= 4
    assert f"at step {s['step']};" in out  # the checkpoint is the step the message names


def test_sigterm_then_resume_matches_uninterrupted(celeba, tmp_path):
    run, whole = tmp_path / "run", tmp_path / "whole"
    proc = _start(celeba, run)
    wait_for_step(run, 4, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 75
    stopped_at = checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"]
    target = stopped_at + 5
    extra = dict(train__epochs=1000, ckpt__every=100000, sample__every=100000, train__max_steps=target)
    assert main(tiny_args(celeba, run, **extra)) == 0
    assert main(tiny_args(celeba, whole, **extra)) == 0
    a, b = weights(whole / "generator.pth"), weights(run / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_then_restart_resumes_from_latest(celeba, tmp_path):
    run = tmp_path / "run"
    proc = _start(celeba, run, ckpt__every=3)
    wait_for_step(run, 8, proc)
    proc.kill()
    proc.communicate()
    saved = checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"]
    assert saved >= 6
    r = run_cli("fastdcgan.train", *tiny_args(celeba, run, train__max_steps=saved + 2))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {run / 'checkpoints'}" in r.stdout and f"at step {saved}" in r.stdout


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(celeba, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4)) == 0
    good = checkpoint.latest(run / "checkpoints")
    # an absurd learning rate blows the weights up within a few steps
    code = main(tiny_args(celeba, run, train__max_steps=40, optim__lr_d="1e30", optim__lr_g="1e30",
                          ckpt__every=1, log__every=1))
    assert code == 3
    assert "non-finite loss" in capsys.readouterr().out
    latest = checkpoint.latest(run / "checkpoints")
    s = checkpoint.load(latest)
    assert all(torch.isfinite(v).all() for v in s["G"].values() if v.is_floating_point())
    assert latest.name >= good.name


def test_weights_gone_non_finite_between_log_lines_are_never_checkpointed(celeba, tmp_path, capsys):
    """The same blow-up with a log line only at the end: the checkpoints in between are the only check.
    The run stops with exit 3 at the first checkpoint whose weights are not all finite, and every
    checkpoint left (the latest: what a relaunch resumes) is finite."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4, ckpt__keep=100)) == 0
    code = main(tiny_args(celeba, run, train__max_steps=40, optim__lr_d="1e30", optim__lr_g="1e30",
                          ckpt__every=1, ckpt__keep=100, log__every=1000))
    assert code == 3 and "non-finite loss" in capsys.readouterr().out
    saved = checkpoint.list_checkpoints(run / "checkpoints")
    assert checkpoint.load(saved[-1])["step"] < 40
    for path in saved:
        s = checkpoint.load(path)
        assert all(torch.isfinite(v).all() for net in ("G", "D") for v in s[net].values()
                   if v.is_floating_point()), path.name


def test_resume_never_refuses_a_used_run_dir(celeba, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=2)) == 0
    assert main(tiny_args(celeba, run, train__resume="never")) == 2
    assert "train.resume=never" in capsys.readouterr().err


@pytest.mark.parametrize("made", [False, True])
def test_resume_never_trains_a_new_run_dir_and_an_empty_one(celeba, tmp_path, made):
    """never refuses only a run dir with something in it: a new one (which the launch makes before it
    looks) and an empty one that is there already train from step 0."""
    run = tmp_path / "run"
    if made:
        run.mkdir()
    assert main(tiny_args(celeba, run, train__max_steps=2, train__resume="never")) == 0
    assert (run / "STATUS").read_text().split() == ["finished", "2"]


def test_each_form_of_train_resume_on_each_state_of_the_run_dir(tmp_path):
    """train.resume by construction: each form (auto, never, a checkpoint's path, a path with no file)
    against each state a run directory can be in: none yet, empty, files but no checkpoint (a run stopped
    before its first, or its checkpoints removed: never must not append to its records), checkpoints."""
    from fastdcgan import config
    from fastdcgan.config import UsageError
    from fastdcgan.launch import find_resume

    elsewhere = checkpoint.save({"step": 3}, tmp_path / "other" / "checkpoints", keep=2)
    makers = {"none": lambda run: None, "empty": lambda run: run.mkdir(),
              "no checkpoint": lambda run: (run.mkdir(), (run / "metrics.jsonl").write_text('{"step": 2}\n')),
              "checkpoints": lambda run: checkpoint.save({"step": 4}, run / "checkpoints", keep=2)}
    refused = "refused"
    want = {"auto": {"none": None, "empty": None, "no checkpoint": None, "checkpoints": "step_00000004.pt"},
            "never": {"none": None, "empty": None, "no checkpoint": refused, "checkpoints": refused},
            str(elsewhere): dict.fromkeys(makers, elsewhere),
            str(tmp_path / "no-such.pt"): dict.fromkeys(makers, refused)}
    for k, (resume, by_state) in enumerate(want.items()):
        assert set(by_state) == set(makers)
        for state, expected in by_state.items():
            run = tmp_path / f"{k}-{state}"
            makers[state](run)
            try:
                got = find_resume(config.build(None, [f"train.run_dir={run}", f"train.resume={resume}"]))
            except UsageError:
                got = refused
            if isinstance(got, os.PathLike) and isinstance(expected, str):
                got = got.name
            assert got == expected, (resume, state)


def test_resume_from_explicit_path_and_mismatched_model(celeba, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=2)) == 0
    ckpt = checkpoint.latest(run / "checkpoints")
    other = tmp_path / "other"
    assert main(tiny_args(celeba, other, train__max_steps=3, train__resume=ckpt)) == 0
    assert checkpoint.load(checkpoint.latest(other / "checkpoints"))["step"] == 3
    assert main(tiny_args(celeba, tmp_path / "x", model__ngf=16, train__resume=ckpt)) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_bad_data_root_is_a_usage_error(tmp_path, capsys):
    assert main(tiny_args(tmp_path / "missing", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err


def test_skipped_files_are_warned_and_listed(celeba, tmp_path, capsys):
    """skipped_files.txt is the launch's own scan's list: a relaunch lists what it skips, and none once every
    file decodes."""
    folder = celeba / "img_align_celeba"
    good = (folder / "000002.jpg").read_bytes()
    (folder / "000002.jpg").write_bytes(b"")
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=1)) == 0
    out = capsys.readouterr().out
    assert "skipped 1 files" in out and "000002.jpg" in out
    assert "000002.jpg" in (run / "skipped_files.txt").read_text()
    (folder / "000002.jpg").write_bytes(good)
    (folder / "000005.jpg").write_bytes(b"not a jpeg")
    assert main(tiny_args(celeba, run, train__max_steps=2)) == 0
    listed = (run / "skipped_files.txt").read_text().splitlines()
    assert len(listed) == 1 and "000005.jpg" in listed[0]
    (folder / "000005.jpg").write_bytes(good)
    assert main(tiny_args(celeba, run, train__max_steps=3)) == 0
    assert not (run / "skipped_files.txt").exists()


def test_the_fast_preset_compiles_only_where_it_pays(celeba, tmp_path, capsys):
    """compile=auto (the fast preset's): off on CPU, where it cost ~45 s and then ran no faster."""
    assert main(["--config", str(REPO / "configs/celeba64-fast.toml"),
                 *tiny_args(celeba, tmp_path / "run", train__max_steps=2)]) == 0
    out = capsys.readouterr().out
    assert "compile off (auto)" in out and "warm-up" not in out
    from fastdcgan.state import resolve_compile
    assert resolve_compile("auto", torch.device("cuda")) == "default"
    assert resolve_compile("max-autotune", torch.device("cpu")) == "max-autotune"


def test_cudnn_picks_its_algorithms_on_cuda_only(monkeypatch):
    from fastdcgan.state import configure_backends
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    configure_backends(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True


def test_the_warm_up_lasts_until_nothing_more_compiles(celeba, tmp_path, capsys):
    """img/s is timed from the end of the warm-up: no graph may be compiled after it (a recompile in
    the first window would count seconds of compiling as training time)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, compile="default", train__max_steps=8, log__every=1)) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in rows if "warmup_s" in r]
    assert len(warm) == 1 and warm[0]["step"] == warm[0]["warmup_steps"] >= 2  # logged as it ends
    assert "img_per_s" not in warm[0] and all("img_per_s" in r for r in rows if r["step"] > warm[0]["step"])
    assert 0 < warm[0]["warmup_graphs"] == counters["stats"]["unique_graphs"]
    assert f"{warm[0]['warmup_steps']} steps (left out of img/s)" in capsys.readouterr().out


def test_an_input_failure_checkpoints_and_exits_1(celeba, tmp_path, monkeypatch, capsys):
    """A failure of the input that skipping a file cannot mend (a CUDA error inside DALI) ends the run
    with a clear error, a checkpoint of the steps done, STATUS failed and exit code 1; it resumes."""
    from fastdcgan.data import InputFailure, loaders

    real = loaders.make_loader

    class BreaksAfter3:
        def __init__(self, loader):
            self.loader, self.name = loader, loader.name

        def __len__(self):
            return len(self.loader)

        def epoch(self, epoch, start_batch=0):
            for b, batch in enumerate(self.loader.epoch(epoch, start_batch), start_batch):
                if b == 3:
                    raise InputFailure("the DALI pipeline failed: CUDA error: an illegal memory access")
                yield batch

    monkeypatch.setattr(loaders, "make_loader", lambda *a, **kw: BreaksAfter3(real(*a, **kw)))
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, ckpt__every=100)) == 1
    out = capsys.readouterr().out
    assert "error: the DALI pipeline failed: CUDA error: an illegal memory access (at step 3)" in out
    assert (run / "STATUS").read_text() == "failed 3\n"
    assert checkpoint.latest(run / "checkpoints").name == "step_00000003.pt"
    monkeypatch.setattr(loaders, "make_loader", real)
    assert main(tiny_args(celeba, run, ckpt__every=100)) == 0
    assert (run / "STATUS").read_text() == "finished 12\n"


@pytest.mark.parametrize("world", [1, 2])
def test_an_input_failure_under_ddp_calls_no_collective_on_the_failing_rank(tmp_path, world, capsys):
    """Under DDP the rank whose input failed cannot checkpoint: a save is a collective (the ranks' random
    states, a barrier) the other ranks, inside a step, are not in; it would hang there until
    train.timeout_s instead of exiting, which makes the launcher end the others at once. It names the
    latest checkpoint instead. One process saves the steps done."""
    from types import SimpleNamespace

    from fastdcgan.data import InputFailure
    from fastdcgan.train import EXIT_FAILED, Run
    saved = []
    latest = tmp_path / "checkpoints" / "step_00000004.pt"
    fake = SimpleNamespace(
        state=SimpleNamespace(step=6), env=SimpleNamespace(world=world),
        checkpoints=SimpleNamespace(save=lambda state: saved.append(state.step) or tmp_path / "step_6.pt",
                                    saved_at=lambda step: False, latest=lambda: latest),
        report=SimpleNamespace(print=lambda line, last=False: print(line)))
    assert Run._input_failed(fake, InputFailure("the DALI pipeline failed")) == EXIT_FAILED
    out = capsys.readouterr().out
    assert saved == ([6] if world == 1 else []), saved
    assert f"checkpoint {tmp_path / 'step_6.pt' if world == 1 else latest}" in out, out


def test_fp16_scaler_state_survives_a_resume(celeba, tmp_path):
    """fp16 on CPU: the loss scale backs off from 65536 within the first steps; a resume that lost the
    scaler would start again at 65536, skip steps on overflow and end with other weights."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(tiny_args(celeba, whole, precision="fp16", train__max_steps=9)) == 0
    assert main(tiny_args(celeba, split, precision="fp16", train__max_steps=3)) == 0
    at_split = checkpoint.load(checkpoint.latest(split / "checkpoints"))["gan"]["scaler"]
    assert at_split["scale"] < 65536.0  # the state the resume must keep
    assert main(tiny_args(celeba, split, precision="fp16", train__max_steps=9)) == 0
    sa = checkpoint.load(checkpoint.latest(whole / "checkpoints"))
    sb = checkpoint.load(checkpoint.latest(split / "checkpoints"))
    assert sa["gan"]["scaler"] == sb["gan"]["scaler"]
    for net in ("G", "D"):
        assert all(torch.equal(sa[net][k], sb[net][k]) for k in sa[net]), net


def test_metrics_after_a_resume_hold_no_rows_past_its_checkpoint(celeba, tmp_path):
    """Killed -9 after logging steps past its last checkpoint, the run redoes those steps on resume:
    their old rows go, so every step is logged once, in order."""
    for attempt in range(5):  # until the kill lands between a checkpoint and the next (4 times in 5)
        run = tmp_path / str(attempt)
        proc = _start(celeba, run, ckpt__every=5, log__every=1)
        wait_for_step(run, 7, proc)
        proc.kill()
        proc.communicate()
        saved = checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"]
        logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        if logged[-1] > saved:
            break
    else:
        raise AssertionError("every kill landed on a checkpoint step")
    end = logged[-1] + 3
    assert main(tiny_args(celeba, run, train__epochs=1000, ckpt__every=5, log__every=1,
                          train__max_steps=end)) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, end + 1))


def test_plan_json_says_what_the_launch_runs(celeba, tmp_path):
    """RUN_DIR/plan.json: the settings' effect as built, rewritten by each launch (a resume with a new
    rate and another mode shows them)."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=2, optim__lr_g="1e-4", optim__lr_d="3e-4",
                          channels_last="false", train__d_steps=2, train__real_label=0.9)) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["backend"] == "torch" and plan["device"] == "cpu" and plan["precision"] == "fp32"
    assert plan["compile"] == "off" and plan["cuda_graphs"] is False and plan["memory_format"] == "contiguous"
    assert (plan["d_steps"], plan["g_steps"], plan["real_label"]) == (2, 1, 0.9)
    assert plan["optimizers"]["G"]["lr"] == 1e-4 and plan["optimizers"]["D"]["lr"] == 3e-4
    assert plan["norms"] == ["BatchNorm2d"] and plan["global_batch"] == 8
    assert main(tiny_args(celeba, run, train__max_steps=4, optim__lr_d="5e-5", precision="fp16")) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["optimizers"]["D"]["lr"] == 5e-5 and plan["memory_format"] == "channels_last"
    assert plan["precision"] == "fp16" and plan["optimizers"]["D"]["fused"] is True


def test_run_directory_and_console_are_as_documented(celeba, tmp_path, capsys):
    """The whole run directory and the console's lines, as a user sees them: pinned so that moving the
    loop's parts around changes neither."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run)) == 0
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files == ["STATUS", "checkpoints/latest", "checkpoints/step_00000006.pt",
                     "checkpoints/step_00000008.pt", "checkpoints/step_00000012.pt", "config.toml",
                     "discriminator.pth", "generator.pth", "metrics.jsonl", "plan.json",
                     "plots/d_outputs_epoch_001.png", "plots/d_outputs_epoch_002.png",
                     "plots/loss.png", "samples/epoch_001.png", "samples/epoch_002.png", "samples/reals.png",
                     "samples/step_00000004.png", "samples/step_00000008.png", "samples/step_00000012.png"]
    assert (run / "STATUS").read_text() == "finished 12\n"
    lines = capsys.readouterr().out.splitlines()
    kinds = [line.split()[0] for line in lines]
    assert kinds == ["input:", "data:", "device", "batch", *["step"] * 7, "done:"], lines
    steps = [line.split()[1:4] for line in lines if line.startswith("step ")]
    # epochs counted from 1, as in epoch_001.png: steps 1-6 are epoch 1; the first step has a line of its own
    assert steps == [["1/12", "epoch", "1"], ["2/12", "epoch", "1"], ["4/12", "epoch", "1"],
                     ["6/12", "epoch", "1"], ["8/12", "epoch", "2"], ["10/12", "epoch", "2"],
                     ["12/12", "epoch", "2"]]
    clocks = [line.split()[4:8] for line in lines if line.startswith("step ")]
    assert all(c[0] == "elapsed" and c[2] == "eta" and c[1].endswith("s") and c[3].endswith("s")
               for c in clocks)
    assert lines[4].endswith("(then one every 2 steps)") and "loss_d" not in lines[4]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 1, 1, 2, 2, 2]


def test_tensorboard_gets_the_records_grids_and_histograms(celeba, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, log__tensorboard="true")) == 0
    events = EventAccumulator(str(run / "tb"),
                              size_guidance={"scalars": 0, "images": 0, "histograms": 0}).Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("loss/loss_d", "loss_d"), ("loss/loss_g", "loss_g"), ("D/d_real", "d_real"),
                     ("speed/img_per_s", "img_per_s")):
        want = [r for r in rows if key in r]
        got = events.Scalars(tag)
        assert [e.step for e in got] == [r["step"] for r in want], tag
        # float32 in the file
        assert [e.value for e in got] == pytest.approx([r[key] for r in want], rel=1e-6), tag
    # the grids written as PNGs (steps 4, 8, 12 and the ends of epochs 1 and 2), at the same size
    grids = events.Images("samples")
    assert [e.step for e in grids] == [4, 6, 8, 12, 12]
    png = (run / "samples" / "step_00000004.png").read_bytes()
    assert grids[0].encoded_image_string[:8] == png[:8] and (grids[0].width, grids[0].height) == (138, 138)
    for tag in ("D/real", "D/fake"):  # one histogram per epoch, every D output of the epoch counted
        hists = events.Histograms(tag)
        assert [h.step for h in hists] == [6, 12]
        assert [h.histogram_value.num for h in hists] == [6 * 8, 6 * 8]


def test_tensorboard_asked_for_without_the_package_is_a_usage_error(celeba, tmp_path):
    code = ("import sys; sys.modules['tensorboard'] = None\n"  # as if not installed: its import fails
            "from fastdcgan.train import main\n"
            f"sys.exit(main({tiny_args(celeba, tmp_path / 'run', log__tensorboard='true')!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("error: log.tensorboard=true needs the tensorboard "
                                                   "package: pip install -e '.[tb]' "
                                                   "(or pip install tensorboard)")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_the_data_line_names_kaggles_partition_file_and_small_images_are_counted(tmp_path, capsys):
    from conftest import make_celeba
    root = make_celeba(tmp_path / "kaggle", 48, size=(20, 24))  # smaller than the 32x32 trained at
    rows = (root / "list_eval_partition.txt").read_text().split()
    (root / "list_eval_partition.txt").unlink()
    (root / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(
        f"{name},{part}\n" for name, part in zip(rows[::2], rows[1::2], strict=True)))
    assert main(tiny_args(root, tmp_path / "run", data__split="train", train__max_steps=1)) == 0
    out = capsys.readouterr().out
    assert "38 images in" in out and "(celeba layout, split train from list_eval_partition.csv)" in out
    assert "warning: 38 images are smaller than 32x32; they are upscaled" in out


def test_a_run_that_ends_mid_epoch_ends_with_a_grid_and_plots(celeba, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=3, log__every=5)) == 0  # one log point: the last step
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["reals.png", "step_00000003.png"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["d_outputs_epoch_001.png", "loss.png"]


@pytest.mark.parametrize("steps", [3, 6, 8])
def test_the_grids_are_the_sample_schedules_and_one_at_the_end(celeba, tmp_path, steps):
    """A grid every sample.every steps, one at each epoch's end, and one at the last step where neither
    drew one: each once (6-step epochs, sample.every 4: a run that ends mid-epoch off the schedule, at an
    epoch's end off it, and mid-epoch on it)."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=steps, log__every=5)) == 0
    per_epoch, every = 6, 4
    want = ({"reals.png"} | {f"step_{s:08d}.png" for s in range(every, steps + 1, every)}
            | {f"epoch_{e:03d}.png" for e in range(1, steps // per_epoch + 1)})
    if steps % every and steps % per_epoch:
        want.add(f"step_{steps:08d}.png")
    assert sorted(p.name for p in (run / "samples").iterdir()) == sorted(want)


def test_epoch_ends_draw_plots_only_when_a_log_interval_has_passed(celeba, tmp_path):
    """6-step epochs, log.every=10: drawing at every epoch end (two matplotlib figures each) cost a
    fifth of a small-folder CPU run. The ends at steps 12 and 24 draw; 6 and 18 do not; the
    histograms cover the epochs since the last drawing; the end (step 27, mid-epoch 5) draws the rest."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__epochs=5, train__max_steps=27, log__every=10)) == 0
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "d_outputs_epoch_002.png", "d_outputs_epoch_004.png", "d_outputs_epoch_005.png", "loss.png"]
    assert ([p.name for p in sorted((run / "samples").glob("epoch_*"))]
            == [f"epoch_00{i}.png" for i in (1, 2, 3, 4)])


def test_an_epoch_end_plot_covers_the_epochs_since_the_last_drawing_of_this_launch(tmp_path):
    """Plots at epoch ends: due once log.every steps have passed since the last drawing, or since where
    the launch began (a resume); each histogram's title names the epochs it covers (drawn alike here by
    plots.plot_d_outputs, compared byte for byte)."""
    from fastdcgan import losses, plots
    from fastdcgan.jobs import Plots
    from fastdcgan.report import Report
    from fastdcgan.rundir import RunDir

    def check(job: Plots, step: int, epoch: int, first: int) -> None:
        hist = torch.arange(100.0).view(2, 50) % (epoch + 3)
        job.draw(hist, step, epoch)
        expected = tmp_path / "expected.png"
        plots.plot_d_outputs(hist, epoch, expected, losses.HISTOGRAM_AXIS["bce"], first=first)
        drawn = tmp_path / "run" / "plots" / f"d_outputs_epoch_{epoch:03d}.png"
        assert drawn.read_bytes() == expected.read_bytes(), (step, epoch, first)

    (tmp_path / "run").mkdir()
    report = Report(tmp_path / "run", True, 60, 0, tensorboard=False)
    fresh = Plots(10, 0, 0, RunDir(tmp_path / "run"), "bce", report, True)  # 6-step epochs, log.every 10
    assert not fresh.due_at_epoch_end(6) and fresh.due_at_epoch_end(12)
    check(fresh, 12, 2, first=1)  # epochs 1-2
    assert not fresh.due_at_epoch_end(18) and fresh.due_at_epoch_end(24)
    check(fresh, 24, 4, first=3)  # epochs 3-4
    # resumed at step 20, epoch 4, from a checkpoint without the job's record (an older one)
    resumed = Plots(10, 20, 3, RunDir(tmp_path / "run"), "bce", report, True)
    assert not resumed.due_at_epoch_end(24) and resumed.due_at_epoch_end(30)
    check(resumed, 30, 5, first=4)  # epochs 4-5
    assert resumed.undrawn(31) and not resumed.undrawn(30)
    # from a checkpoint that holds it: the pace of the launch that wrote it goes on
    kept = Plots(10, 20, 3, RunDir(tmp_path / "run"), "bce", report, True)
    kept.load_state_dict(fresh.state_dict())  # last drawn at step 24, epoch 4
    assert not kept.due_at_epoch_end(30) and kept.due_at_epoch_end(36)
    check(kept, 36, 6, first=5)
    report.close()


def test_the_loss_plot_draws_a_single_log_point(tmp_path):
    """A line through one point draws nothing: a run with one log point got empty axes."""
    import numpy as np
    from PIL import Image
    from fastdcgan import plots

    def blue_pixels(loss: float) -> int:
        (tmp_path / "m.jsonl").write_text(json.dumps({"step": 3, "loss_d": loss, "loss_g": 1.0, "d_real": 0.6,
                                                      "d_fake": 0.4}) + "\n")
        plots.plot_losses(tmp_path / "m.jsonl", tmp_path / "loss.png")
        rgb = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB")).astype(int)
        return int((np.abs(rgb - [31, 119, 180]).sum(axis=2) < 40).sum())  # matplotlib's first colour
    assert blue_pixels(1.3) > blue_pixels(float("nan")) + 20  # more than the legend's own sample


def test_the_last_line_is_not_followed_by_the_progress_bar():
    import io
    import re
    from rich.console import Console
    from fastdcgan.report import Display
    out = io.StringIO()
    display = Display(10, 0, console=Console(file=out, force_terminal=True, width=100))
    display.update(3, 1, "loss_d 1.0")
    display.print("stopped by SIGINT at step 3", last=True)
    display.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "epoch 1" in text  # the bar was drawn
    assert text.rstrip().splitlines()[-1] == "stopped by SIGINT at step 3"


def test_train_init_starts_a_new_run_from_another_runs_weights(celeba, tmp_path, capsys):
    from fastdcgan import config
    from fastdcgan.train import Run
    first = tmp_path / "first"
    assert main(tiny_args(celeba, first, train__max_steps=4)) == 0
    G, D = weights(first / "generator.pth"), weights(first / "discriminator.pth")
    examples = tmp_path / "examples"  # pytorch/examples' names for the same two files
    examples.mkdir()
    torch.save(G, examples / "netG_epoch_3.pth")
    torch.save(D, examples / "netD_epoch_3.pth")
    for where in (first, first / "checkpoints" / "step_00000004.pt", examples / "netG_epoch_3.pth"):
        run = Run(config.build(None, tiny_args(celeba, tmp_path / f"new{len(str(where))}",
                                               train__init=where)))
        assert run.step == 0 and not run.opt_g.state and not run.opt_d.state  # fresh optimizers, step 0
        assert all(torch.equal(v, G[k]) for k, v in run.G.state_dict().items()), where
        assert all(torch.equal(v, D[k]) for k, v in run.D.state_dict().items()), where
    assert run.fit() == 0 and run.step == 12
    assert (f"weights from {examples / 'netG_epoch_3.pth'} and netD_epoch_3.pth (train.init); "
            "fresh optimizers, from step 0") in capsys.readouterr().out


def test_train_init_refuses_weights_that_do_not_fit_and_a_lone_generator(celeba, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(tiny_args(celeba, first, train__max_steps=2)) == 0
    assert main(tiny_args(celeba, tmp_path / "wider", train__init=first, model__ngf=16)) == 2
    err = capsys.readouterr().err
    assert (err.startswith(f"error: train.init: checkpoint {first / 'checkpoints'}")
            and "do not fit this model" in err)
    assert "size mismatch" in err and len(err.strip().splitlines()) == 1
    (first / "discriminator.pth").unlink()
    assert main(tiny_args(celeba, tmp_path / "lone", train__init=first / "generator.pth")) == 2
    assert ("holds a generator only; its discriminator (discriminator.pth) is not beside it"
            in capsys.readouterr().err)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only mount, as a user meets it (as root, a tmpfs mounted read-only: root may
    write through permission bits; otherwise a folder without write permission)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_run_dir_that_cannot_be_written_is_one_line_and_exit_2(celeba, read_only_dir, capsys):
    for run in (read_only_dir, read_only_dir / "new"):  # an existing folder, and one that cannot be made
        assert main(tiny_args(celeba, run)) == 2
        out, err = capsys.readouterr()
        assert err.startswith(f"error: train.run_dir {run} cannot be written: ") and err.count("\n") == 1, err
        assert ("Read-only file system" in err) == (os.geteuid() == 0) and out == ""


def test_the_clock_on_a_log_line_gives_elapsed_and_the_eta_at_this_launchs_pace():
    import time
    from fastdcgan.jobs import Log, duration
    assert [duration(s) for s in (0.4, 45, 185, 7380)] == ["0s", "45s", "3m05s", "2h03m"]
    log = Log(10, total=160, report=None, flops_per_image=0.0, peak=None)
    log.started = (100, time.perf_counter() - 20)  # resumed at step 100; 10 steps in 20 s
    assert log.clock(110, wall_s=3725) == "elapsed 1h02m  eta 1m40s"


def test_mfu_is_against_the_peak_of_every_device_whose_images_img_per_s_counts(tmp_path):
    """img/s counts every process's images (test_dist.py checks it), so MFU divides by all their devices'
    peak: against one device's, 8 GPUs at 40% each read 320%."""
    from fastdcgan.jobs import Log
    from fastdcgan.report import Report
    means = {"loss_d": 1.0, "loss_g": 1.0, "d_real": 0.5, "d_fake": 0.5}
    timing = {"img_per_s": 800.0, "data_ms": 1.0, "compute_ms": 9.0}
    for devices, mfu in ((1, 0.8), (2, 0.4), (8, 0.1)):
        (tmp_path / f"run{devices}").mkdir()
        report = Report(tmp_path / f"run{devices}", main=True, total=10, start=0, tensorboard=False)
        log = Log(10, total=10, report=report, flops_per_image=1e9, peak=1e12, devices=devices)
        log.start(0)
        assert log.record(10, 1, 80, means, timing, {}, wall_s=1.0)["mfu"] == pytest.approx(mfu)
        report.close()


def test_a_resume_with_another_batch_size_keeps_the_images_seen(celeba, tmp_path, capsys):
    """48 images: 3 steps of 8 are 24 images seen; resumed at batch 4 that is batch 6 of 12, so the
    epoch ends 6 steps later (not 9 from batch 3, nor 12 from batch 0)."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=3)) == 0
    assert main(tiny_args(celeba, run, train__batch_size=4, train__max_steps=10)) == 0
    out = capsys.readouterr().out
    assert "at step 3 (epoch 1, after batch 6)" in out and "train.batch_size: 8 -> 4" in out
    s = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert (s["step"], s["epoch"], s["batch_in_epoch"]) == (10, 1, 1)


def test_a_resume_at_another_batch_size_trains_the_epochs_asked_and_counts_the_images_seen(celeba, tmp_path):
    """2 epochs of 48 images: 3 steps of 8 (24 images), then at batch 4 the rest of epoch 1 (6 steps) and
    epoch 2 (12 steps): 21 steps and 96 images in all, whatever the step count would say at either batch."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=3, log__every=1)) == 0
    assert main(tiny_args(celeba, run, train__batch_size=4, log__every=1)) == 0
    s = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert (s["step"], s["epoch"], s["batch_in_epoch"], s["images"]) == (21, 2, 0, 96)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    images = [r["images"] for r in rows if "loss_d" in r]
    assert images == [8, 16, 24] + [24 + 4 * i for i in range(1, 19)]


def test_the_images_seen_count_on_over_two_changes_of_batch_size(celeba, tmp_path):
    """The count a checkpoint holds is carried on, not rebuilt from its step and batch: after one change
    the two agree (steps at the first batch), after a second they do not (2 x 8 + 3 x 4 = 28, not 5 x 4)."""
    run = tmp_path / "run"
    for batch, last in ((8, 2), (4, 5), (8, 7)):
        assert main(tiny_args(celeba, run, train__batch_size=batch, train__max_steps=last, log__every=1)) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["images"] for r in rows if "loss_d" in r] == [8, 16, 20, 24, 28, 36, 44]
    assert checkpoint.load(checkpoint.latest(run / "checkpoints"))["images"] == 44


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"", "list"], ids=["text", "empty", "a list"])
def test_a_resume_file_that_is_no_checkpoint_is_one_line_and_exit_2(celeba, tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    if content == "list":
        torch.save([1, 2, 3], bad)  # torch's, but no checkpoint
    else:
        bad.write_bytes(content)
    assert main(tiny_args(celeba, tmp_path / "run", train__resume=bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot resume from {bad}: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("lost", [("opt_g", "opt_d"), ("gan",), ("rng",)], ids=["optimizers", "step", "rng"])
def test_a_checkpoint_stripped_of_a_record_is_refused_in_one_line(celeba, tmp_path, capsys, lost):
    """Checkpoints shared for their weights often lose the optimizers (or more) to save space. Resuming
    one cannot be exact: it stops in one line naming the file, exit 2, not with a traceback (train.init
    takes weights alone)."""
    assert main(tiny_args(celeba, tmp_path / "run", train__max_steps=1)) == 0
    state = checkpoint.load(checkpoint.latest(tmp_path / "run" / "checkpoints"))
    stripped = tmp_path / "stripped.pt"
    torch.save({k: v for k, v in state.items() if k not in lost}, stripped)
    capsys.readouterr()
    assert main(tiny_args(celeba, tmp_path / "again", train__resume=stripped)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot resume from {stripped}: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("best_fid", [False, True], ids=["", "every-fid-a-new-best"])
def test_each_checkpoint_is_written_once(celeba, tmp_path, monkeypatch, tiny_fid_net, best_fid):
    """ckpt.every falling on an epoch's last batch: one write, by the epoch's end (a checkpoint that says
    the epoch is done), not a second one at the same step just before it; also when FID is due there
    and scores a new best (best_fid then links to that one checkpoint)."""
    written = []
    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save",
                        lambda state, *a, **k: written.append(state["step"]) or save(state, *a, **k))
    extra = {}
    if best_fid:
        from fastdcgan.metrics.tracker import FIDTracker
        monkeypatch.setattr(FIDTracker, "is_best", lambda self, row: True)
        extra = dict(fid__every=3, fid__n=8, fid__batch=8, fid__weights=tiny_fid_net)
    assert main(tiny_args(celeba, tmp_path / "run", ckpt__every=3, **extra)) == 0  # 6 steps per epoch
    assert written == [3, 6, 9, 12]
    s = checkpoint.load(tmp_path / "run" / "checkpoints" / "step_00000006.pt")
    assert (s["epoch"], s["batch_in_epoch"]) == (1, 0)
    if best_fid:
        best = checkpoint.load(tmp_path / "run" / "checkpoints" / "best_fid")
        assert (best["step"], best["epoch"], best["batch_in_epoch"]) == (12, 2, 0)


def test_the_weights_files_hold_the_last_checkpoints_networks(celeba, tmp_path):
    """generator.pth, discriminator.pth and generator_ema.pth are G, D and G_ema as the last checkpoint
    holds them: generator.pth is G's own weights also with model.ema on (the average is
    generator_ema.pth, which generate --ema reads from a checkpoint)."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=3, model__ema=0.5)) == 0
    last = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert any(not torch.equal(last["G"][k], last["G_ema"][k]) for k in last["G"])  # told apart
    for name, key in (("generator.pth", "G"), ("discriminator.pth", "D"), ("generator_ema.pth", "G_ema")):
        saved = weights(run / name)
        assert saved.keys() == last[key].keys(), name
        assert all(torch.equal(saved[k], last[key][k]) for k in saved), f"{name} is not {key}"


def test_train_init_refuses_weights_of_any_other_model_layout(celeba, tmp_path, capsys):
    """Each setting that shapes the weights (launch.MODEL_LAYOUT; the values the resume test refuses),
    changed between the run a train.init reads and the run it starts, stops the launch in one line
    naming train.init: never weights loaded where their names fit and fresh ones kept where they do not
    (a spectral-norm D's weight_orig, BatchNorm's running statistics beside a LayerNorm critic)."""
    from fastdcgan.launch import MODEL_LAYOUT
    from test_every_setting import REFUSED as LAYOUT_CHANGES
    assert set(LAYOUT_CHANGES) == set(MODEL_LAYOUT)
    first = tmp_path / "first"
    assert main(tiny_args(celeba, first, train__max_steps=1)) == 0
    capsys.readouterr()
    for key, value in LAYOUT_CHANGES.items():
        changed = {key.replace(".", "__"): value}
        assert main(tiny_args(celeba, tmp_path / key, train__init=first, **changed)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: train.init: "), (key, err)
