"""Every record a run writes follows every setting, by construction.

RECORDS names each file a run directory can hold, with its rule: what the file must hold, given the
settings of the launch that wrote it and the run's other records. A grid is what its step's checkpoint
samples from the fixed noise; a FID row, what its step's generator scores; generator.pth, the last
checkpoint's G; the TensorBoard scalars, the metrics rows; and so on.

Every setting of config.py is changed in a whole run of its own: its probe's value from
test_every_setting.py, on RECORD_RUN (every record on, a checkpoint at each step). Where its probe resumes,
it is changed again in a launch that resumes a run of the settings before it. Every rule is checked on each
run. So these fail here without a test of their own: a setting that reaches the step but not a record (the
EMA not in the grids or FID, the loss not on the plots' axis), a record that reads another setting, and a
record that a resumed launch forgets. A file that no rule covers fails
test_every_file_a_run_writes_has_a_rule by its name.

The settings' effects on the step itself are test_every_setting.py's; that an interrupted run's records
equal an uninterrupted one's, test_resume_records.py's.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from fastdcgan import checkpoint, config, losses, plots
from fastdcgan.data.loaders import make_loader
from fastdcgan.generate.export import load_generator
from fastdcgan.jobs import FID
from fastdcgan.launch import scan_data
from fastdcgan.metrics import extractors
from fastdcgan.metrics.frechet import feature_sums, frechet_distance, generator_stats, real_batches
from fastdcgan.model import fixed_noise, sample
from fastdcgan.report import NOT_SCALARS, TB_GROUPS
from fastdcgan.state import resolve_compile
from conftest import REPO, make_celeba, torchrun_two_nodes
from test_every_setting import ALL_KEYS, PLACES, PROBES, RUNS, Seen, arguments, fit, launch
from test_every_setting import places  # noqa: F401  (the fixture: the faces, FID networks and runs shared)

pytestmark = pytest.mark.usefixtures("places")

# 16 images at batch 4: 4 steps an epoch, 8 steps. A checkpoint at every step, so that every grid and FID
# score has its step's weights to be compared with; grids and log rows every 3 steps, across the epochs'
# ends, and FID every 2 (fid.target ends a run at a step that is not a log step); sample.n above the batch
# (reals.png holds one batch).
RECORD_RUN = {"train.batch_size": 4, "train.epochs": 2, "log.every": 3, "log.tensorboard": True,
              "sample.every": 3, "sample.n": 6, "ckpt.every": 1, "ckpt.keep": 20, "fid.every": 2, "fid.n": 8,
              "fid.batch": 4, "fid.weights": "{fid_net}"}
# Where a probe's value is RECORD_RUN's, or would change nothing a run of RECORD_RUN writes: the value here
# (log.every 5: a drawing skips the first epoch's end).
VALUE = {"log.every": 5, "log.tensorboard": False, "ckpt.keep": 3, "fid.every": 3, "train.batch_size": 8,
         "optim.lr_d": 4.0123456789e-4}
# Where the probe's base is not what the setting needs here: never, on a new run directory, is a fresh run
# (the probe's base, a used run directory, refuses to start).
NEEDS = {"train.resume": {}}
CPU = torch.device("cpu")  # where every run here trains
# Settings with no run here, and why.
NO_RUN = {"device": "device=cuda stops on a machine without CUDA (test_every_setting.py's probe); "
                    "on a GPU, gpu_check's trainer run"}


# ----- what a run is made of: its launches -----

@dataclass(frozen=True)
class Launch:
    cfg: config.Config
    lo: int        # the step it started at
    hi: int        # the step it ended at
    warm: bool     # with a compile warm-up (compile as resolved on the CPU, where CUDA graphs are off)
    world: int     # its processes

    @property
    def batch(self) -> int:
        """Its global batch: every rank's images of a step."""
        return self.cfg.train.batch_size * self.world


def world(seen: Seen) -> int:
    """A launch's processes: one in this process (its Run), or what a two-process launch was given."""
    return seen.run.env.world if seen.run else seen.trace["world"]


def launches(s: Seen) -> list[Launch]:
    """The launches that trained, each with its settings: a fresh run's one; a resumed run's first (with
    the settings the run was started with, up to the checkpoint resumed) and its own, where it trained."""
    end, first = int(finished(s).split()[1]), s.trace.get("first")
    made = [Launch(seen.cfg, lo, hi, resolve_compile(seen.cfg.compile, CPU) != "off", world(seen))
            for seen, lo, hi in ([(first, 0, s.start)] if first else []) + [(s, s.start, end)]]
    return [la for la in made if la.hi > la.lo]


def files(s: Seen) -> list[Path]:
    """The images the run trains on, as its first launch's scan found them."""
    first = s.trace.get("first", s)
    return first.run.images.files if first.run else scan_data(first.cfg).files


@dataclass(frozen=True)
class At:
    epoch: int     # as rows, lines and file names count it (from 1): at an epoch's end, the one just done
    images: int    # every rank's images seen, up to the step's end
    end: bool      # the step ends an epoch


def walk(s: Seen) -> tuple[dict[int, At], dict[int, tuple[int, int]]]:
    """Where each step of the run falls, and each launch's start (by its first step: the epoch and the
    steps of it done). An epoch is len(files) // the global batch steps. A launch with another global batch
    (batch size or processes) than the one before it keeps the images seen in the epoch: its position is
    the old one times the old global batch over its own, rounded down."""
    n, at, start = len(files(s)), {}, {}
    epoch = pos = seen = before = 0
    for la in launches(s):
        pos = pos * before // la.batch
        start[la.lo], before = (epoch, pos), la.batch
        for k in range(la.lo + 1, la.hi + 1):
            pos, seen = pos + 1, seen + la.batch
            end = pos == n // la.batch
            epoch, pos = (epoch + 1, 0) if end else (epoch, pos)
            at[k] = At(epoch + (1 if pos else 0), seen, end)
    return at, start


def steps(la: Launch, every: int) -> list[int]:
    return [k for k in range(la.lo + 1, la.hi + 1) if k % every == 0]


def epoch_ends(s: Seen, la: Launch) -> list[int]:
    at = walk(s)[0]
    return [k for k in range(la.lo + 1, la.hi + 1) if at[k].end]


def owner(s: Seen, step: int) -> Launch:
    """The launch that trained a step."""
    return next(la for la in launches(s) if la.lo < step <= la.hi)


def finished(s: Seen) -> str:
    return (s.dir / "STATUS").read_text().split(";")[0].strip()


def rows(s: Seen, kind: str) -> list[dict]:
    return [r for r in plots.read_metrics(s.dir / "metrics.jsonl") if ("fid" in r) == (kind == "fid")]


def step_of(path: Path) -> int:
    return int(path.stem.split("_")[1])


def checkpoint_at(s: Seen, step: int) -> Path:
    return s.dir / "checkpoints" / f"step_{step:08d}.pt"


def same_image(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def scored(s: Seen) -> list[tuple[int, Launch]]:
    """The steps FID scores, each with the launch that scored it: every fid.every steps; and a launch that
    resumes at a step its fid.every makes due, with no score there yet, scores it first (of the same
    weights: none is skipped)."""
    done: list[tuple[int, Launch]] = []
    for la in filter(lambda la: la.cfg.fid.every, launches(s)):
        pending = [la.lo] if la.lo and la.lo % la.cfg.fid.every == 0 and la.lo not in dict(done) else []
        done += [(k, la) for k in pending + steps(la, la.cfg.fid.every)]
    return done


def last_step(s: Seen) -> int:
    """Where the run ends: its epochs or train.max_steps, or the first score of the launch with fid.target
    at or below it."""
    la = launches(s)[-1]
    epoch, pos = walk(s)[1][la.lo]  # what the launch had left, at its global batch
    total = la.lo + (la.cfg.train.epochs - epoch) * (len(files(s)) // la.batch) - pos
    total = min(total, la.cfg.train.max_steps or total)
    target = la.cfg.fid.target
    mine = [r["step"] for r, (_, by) in zip(rows(s, "fid"), scored(s), strict=False)
            if by == la and target and r["fid"] <= target]
    return min([total, *mine])


@dataclass(frozen=True)
class Drawing:
    step: int
    launch: Launch
    since: int     # the paced drawing before it (0: none): its histograms count the steps after that one
    name: str      # its file in plots/ (a later drawing of the same epoch writes over it)


def drawings(s: Seen) -> list[Drawing]:
    """The D-output drawings, in order: at each epoch's end log.every steps or more after the paced
    drawing before (the pace spans the launches), and at each launch's last step where none was, a look
    that leaves the pace as it was: a relaunch draws as if the run had never stopped."""
    at, paced, made = walk(s)[0], 0, []
    for la in launches(s):
        for k in epoch_ends(s, la):
            if k - paced >= la.cfg.log.every:
                made.append(Drawing(k, la, paced, f"d_outputs_epoch_{at[k].epoch:03d}.png"))
                paced = k
        if paced != la.hi:
            made.append(Drawing(la.hi, la, paced, f"d_outputs_epoch_{at[la.hi].epoch:03d}.png"))
    return made


def grid_steps(s: Seen) -> dict[str, tuple[int, Launch]]:
    """The grids a run draws (their files, each with its step and launch): every sample.every steps, at each
    epoch's end (named by the epoch), and at a launch's last step."""
    at, want = walk(s)[0], {}
    for la in launches(s):
        ends, due = epoch_ends(s, la), steps(la, la.cfg.sample.every)
        want |= {f"epoch_{at[k].epoch:03d}.png": (k, la) for k in ends}
        want |= {f"step_{k:08d}.png": (k, la) for k in due + ([la.hi] if la.hi not in due + ends else [])}
    return want


# ----- the rules: each asserts what its record holds -----

def config_toml(s: Seen) -> None:
    """The settings of the last launch, as `--config RUN_DIR/config.toml` reads them back: every value
    exact (optim.lr_d's has more digits than a short float format keeps)."""
    assert config.to_dict(config.build(s.dir / "config.toml", [])) == config.to_dict(s.cfg)


def status(s: Seen) -> None:
    """finished at the run's last step; the times to FID it gives are time_to_fid.json's (none without
    FID)."""
    assert finished(s) == f"finished {last_step(s)}"
    said = (s.dir / "STATUS").read_text()
    if not scored(s):
        assert said == f"finished {last_step(s)}\n"
        return
    reached = json.loads((s.dir / "time_to_fid.json").read_text())["reached"]
    for t, r in reached.items():
        assert f"<={float(t):g}: " in said and f"(step {r['step']})" in said, (t, said)


def train_rows(s: Seen) -> None:
    """A row at each log.every step and each launch's last, with its epoch and the images seen; the
    set-up's costs in one row of each launch: its first, or after a warm-up, the first after it."""
    at, got, want = walk(s)[0], rows(s, "train"), []
    for la in launches(s):
        logged = sorted(set(steps(la, la.cfg.log.every)) | {la.hi})
        want += [(k, at[k].epoch, at[k].images) for k in logged]
    assert [(r["step"], r["epoch"], r["images"]) for r in got] == want
    keys = {"step", "epoch", "images", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "data_ms",
            "compute_ms", "time"}
    for la in launches(s):
        mine = [r for r in got if la.lo < r["step"] <= la.hi]
        costs = [i for i, r in enumerate(mine) if "setup_s" in r]
        assert costs == [0] or (la.warm and len(costs) == 1), mine
        warmup = {"warmup_s", "warmup_steps", "warmup_graphs"} if la.warm else set()
        assert [r.keys() - keys for r in mine] == [{"setup_s", *warmup} if i in costs else set()
                                                   for i in range(len(mine))]


def fid_rows(s: Seen) -> None:
    """A score at each step scored(), of fid.n images of the sampling generator (the EMA's when model.ema
    is on) on fid.weights' network: the score that generator's checkpoint gets."""
    at, got, want = walk(s)[0], rows(s, "fid"), scored(s)
    seen = [(r["step"], r["epoch"], r["images"], r["fid_n"], r["fid_ema"], r["fid_network"]) for r in got]
    assert seen == [(k, at[k].epoch, at[k].images, la.cfg.fid.n, bool(la.cfg.model.ema),
                     network_name(la.cfg.fid.weights)) for k, la in want]
    for r, (k, la) in zip(got, want, strict=True):
        if not checkpoint_at(s, k).exists():  # rotated out (ckpt.keep)
            continue
        cfg = la.cfg
        G = load_generator(checkpoint_at(s, k), ema=bool(cfg.model.ema)).net
        ext = extractors.load(cfg.fid.weights)  # the real images' statistics made here, not the cache's
        reals = real_batches(files(s), cfg.data.image_size, cfg.fid.batch)
        real = feature_sums(reals, ext).gaussian()
        score = frechet_distance(real, generator_stats(G, cfg.fid.n, ext, cfg.fid.batch, seed=0))
        assert r["fid"] == pytest.approx(score, rel=1e-9, abs=0), k


def network_name(weights: str) -> str:
    return "torchscript:" + hashlib.sha1(Path(weights).read_bytes()).hexdigest()[:16]


def time_to_fid(s: Seen) -> None:
    """Each threshold (and each launch's fid.target) reached by the first score at or below it of the
    launches that had it, with its step and images seen; the target, the last launch's."""
    if not scored(s):
        assert not (s.dir / "time_to_fid.json").exists()
        return
    record = json.loads((s.dir / "time_to_fid.json").read_text())
    assert record["target"] == (s.cfg.fid.target or None)
    want, targets = {}, {la.cfg.fid.target for la in launches(s)} - {0.0}
    for t in sorted({*FID.THRESHOLDS, *targets}, reverse=True):
        first = next((r for r, (_, la) in zip(rows(s, "fid"), scored(s), strict=True)
                      if r["fid"] <= t and (t in FID.THRESHOLDS or t == la.cfg.fid.target)), None)
        if first:
            want[f"{t:g}"] = {"step": first["step"], "images": first["images"], "fid": first["fid"]}
    got = {f"{float(t):g}": {k: r[k] for k in ("step", "images", "fid")}
           for t, r in record["reached"].items()}
    assert got == want


def checkpoint_files(s: Seen) -> None:
    """step_N.pt at every ckpt.every steps, each epoch's end, each launch's last step and each new best
    FID; the last ckpt.keep of them; latest names the newest; best_fid is the best score's, with its
    record; each holds the settings of the launch that saved it."""
    saved = set()
    for la in launches(s):
        saved |= set(steps(la, la.cfg.ckpt.every)) | set(epoch_ends(s, la)) | {la.hi}
    best, scores = math.inf, rows(s, "fid")
    for r in scores:
        if r["fid"] < best:
            best, saved = r["fid"], saved | {r["step"]}
    want = sorted(saved)[-launches(s)[-1].cfg.ckpt.keep:]
    folder = s.dir / "checkpoints"
    assert sorted(step_of(p) for p in folder.glob("step_*.pt")) == want
    assert (folder / "latest").read_text().strip() == checkpoint_at(s, want[-1]).name
    for k in want:
        held = config.from_dict(checkpoint.load(checkpoint_at(s, k))["config"])
        assert config.to_dict(held) == config.to_dict(owner(s, k).cfg), k
    if not scores:
        assert not list(folder.glob("best_fid*"))
        return
    top = min(scores, key=lambda r: r["fid"])
    assert json.loads((folder / "best_fid.json").read_text()) == {
        "step": top["step"], "fid": top["fid"], "n": top["fid_n"], "ema": top["fid_ema"]}
    assert torch.load(folder / "best_fid", weights_only=False)["step"] == top["step"]


def ema_average(s: Seen) -> None:
    """Each checkpoint's EMA generator is the average model.ema and model.ema_warmup call for: one update a
    step, of the step's G, at weight max(9 / (10 + t), 1 - model.ema) after t updates (1 - model.ema
    without the warm-up). The average starts at G where the launch before had no EMA. Its weights only:
    its BatchNorm statistics are recalibrated at each save."""
    for k in range(2, launches(s)[-1].hi + 1):
        cfg, now, before = owner(s, k).cfg, checkpoint_at(s, k), checkpoint_at(s, k - 1)
        if not (cfg.model.ema and now.exists() and before.exists()):
            continue
        now, before = checkpoint.load(now), checkpoint.load(before)
        start = before.get("G_ema", before["G"])
        w = max(9 / (10 + k - 1), 1 - cfg.model.ema) if cfg.model.ema_warmup else 1 - cfg.model.ema
        for name, got in now["G_ema"].items():
            if "running_" not in name and "num_batches" not in name:
                want = torch.lerp(start[name], now["G"][name], w)
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (k, name)


def weights_files(s: Seen) -> None:
    """generator.pth, discriminator.pth: the last checkpoint's G and D; generator_ema.pth its EMA G, when
    model.ema is on."""
    last = checkpoint.load(checkpoint_at(s, launches(s)[-1].hi))
    for name, key in (("generator.pth", "G"), ("discriminator.pth", "D"), ("generator_ema.pth", "G_ema")):
        path = s.dir / name
        if key == "G_ema" and not s.cfg.model.ema:
            assert not path.exists()
            continue
        got = torch.load(path, weights_only=True)
        assert got.keys() == last[key].keys() and all(torch.equal(got[k], last[key][k]) for k in got), name


def grids(s: Seen) -> None:
    """samples/: the fixed noise (sample.n of it) through the sampling generator (the EMA's when model.ema
    is on) of the grid's step, as its checkpoint gives it; reals.png, the first launch's first batch (up to
    sample.n of it)."""
    want, folder, tmp = grid_steps(s), s.dir / "samples", s.dir.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted([*want, "reals.png"])
    for name, (k, la) in want.items():
        if not checkpoint_at(s, k).exists():  # rotated out (ckpt.keep)
            continue
        cfg = la.cfg
        z = fixed_noise(cfg.sample.n, cfg.model.nz, cfg.train.seed + 1)
        G = load_generator(checkpoint_at(s, k), ema=bool(cfg.model.ema)).net
        plots.write_grid(plots.sample_grid(sample(G, z)), tmp / "grid.png")
        assert same_image(folder / name, tmp / "grid.png"), name
    first = s.trace.get("first", s)
    loader = (first.run.loader if first.run else
              make_loader(first.cfg, scan_data(first.cfg), CPU, 0, world(first)))
    batch = next(iter(loader.epoch(0, 0)))[: first.cfg.sample.n]  # rank 0's, as its loader gives it again
    plots.save_grid(batch.permute(0, 3, 1, 2).float() / 127.5 - 1, tmp / "reals.png")
    assert same_image(folder / "reals.png", tmp / "reals.png")


def plot_files(s: Seen) -> None:
    """plots/loss.png and plots/fid.png are metrics.jsonl drawn, loss.png's D outputs as the train.loss of
    the last drawing's launch reports them; the D-output histograms at drawings(), on the axis of the
    train.loss of the launch that drew them."""
    want = {d.name: (d.step, d.launch) for d in drawings(s)}  # each file, its last drawing
    folder, tmp = s.dir / "plots", s.dir.parent
    fid = ["fid.png"] if scored(s) else []
    assert sorted(p.name for p in folder.iterdir()) == sorted([*want, "loss.png", *fid])
    for name, (_, la) in want.items():
        axis = losses.HISTOGRAM_AXIS[la.cfg.train.loss]
        assert Image.open(folder / name).text["Description"] == f"x: {axis}", name
    loss = drawings(s)[-1].launch.cfg.train.loss  # loss.png is drawn again at every drawing
    assert Image.open(folder / "loss.png").text["Description"] == f"y: {losses.REPORTED[loss]}"
    for name, draw in (("loss.png", lambda m, out: plots.plot_losses(m, out, loss)),
                       *[(name, plots.plot_fid) for name in fid]):
        draw(s.dir / "metrics.jsonl", tmp / name)
        assert same_image(folder / name, tmp / name), name
    if fid:  # its title: the latest score's settings
        la = scored(s)[-1][1]
        ema = " (EMA generator)" if la.cfg.model.ema else ""
        said = Image.open(folder / "fid.png").text["Title"]
        assert said == f"FID on {la.cfg.fid.n} samples{ema}, lower is better"


def tensorboard(s: Seen) -> None:
    """The launches with log.tensorboard on write every number of their metrics rows as a scalar at its
    step, their grids and their D-output histograms; a run with none has no tb/."""
    on = [la for la in launches(s) if la.cfg.log.tensorboard]
    if not on:
        assert not (s.dir / "tb").exists()
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(s.dir / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    got = {(t, e.step): e.value for t in acc.Tags()["scalars"] for e in acc.Scalars(t)}
    fid = dict(scored(s))
    want = {(f"{TB_GROUPS.get(k, 'train')}/{k}", r["step"]): v
            for r in plots.read_metrics(s.dir / "metrics.jsonl")
            if (fid[r["step"]] if "fid" in r else owner(s, r["step"])) in on
            for k, v in r.items() if k not in NOT_SCALARS and type(v) in (int, float)}  # not bools
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)
    shown = sorted(k for k, la in grid_steps(s).values() if la in on)
    assert sorted(e.step for e in acc.Images("samples")) == shown
    # each drawing's histograms: D's outputs on the real and on the fake images of every step since the
    # paced drawing before (one D update's of each step, on every rank), which differ
    at = {0: At(0, 0, False), **walk(s)[0]}
    want = {d.step: at[d.step].images - at[d.since].images for d in drawings(s) if d.launch in on}
    real, fake = ({e.step: e.histogram_value for e in acc.Histograms(tag)} for tag in ("D/real", "D/fake"))
    assert {k: h.num for k, h in real.items()} == {k: h.num for k, h in fake.items()} == want
    assert all(list(real[k].bucket) != list(fake[k].bucket) for k in want)


RECORDS: dict[str, Callable[[Seen], None] | str] = {
    "config.toml": config_toml,
    "STATUS": status,
    "metrics.jsonl": lambda s: (train_rows(s), fid_rows(s)),
    "time_to_fid.json": time_to_fid,
    "checkpoints/*": lambda s: (checkpoint_files(s), ema_average(s)),
    "*.pth": weights_files,
    "samples/*": grids,
    "plots/*": plot_files,
    "tb/*": tensorboard,
    "plan.json": "test_every_setting.py's PLAN_SHOWS: each setting's place in the plan, in its probe's runs",
    "skipped_files.txt": "each launch's scan's list of files that do not decode: test_train.py",
    "fid.jsonl": "python -m fastdcgan.fid's scores: test_fid.py",
    "STOP": "a user's file: test_stop.py",
}


# ----- the runs -----

def value(key: str):
    return VALUE.get(key, PROBES[key].value)


def needs(key: str) -> dict:
    """What the setting needs to act (its probe's base: wgan-gp for gp_lambda); a whole run's probe's base is
    for its own runs' length, and RECORD_RUN stands in for it."""
    return NEEDS.get(key, PROBES[key].base if PROBES[key].stage != "fit" else {})


def settings(key: str) -> dict:
    return {**RECORD_RUN, **needs(key), key: value(key)}


def fresh(key: str) -> Seen:
    return launch("fit", settings(key))


def resumed(key: str) -> Seen:
    """A launch with the setting changed that resumes a run of the settings before it, stopped at the
    first epoch's end (step 4)."""
    first = launch("fit", {**RECORD_RUN, **needs(key), "train.max_steps": 4})
    assert first.trace["code"] == 0, first.out
    run_key = ("records-resumed", key)
    if run_key not in RUNS:
        folder = PLACES["tmp"] / f"records-resumed-{key}"
        shutil.copytree(first.dir, folder)
        RUNS[run_key] = fit(arguments(settings(key), folder))
        RUNS[run_key].trace["first"] = first
    return RUNS[run_key]


RUN_KEYS = [key for key in ALL_KEYS if key not in NO_RUN]
RESUMED_KEYS = [key for key in RUN_KEYS if PROBES[key].resume]


def test_every_setting_has_a_run_or_says_why_not():
    assert set(RUN_KEYS) | set(NO_RUN) == set(ALL_KEYS) and not set(NO_RUN) - set(ALL_KEYS)
    for key in RUN_KEYS:  # a change from what the run would have had: a run that could show it
        before = dict(a.split("=", 1) for a in arguments({**RECORD_RUN, **needs(key)}, PLACES["tmp"]))
        after = dict(a.split("=", 1) for a in arguments(settings(key), PLACES["tmp"]))
        default = config.get(config.to_dict(config.Config()), key)
        assert after[key] != before.get(key, str(default)), key


def check_every_record(s: Seen) -> None:
    assert s.trace["code"] == 0, s.out[-3000:]
    for rule in RECORDS.values():
        if callable(rule):
            rule(s)


@pytest.mark.parametrize("key", RUN_KEYS)
def test_every_record_follows_the_setting(key):
    if PROBES[key].base.get("data.backend") == "dali":
        pytest.importorskip("nvidia.dali")
    check_every_record(fresh(key))


@pytest.mark.parametrize("key", RESUMED_KEYS)
def test_every_record_follows_the_setting_changed_on_resume(key):
    if PROBES[key].base.get("data.backend") == "dali":
        pytest.importorskip("nvidia.dali")
    s = resumed(key)
    assert s.start == 4, s.out[-3000:]
    check_every_record(s)


def test_every_record_of_a_run_with_the_default_records():
    """Without FID or TensorBoard (as a run is by default), and resumed with both on."""
    plain = {**RECORD_RUN, "fid.every": 0, "log.tensorboard": False}
    check_every_record(launch("fit", plain))
    first = launch("fit", {**plain, "train.max_steps": 4})
    folder = PLACES["tmp"] / "records-resumed-plain"
    shutil.copytree(first.dir, folder)
    later = fit(arguments(RECORD_RUN, folder))
    later.trace["first"] = first
    RUNS[("records-resumed", "plain")] = later
    check_every_record(later)


def every_value_at_once() -> tuple[dict, dict, list[str]]:
    """What both launches have (RECORD_RUN, and what settings need to act that no value here changes), the
    values of every setting whose probe resumes, as many at once as config allows (each beside the values
    taken before it; what a setting needs of another's, where that one has no value yet, among them), and
    the settings left out."""
    needed, values, left_out = dict(RECORD_RUN), {}, []
    for key in RESUMED_KEYS:
        if PROBES[key].base.get("data.backend") == "dali":
            continue
        own = {k: v for k, v in needs(key).items() if k == key or k not in RESUMED_KEYS}
        other = {k: v for k, v in needs(key).items() if k not in own and k not in values}
        trial_needed, trial_values = {**needed, **own}, {**other, **values, key: value(key)}
        try:
            for settings in ({**trial_needed, **trial_values}, trial_needed):
                cfg = config.build(None, [f"{k}={v}" for k, v in settings.items()])
                if config.inert(cfg, 1, cfg.data.backend):
                    raise config.UsageError("inert")
        except config.UsageError:
            left_out.append(key)
            continue
        needed, values = trial_needed, trial_values
    return needed, values, left_out


def test_every_record_of_a_run_with_every_value_at_once():
    """The settings acting together (the EMA with two G updates a step, R1 with the augment), in one run
    that keeps a checkpoint at every step: so the rules that compare a step's checkpoint (the grids, the FID
    rows, the EMA's average) check every step, which ckpt.every's value among them would leave out."""
    needed, values, _ = every_value_at_once()
    s = launch("fit", {**needed, **{k: v for k, v in values.items() if not k.startswith("ckpt.")}})
    check_every_record(s)


def test_every_record_when_every_setting_goes_back_on_resume():
    """Resumed with every setting changed back at once, from a run with every value (its fid.target ends
    it early): no record keeps the first launch's settings (an EMA generator file without the EMA, the
    old fid.target in time_to_fid.json)."""
    needed, values, left_out = every_value_at_once()
    assert len(values) >= len(RESUMED_KEYS) - 6, left_out
    first = launch("fit", {**needed, **values, "train.max_steps": 4})
    assert first.trace["code"] == 0, first.out
    folder = PLACES["tmp"] / "records-resumed-back"
    shutil.copytree(first.dir, folder)
    later = fit(arguments(needed, folder))
    later.trace["first"] = first
    RUNS[("records-resumed", "back")] = later
    assert later.start < 4 and later.start == int(finished(first).split()[1])
    check_every_record(later)


def two_processes(settings: dict, name: str, first: Seen | None = None) -> Seen:
    """A launch of these settings as two processes (gloo, two nodes, each as records_worker.py runs the
    trainer), on a new run directory or on a copy of first's; rank 1 writes nothing into it."""
    folder = PLACES["tmp"] / name
    if first:
        shutil.copytree(first.dir, folder)
    args = arguments(settings, folder)
    r = torchrun_two_nodes([str(REPO / "tests" / "records_worker.py"), "0", *args])
    s = Seen(config.build(None, args), out=r.stdout, dir=folder, trace={"code": r.returncode, "world": 2})
    if first:
        s.start, s.trace["first"] = int(finished(first).split()[1]), first
    if r.returncode == 0:
        assert json.loads(Path(f"{folder}.writes.rank1.json").read_text()) == [], "rank 1 wrote into the run"
    return s


def one_process(settings: dict, name: str, first: Seen) -> Seen:
    """A launch of these settings in this process, on a copy of first's run directory."""
    shutil.copytree(first.dir, PLACES["tmp"] / name)
    s = fit(arguments(settings, PLACES["tmp"] / name))
    s.trace["first"] = first
    return s


@pytest.fixture(scope="module")
def odd_faces(request):
    """17 faces: a count no number of processes divides (each rank's share of the FID's real images)."""
    request.getfixturevalue("places")
    PLACES["odd"] = make_celeba(PLACES["tmp"] / "odd", 17)


# Runs of two launches, each (settings, processes), where no setting's own run shows what they do (None: a
# fresh run), on the 17 faces: a launch that changes the global batch (mid-epoch, where the position
# converts inexactly), two processes (batch 2: 4 steps an epoch), and a launch that ends between
# checkpoints.
SPLIT_RUN = {**RECORD_RUN, "data.root": "{odd}"}
SPLITS = {
    "batch size": (({**SPLIT_RUN, "train.max_steps": 3}, 1), ({**SPLIT_RUN, "train.batch_size": 8}, 1)),
    "two processes": (None, ({**SPLIT_RUN, "train.batch_size": 2}, 2)),
    "one process, then two": (({**SPLIT_RUN, "train.batch_size": 2, "train.max_steps": 5}, 1),
                              ({**SPLIT_RUN, "train.batch_size": 2}, 2)),
    "two processes, then one": (({**SPLIT_RUN, "train.batch_size": 2, "train.max_steps": 3}, 2),
                                ({**SPLIT_RUN, "train.batch_size": 8}, 1)),
    "ended between checkpoints": (({**SPLIT_RUN, "ckpt.every": 5, "train.max_steps": 3}, 1),
                                  ({**SPLIT_RUN, "ckpt.every": 5}, 1)),
}


@pytest.mark.parametrize("case", SPLITS)
@pytest.mark.usefixtures("odd_faces")
def test_every_record_of_a_run_in_two_launches(case):
    """Every rank's images in the counts, the epochs at the global batch, a resumed position converted by the
    images seen, rank 0's first batch in reals.png, the FID samples shared out, every rank's D outputs in the
    histograms; and a launch's last grid, drawing and checkpoint where no step's were due."""
    (before, n_before), (after, n_after) = SPLITS[case][0] or (None, 0), SPLITS[case][1]
    tag = case.replace(" ", "-").replace(",", "")
    first = None
    if before:
        first = launch("fit", before) if n_before == 1 else two_processes(before, f"records-{tag}-first")
        assert first.trace["code"] == 0, first.out[-3000:]
    s = (two_processes(after, f"records-{tag}", first) if n_after == 2 else
         one_process(after, f"records-{tag}", first))
    RUNS[("records-resumed", tag)] = s
    check_every_record(s)


def test_every_file_a_run_writes_has_a_rule():
    """Every file of these runs matches a pattern of RECORDS (a new record fails here by its name), and every
    rule's pattern matches a file of RECORD_RUN's run."""
    runs = [s for k, s in RUNS.items() if k[0] in ("fit", "records-resumed") and s.dir]
    written = {p.relative_to(s.dir).as_posix() for s in runs for p in s.dir.rglob("*") if p.is_file()}
    assert written, "no runs made: run the module's other tests first"
    ruleless = sorted(f for f in written if not any(fnmatch.fnmatch(f, pattern) for pattern in RECORDS))
    assert not ruleless, f"files no rule in RECORDS covers: {ruleless}"
    base = launch("fit", RECORD_RUN)
    check_every_record(base)
    mine = [p.relative_to(base.dir).as_posix() for p in base.dir.rglob("*") if p.is_file()]
    unused = [pattern for pattern, rule in RECORDS.items()
              if callable(rule) and not any(fnmatch.fnmatch(f, pattern) for f in mine)]
    assert not unused, f"rules for files RECORD_RUN's run does not write: {unused}"
