"""FID during training, the EMA generator, and `python -m fastdcgan.fid`, end to end on tiny runs
(the tiny TorchScript network from conftest stands in for TF-Inception)."""
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli, tiny_args, weights
from fastdcgan import checkpoint, config, jobs
from fastdcgan.config import UsageError
from fastdcgan.fid import main as fid_main
from fastdcgan.model import build_models, fixed_noise, sample
from fastdcgan.plots import read_metrics, save_grid
from fastdcgan.step import GANStep, StepOptions, make_ema, make_optimizers
from fastdcgan.train import main

# 48 images, batch 8: 6 steps per epoch, 12 steps in 2 epochs; checkpoints every 4 steps and at 6.


def fid_args(net, every=3, n=16):
    return {"fid__every": every, "fid__n": n, "fid__batch": 8, "fid__weights": net}


def test_fid_during_training_logs_plots_and_keeps_the_best(celeba, tiny_fid_net, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=6, **fid_args(tiny_fid_net, every=2))) == 0
    rows = read_metrics(run / "metrics.jsonl")
    fids = [r for r in rows if "fid" in r]
    assert [r["step"] for r in fids] == [2, 4, 6]
    assert all(r["fid"] > 0 and r["fid_n"] == 16 and r["fid_ema"] is False for r in fids)
    from fastdcgan.metrics.frechet import stats_key
    from fastdcgan.data import folder
    key = stats_key(folder.scan(celeba).files, 32, fids[0]["fid_network"])
    assert {r["fid_stats"] for r in fids} == {key} and fids[0]["fid_network"].startswith("torchscript:")
    assert [r["step"] for r in rows if "loss_d" in r] == [2, 4, 6]  # the log rows are unchanged
    assert (run / "plots" / "fid.png").is_file() and (run / "plots" / "loss.png").is_file()
    best = min(fids, key=lambda r: r["fid"])
    info = json.loads((run / "checkpoints" / "best_fid.json").read_text())
    assert info == {"step": best["step"], "fid": best["fid"], "n": 16, "ema": False}
    kept = checkpoint.load(run / "checkpoints" / "best_fid")  # a whole checkpoint, weights_only-loadable
    assert kept["step"] == best["step"] and {"G", "D", "opt_g", "config"} <= kept.keys()
    # a new best is a regular checkpoint of its step (step 2 is the first best), best_fid that file
    # hard-linked
    step_file = checkpoint.load(run / "checkpoints" / f"step_{best['step']:08d}.pt")
    assert all(torch.equal(kept["G"][k], v) for k, v in step_file["G"].items())
    assert [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")] == [
        "step_00000002.pt", "step_00000004.pt", "step_00000006.pt"]
    # Evaluating FID changes nothing in training: the same weights as a run without it
    assert main(tiny_args(celeba, tmp_path / "plain", train__max_steps=6)) == 0
    a, b = weights(run / "generator.pth"), weights(tmp_path / "plain" / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_config_that_needs_fid_says_so_before_any_set_up(celeba, tmp_path, capsys, monkeypatch):
    """configs/speedrun-cpu.toml scores FID as it trains: on a fresh install without the network it
    stops at once, saying how to fetch it, before scanning the data or building a cache."""
    monkeypatch.delenv("FASTDCGAN_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "empty-cache"))
    code = main(["--config", str(REPO / "configs/speedrun-cpu.toml"), f"data.root={celeba}",
                 f"train.run_dir={tmp_path / 'run'}"])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: no FID feature network") and err.count("\n") == 1
    assert "python -m fastdcgan.fid --fetch" in err
    assert out == "" and not (tmp_path / "empty-cache").exists()  # no scan verdicts, no cache: nothing set up


def test_missing_fid_network_stops_the_trainer_at_start(celeba, tmp_path, capsys):
    assert main(tiny_args(celeba, tmp_path / "run", fid__every=3, fid__weights=tmp_path / "nope.pt")) == 2
    err = capsys.readouterr().err
    assert "fid.weights: no such file" in err and "python -m fastdcgan.fid --fetch" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("override, words", [
    ("fid.n=1", "fid.n"), ("fid.every=-1", "fid.every"), ("fid.batch=0", "fid.batch"),
    ("model.ema=1.0", "model.ema"), ("model.ema=-0.5", "model.ema")])
def test_bad_fid_and_ema_settings_name_the_key(override, words):
    with pytest.raises(UsageError, match=words.replace(".", r"\.")):
        config.build(None, [override])


@pytest.mark.parametrize("decay, warmup, decays", [
    (0.2, False, [0.2, 0.2, 0.2]),
    (0.2, True, [1 / 10, 2 / 11, 0.2]),  # min(0.2, (1 + t) / (10 + t)), t = 0, 1, 2: the ramp, then the cap
    (0.999, False, [0.999] * 3),  # the default, where G's weight per update is small
    (0.999, True, [1 / 10, 2 / 11, 3 / 12]),
])
def test_ema_update_is_decay_times_ema_plus_rest_times_g(decay, warmup, decays):
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32)
    opt_g, opt_d = make_optimizers(G, D, 2e-3, 2e-3, (0.5, 0.999), compiled=False, graphs=False)
    ema = make_ema(G)
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, ema_decay=decay, ema_warmup=warmup), ema=ema)
    expected = [p.detach().double().clone() for p in G.parameters()]
    for k, decay in enumerate(decays):
        gan.step(torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(k)))
        expected = [decay * e + (1 - decay) * p.detach().double()
                    for e, p in zip(expected, G.parameters(), strict=True)]
        for e, q in zip(expected, ema.parameters(), strict=True):
            # float32, within two ulps; an update missed at 0.999 leaves the EMA 1e-3 x (G - EMA) away
            torch.testing.assert_close(q.double(), e, rtol=2.4e-7, atol=1e-7)
        # BatchNorm statistics copied
        assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), G.buffers(), strict=True))
    lag = max((a - b).abs().max().item() for a, b in zip(ema.parameters(), G.parameters(), strict=True))
    assert lag > 1e-4 and not ema.training and not any(p.requires_grad for p in ema.parameters())


def test_ema_warmup_reads_nothing_on_the_host():
    """A CUDA graph replays the warm-up's decay only if it stays on the device: no op of the update may
    read a tensor into a host scalar (a 0-dim weight passed as lerp's Scalar would: _local_scalar_dense)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    G, D = build_models(16, 8, 8, 32)
    opt_g, opt_d = make_optimizers(G, D, 2e-3, 2e-3, (0.5, 0.999), compiled=False, graphs=False)
    gan, seen = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, ema_decay=0.999), ema=make_ema(G)), []
    with Ops():
        gan._update_ema()
    assert any("lerp" in op for op in seen) and not [op for op in seen if "local_scalar" in op], seen
    assert gan.ema_updates.item() == 1


def test_ema_is_checkpointed_sampled_and_resumes_bit_identically(celeba, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(tiny_args(celeba, whole, train__max_steps=9, model__ema=0.99)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=5, model__ema=0.99)) == 0
    assert main(tiny_args(celeba, split, train__max_steps=9, model__ema=0.99)) == 0
    for name in ("generator.pth", "discriminator.pth", "generator_ema.pth"):
        a, b = weights(whole / name), weights(split / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    s = checkpoint.load(whole / "checkpoints" / "step_00000008.pt")
    G_ema = build_models(16, 8, 8, 32)[0]
    G_ema.load_state_dict(s["G_ema"])
    assert not all(torch.equal(s["G_ema"][k], s["G"][k]) for k in s["G"])
    # the step-8 sample grid is the EMA generator's
    save_grid(sample(G_ema, fixed_noise(16, 16, 0 + 1)), tmp_path / "ema.png")
    grid = np.asarray(Image.open(whole / "samples" / "step_00000008.png"))
    assert np.array_equal(grid, np.asarray(Image.open(tmp_path / "ema.png")))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, tiny_fid_net):
    """4 steps with an EMA generator and FID at step 4."""
    from conftest import make_celeba
    tmp = tmp_path_factory.mktemp("ema_run")
    root = make_celeba(tmp / "celeba", 48)
    assert main(tiny_args(root, tmp / "run", train__max_steps=4, model__ema=0.9,
                          **fid_args(tiny_fid_net, every=4))) == 0
    return tmp / "run"


def test_fid_cli_scores_a_run_as_training_did_and_records_it(ema_run):
    run = ema_run
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "fid" in r][-1]
    # the run's fid.weights, fid.batch, data and image size come from the checkpoint's config
    r = run_cli("fastdcgan.fid", "--checkpoint", run, "--n", 16, "--ema")
    assert r.returncode == 0, r.stderr
    value = float(r.stdout.strip().splitlines()[-1])
    assert value == pytest.approx(logged["fid"], rel=1e-6)
    record = json.loads((run / "fid.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 4 and record["ema"] is True and record["n"] == 16 and record["seed"] == 0
    assert record["batch"] == 8 and logged["fid_ema"] is True  # training scored the EMA generator too
    assert record["fid"] == pytest.approx(value, abs=1e-4)
    # the same protocol as training's score, printed with it: the same network, real statistics and n
    assert (record["network"], record["stats"]) == (logged["fid_network"], logged["fid_stats"])
    assert (f"FID protocol: network {logged['fid_network']}; 16 generated images against 48 real (split all, "
            "decoded and cropped as in training at 32x32); bilinear to 299x299") in r.stdout
    # G itself is another generator than its EMA: another score, appended
    assert fid_main(["--checkpoint", str(run / "checkpoints" / "best_fid"), "--n", "16", "--batch", "8"]) == 0
    records = (run / "fid.jsonl").read_text().splitlines()
    assert len(records) == 2 and json.loads(records[-1])["fid"] != pytest.approx(value, rel=1e-6)


def test_fid_cli_seed_and_split_reach_the_score(ema_run, capsys):
    """--seed draws other noise; --split scores against that partition's real images (38 of 48 train)."""
    base = ["--checkpoint", str(ema_run), "--n", "16", "--ema"]
    scores = {}
    for extra in ([], ["--seed", "1"], ["--split", "train"]):
        assert fid_main(base + extra) == 0
        out = capsys.readouterr().out
        record = json.loads((ema_run / "fid.jsonl").read_text().splitlines()[-1])
        scores[" ".join(extra)] = record["fid"]
        assert record["seed"] == (1 if "--seed" in extra else 0)
        real = "38 real (split train" if "--split" in extra else "48 real (split all"
        assert f"16 generated images against {real}" in out, out
    assert len({round(v, 6) for v in scores.values()}) == 3, scores


def test_fid_cli_errors_are_one_line_and_exit_2(ema_run, tiny_fid_net, tmp_path, capsys):
    assert fid_main(["--checkpoint", str(tmp_path / "nothing"), "--weights", str(tiny_fid_net)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # generator.pth is G alone: no EMA in it, and no config to find the data with
    assert fid_main(["--checkpoint", str(ema_run / "generator.pth"), "--ema"]) == 2
    assert "model.ema" in capsys.readouterr().err
    assert fid_main(["--checkpoint", str(ema_run / "generator.pth")]) == 2
    assert "give --data" in capsys.readouterr().err
    assert fid_main(["--checkpoint", str(ema_run), "--weights", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m fastdcgan.fid --fetch" in err
    # a folder of one image has no covariance: the statistics' ValueError, as one line
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (40, 40), (200, 120, 90)).save(one / "face.jpg")
    assert fid_main(["--checkpoint", str(ema_run), "--data", str(one), "--weights", str(tiny_fid_net)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 2 images, got 1" in err


def test_fid_target_ends_the_run_and_the_time_to_fid_is_reported(celeba, tiny_fid_net, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main(tiny_args(celeba, reference, train__max_steps=8, **fid_args(tiny_fid_net, every=2))) == 0
    fids = [r for r in read_metrics(reference / "metrics.jsonl") if "fid" in r]
    assert [r["images"] for r in fids] == [16, 32, 48, 64]  # images seen: steps x batch
    walls = [r["wall_s"] for r in fids]
    assert walls == sorted(walls) and walls[0] > 0
    target = sorted(r["fid"] for r in fids)[1]  # the second lowest: reached at or before the last evaluation
    stop = next(r["step"] for r in fids if r["fid"] <= target)
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=8, fid__target=target,
                          **fid_args(tiny_fid_net, every=2))) == 0
    out = capsys.readouterr().out
    assert checkpoint.latest(run / "checkpoints").name == f"step_{stop:08d}.pt"  # the end's checkpoint
    grids = {p.name for p in (run / "samples").iterdir()}  # the last step's grid (6 steps per epoch)
    assert ((run / "generator.pth").is_file()
            and {f"step_{stop:08d}.png", f"epoch_{stop // 6:03d}.png"} & grids)
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == stop  # no step after it
    reached = json.loads((run / "time_to_fid.json").read_text())
    assert reached["target"] == target
    first = reached["reached"][jobs.FID.key(target)]  # the very target, to the last digit
    assert first["step"] == stop and first["images"] == stop * 8 and first["wall_s"] > 0
    summary = f"<={target:g}: {first['wall_s']:.0f} s (step {stop})"
    assert (summary in out.strip().splitlines()[-1]
            and out.strip().splitlines()[-1].startswith(f"done: {stop} steps"))
    status = (run / "STATUS").read_text()
    assert status.startswith(f"finished {stop}; time to FID") and summary in status
    # launched again (a requeue, a user's retry): the run ended at the target, so it stays ended
    assert main(tiny_args(celeba, run, train__max_steps=8, fid__target=target,
                          **fid_args(tiny_fid_net, every=2))) == 0
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == stop
    assert checkpoint.latest(run / "checkpoints").name == f"step_{stop:08d}.pt"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"done: {stop} steps")


def test_the_runs_clock_carries_over_a_resume(celeba, tiny_fid_net, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4, **fid_args(tiny_fid_net, every=4))) == 0
    latest = checkpoint.latest(run / "checkpoints")
    s = checkpoint.load(latest)
    assert 0 < s["wall_s"] < 600
    s["wall_s"] = 1000.0  # as if the first launch had taken 1000 s: unmistakable in the second's rows
    torch.save(s, latest)
    t = time.perf_counter()
    assert main(tiny_args(celeba, run, train__max_steps=8, **fid_args(tiny_fid_net, every=4))) == 0
    second = time.perf_counter() - t
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "fid" in r]
    assert [r["step"] for r in rows] == [4, 8]
    # the second launch's clock starts where the checkpoint's stopped, and its own checkpoint carries
    # both launches' time on to a third
    assert 1000 < rows[1]["wall_s"] < 1000 + second
    assert 1000 < checkpoint.load(checkpoint.latest(run / "checkpoints"))["wall_s"] < 1000 + second


def test_time_to_fid_and_the_best_fid_span_a_resume(celeba, tiny_fid_net, tmp_path):
    """The records a run keeps across launches: the first time each FID threshold was reached, and the
    best FID (with checkpoints/best_fid). A second launch that forgot them would record the thresholds
    again at its own steps and take its first score for the best."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4, **fid_args(tiny_fid_net, every=2))) == 0
    first = json.loads((run / "time_to_fid.json").read_text())["reached"]
    assert first and {v["step"] for v in first.values()} == {2}  # the tiny network scores ~29 from the start
    best_file = run / "checkpoints" / "best_fid.json"
    best = json.loads(best_file.read_text()) | {"fid": 1.0}  # as if launch 1 had scored what none later beats
    best_file.write_text(json.dumps(best) + "\n")
    assert main(tiny_args(celeba, run, train__max_steps=8, **fid_args(tiny_fid_net, every=2))) == 0
    after = json.loads((run / "time_to_fid.json").read_text())["reached"]
    assert {k: after[k] for k in first} == first
    assert json.loads(best_file.read_text()) == best
    assert checkpoint.load(run / "checkpoints" / "best_fid")["step"] == best["step"]
    assert (run / "STATUS").read_text().startswith("finished 8; time to FID <=200: ") and "(step 2)" in \
        (run / "STATUS").read_text()


def test_the_ema_generator_samples_with_statistics_of_its_own_weights():
    """The EMA generator copies G's BatchNorm statistics, which belong to G's weights. Recalibrated,
    its eval-mode samples match what its own weights give with true batch statistics (the reference:
    train mode on a large batch); with the copied ones they are further off."""
    import copy
    from fastdcgan.state import recalibrate_batchnorm
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32)
    opt_g, opt_d = make_optimizers(G, D, 2e-4, 2e-4, (0.5, 0.999), compiled=False, graphs=False)
    ema = make_ema(G)
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, ema_decay=0.95), ema=ema)
    for _ in range(30):
        gan.step(torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8))
    z = torch.randn(512, 16, 1, 1, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = copy.deepcopy(ema).train()(z)  # the statistics of these weights on this noise
    stale = sample(ema, z)
    recalibrate_batchnorm(ema, 16, torch.device("cpu"))
    fresh = sample(ema, z)
    assert not ema.training
    error_stale, error_fresh = ((stale - reference).abs().mean().item(),
                                (fresh - reference).abs().mean().item())
    assert error_fresh < 0.5 * error_stale and error_fresh < 0.02, (error_fresh, error_stale)


def test_every_checkpoint_holds_the_ema_generator_with_statistics_of_its_own_weights(celeba, tmp_path):
    """What `generate --ema` and `fid --ema` load from a checkpoint is what the trainer sampled with: the
    EMA generator's BatchNorm statistics recalibrated for its weights at that step, also where the
    checkpoint falls on a step that drew no samples (the copied statistics of G are saved otherwise)."""
    import copy
    from fastdcgan.model import generator_from_state_dict
    from fastdcgan.state import recalibrate_batchnorm
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=6, model__ema=0.9, ckpt__every=3, ckpt__keep=5,
                          sample__every=4)) == 0
    saved = checkpoint.list_checkpoints(run / "checkpoints")
    assert [checkpoint.load(p)["step"] for p in saved] == [3, 6]  # 3: no samples drawn at that step
    for path in saved:
        G_ema = checkpoint.load(path)["G_ema"]
        own = copy.deepcopy(generator_from_state_dict(G_ema))
        recalibrate_batchnorm(own, 16, torch.device("cpu"))
        stats = {k: v for k, v in own.state_dict().items() if k.endswith(("running_mean", "running_var"))}
        # close, not equal: the trainer's G_ema is channels_last, this one is not (float sums reordered)
        assert stats and all(torch.allclose(G_ema[k], v, rtol=1e-4, atol=1e-6) for k, v in stats.items()), \
            (path.name, max((G_ema[k] - v).abs().max().item() for k, v in stats.items()))


def test_time_to_fid_forgets_what_a_launch_reached_after_the_checkpoint_it_resumes(celeba, tiny_fid_net,
                                                                                   tmp_path):
    """A launch killed after its last checkpoint may have reached a threshold in steps the next launch
    does again: that time belongs to no run the checkpoints hold, and the run's record is the redone one."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4, **fid_args(tiny_fid_net, every=2))) == 0
    record = json.loads((run / "time_to_fid.json").read_text())
    kept = dict(record["reached"])
    # reached after step 4's checkpoint, by a launch that died before its next
    record["reached"]["10"] = {"step": 6, "images": 48, "wall_s": 999.0, "fid": 9.0}
    (run / "time_to_fid.json").write_text(json.dumps(record))
    assert main(tiny_args(celeba, run, train__max_steps=8, **fid_args(tiny_fid_net, every=2))) == 0
    # the tiny network never scores 10: the redone steps do not reach it again
    assert json.loads((run / "time_to_fid.json").read_text())["reached"] == kept
    assert "<=10:" not in (run / "STATUS").read_text()


def test_time_to_fid_keeps_what_was_reached_at_the_step_it_resumes(celeba, tiny_fid_net, tmp_path):
    """The other side of that line: a threshold first reached by the score at the checkpoint's own step
    belongs to the run the checkpoint holds. The next launch resumes after that score and does not take
    it again, so it must keep it (in time_to_fid.json and STATUS)."""
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4, **fid_args(tiny_fid_net, every=2))) == 0
    assert checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"] == 4
    record = json.loads((run / "time_to_fid.json").read_text())
    record["reached"]["10"] = {"step": 4, "images": 32, "wall_s": 9.0, "fid": 9.0}  # as if step 4 scored 9
    (run / "time_to_fid.json").write_text(json.dumps(record))
    assert main(tiny_args(celeba, run, train__max_steps=8, **fid_args(tiny_fid_net, every=2))) == 0
    assert json.loads((run / "time_to_fid.json").read_text())["reached"] == record["reached"]
    assert "<=10: 9 s (step 4)" in (run / "STATUS").read_text()


def test_a_resumed_launch_rewrites_time_to_fid_on_rank_0_only(tmp_path):
    """A launch resumed before what time_to_fid.json holds (its checkpoint was lost) forgets those
    entries: rank 0 rewrites the file; every other rank reads it and writes nothing (rank 0 alone writes
    the run's files; two writers of one file on a shared filesystem race)."""
    from fastdcgan.rundir import RunDir
    run = RunDir(tmp_path)
    entry = {"step": 6, "images": 48, "wall_s": 1.0, "fid": 40.0}
    text = json.dumps({"target": None, "reached": {"200": entry, "100": entry, "50": entry}}, indent=1)
    run.time_to_fid.write_text(text)
    other = jobs.FID(3, None, 0.0, run, None, main=False, start=3)
    assert run.time_to_fid.read_text() == text and other.reached == {}
    jobs.FID(3, None, 0.0, run, None, main=True, start=3)
    assert jobs.FID.read_reached(run.time_to_fid) == {}


def test_a_resumed_run_reads_back_every_threshold_it_reached_to_the_last_digit(tmp_path):
    """time_to_fid.json names each threshold so that it reads back as the same float: a fid.target of
    27.293976214016247 written as "27.294" came back as another threshold, and a resumed run reached the
    target a second time, later, and kept that time (found by tests/test_resume_records.py). A file
    written that way before is read as naming the target."""
    from fastdcgan.metrics.tracker import FIDTracker
    from fastdcgan.rundir import RunDir
    targets = (27.293976214016247, 12.3456789, 0.1 + 0.2, 1e-7, 123456789.0)
    for t in (*jobs.FID.THRESHOLDS, *targets):
        assert float(jobs.FID.key(t)) == t, t
    assert [jobs.FID.key(t) for t in jobs.FID.THRESHOLDS] == ["200", "100", "50", "30", "20", "10"]
    run = RunDir(tmp_path)
    for target in targets:
        tracker = FIDTracker(config.Config(), [], None, tmp_path, ema=False)
        first = jobs.FID(3, tracker, target, run, None, main=False, start=0)
        row = {"step": 3, "images": 24, "wall_s": 1.0, "fid": target, "fid_n": 8, "fid_ema": False}
        first.keep(row, None)
        first._write()  # as rank 0 does
        again = jobs.FID(3, tracker, target, run, None, main=False, start=3)
        assert again.reached == first.reached and jobs.FID.ended_at_target(run.time_to_fid, target, 3), target
        again.keep(row | {"step": 6, "images": 48, "wall_s": 2.0, "fid": target / 2}, None)
        assert again.reached[target]["step"] == 3, target
        # a file of a version before, which named it by six digits: the same threshold, not another
        entry = {"step": 3, "images": 24, "wall_s": 1.0, "fid": target}
        run.time_to_fid.write_text(json.dumps({"target": target, "reached": {f"{target:g}": entry}}))
        assert jobs.FID.ended_at_target(run.time_to_fid, target, 3), target
        older = jobs.FID(3, tracker, target, run, None, main=False, start=3)
        older.keep(row | {"step": 6, "images": 48, "wall_s": 2.0, "fid": target / 2}, None)
        short = float(f"{target:g}")  # not a second entry under the old name
        assert older.reached[target] == entry and (short == target or short not in older.reached), target


def test_a_score_exactly_at_a_threshold_or_at_fid_target_reaches_it(tmp_path):
    """'At or below' (fid.target's help, time_to_fid's thresholds): a score of exactly 50 reaches the
    50 threshold and a target of 50, the next float above 50 neither, for every threshold. Round
    numbers are what users set as targets, and a tiny or cached network can give one."""
    from fastdcgan.metrics.tracker import FIDTracker
    from fastdcgan.rundir import RunDir
    for t in jobs.FID.THRESHOLDS:
        for fid, reached in ((t, True), (float(np.nextafter(t, np.inf)), False)):
            job = jobs.FID(3, FIDTracker(config.Config(), [], None, tmp_path, ema=False), t, RunDir(tmp_path),
                           None, main=False, start=0)
            row = {"step": 3, "images": 24, "wall_s": 1.0, "fid": fid, "fid_n": 8, "fid_ema": False}
            job.keep(row, None)
            assert (t in job.reached, job.target_reached(row)) == (reached, reached), (t, fid)
            assert min(job.reached, default=np.inf) >= t  # and no threshold below the score
