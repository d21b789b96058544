"""Every record a run writes spans its launches: a run stopped four times (with no checkpoint left, and
with its newest checkpoint lost, as a kill -9 leaves it; on an epoch's last step; where FID was due)
and launched again each time leaves the same run directory as the run that was never stopped; launched
once more after it finished, it changes nothing.

By construction: every file of the uninterrupted run is compared with the interrupted run's, by its
contents; only what is a clock, and the checkpoints a stop adds, are set aside, each named below
with its reason. A record added later is held to this without a change here. The run's clock is held
apart: each launch's records count on from the clock of the checkpoint it resumed. FID's thresholds
are the scores of a first run that beat every score before them, so that the times to FID span the
launches too.
"""
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO, tiny_args, tiny_state, torchrun_two_nodes
from fastdcgan import checkpoint, jobs, losses, train
from fastdcgan.state import rank_share
from fastdcgan.stop import Stop
from fastdcgan.train import main

# What may differ, and why. Keys of metrics rows and time_to_fid entries that are clocks:
CLOCKS = {"time", "img_per_s", "data_ms", "compute_ms", "mfu", "setup_s", "warmup_s", "warmup_steps", "fid_s",
          "wall_s"}
# Files: each stop adds a checkpoint the uninterrupted run has not (the latest and best_fid are compared);
# TensorBoard's files are named by time and host (their events are compared); STATUS ends with
# time to FID in seconds (its word and step are compared).
SET_ASIDE = ("checkpoints/step_", "tb/", "STATUS")

# 48 images, batch 8: 6 steps per epoch; 3 epochs. Every side job on, at periods that line up with
# the epochs and the stops in some places and not in others: log rows every 5 (and plots drawn at an
# epoch end 5 steps after the last drawing), grids every 4, checkpoints every 4, FID every 3.
# Each launch but the last stops at a step, and loses the checkpoints named: the first, every one (the
# second starts afresh, with rows, grids, a FID score and time_to_fid.json on disk); the second at the
# first epoch's end, its signal coming just after the epoch's last step checked for one (AFTER_CHECK:
# the epoch end's own check finds it, after that epoch's grid and plots and before its checkpoint and
# FID score); the third, its stop's (the fourth resumes at 8, with the same after it on disk); the
# fourth stops on an epoch's last step, before the epoch's end and its FID score; the fifth at a step
# where FID is due, after the step's checkpoint and before its score.
LAUNCHES = [(5, "all"), (6, None), (11, "step_00000011.pt"), (12, None), (15, None)]
AFTER_CHECK = {6}


# The stateful parts on, in two sets: the paper's loss with EMA, augmentation and flips on the torch
# input, fine-tuned from another run's weights (train.init: a relaunch must resume its own, not load
# those again); and another loss with lazy R1 (its own step counter), dropout, spectral norm, two D updates
# a step and smoothed labels, on the decoded cache, in fp16 (the GradScaler: its scale and its count of
# clean steps towards the next growth); and WGAN-GP with two G updates a step and cutout, on the DALI input
# (its own reader's position), in bf16. (With an EMA, this set's FID stops falling after step 9, which the
# test's thresholds need it to do at 15 and 18.)
VARIANTS = {
    "bce-ema-augment": dict(model__ema=0.9, data__augment="color,translation", data__hflip="true",
                            train__init="{tiny_run}"),
    "lsgan-r1-cache-fp16": dict(train__loss="lsgan", train__r1_gamma=1.0, train__r1_every=4,
                                model__d_dropout=0.2, model__spectral_norm="true", train__d_steps=2,
                                train__real_label=0.9, data__backend="cache", precision="fp16"),
    "wgan-gp-dali-bf16": dict(train__loss="wgan-gp", train__g_steps=2, data__augment="cutout",
                              data__backend="dali", precision="bf16"),
}


def settings(celeba, run, fid_net, variant, tiny_run):
    chosen = {k: str(tiny_run) if v == "{tiny_run}" else v for k, v in VARIANTS[variant].items()}
    return tiny_args(celeba, run, train__epochs=3, log__every=5, sample__every=4, ckpt__every=4,
                     ckpt__keep=2, fid__every=3, fid__n=16, fid__batch=8, fid__weights=fid_net,
                     log__tensorboard="true", **chosen)


def stop_at(monkeypatch, step):
    """A real SIGUSR1 to this process as the loop reaches `step` (in AFTER_CHECK: just after the step's
    own stop check): the trainer's own stop path follows."""
    if step in AFTER_CHECK:
        requested = Stop.requested

        def check_then_signal(self, at, now=False):
            why = requested(self, at, now)
            if at == step and not now:
                os.kill(os.getpid(), signal.SIGUSR1)
            return why
        monkeypatch.setattr(Stop, "requested", check_then_signal)
        return
    progress = jobs.Log.progress

    def progress_then_signal(self, at, epoch, wall_s):
        progress(self, at, epoch, wall_s)
        if at == step:
            os.kill(os.getpid(), signal.SIGUSR1)
    monkeypatch.setattr(jobs.Log, "progress", progress_then_signal)


def files(run):
    return {p.relative_to(run).as_posix(): p for p in run.rglob("*") if p.is_file()}


def rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in CLOCKS}
            for line in path.read_text().splitlines()]


def tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)]
               for t in tags["scalars"] if t.split("/")[-1] not in CLOCKS}
    images = {t: [(e.step, e.encoded_image_string) for e in acc.Images(t)] for t in tags["images"]}
    histograms = {t: [(e.step, e.histogram_value.bucket) for e in acc.Histograms(t)]
                  for t in tags["histograms"]}
    return scalars, images, histograms


def differences(a, b, where=""):
    """Where two checkpoint trees differ: tensors bit for bit, the rest by ==."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    else:
        same = type(a) is type(b) and a == b
    return [] if same else [where]


def same_checkpoint(a, b, run_dirs):
    sa, sb = checkpoint.load(a), checkpoint.load(b)
    for s, run in zip((sa, sb), run_dirs, strict=True):
        assert s.pop("config")["train"].pop("run_dir") == str(run)
        s.pop("wall_s")  # a clock
    assert differences(sa, sb) == []


def next_second() -> None:
    """Until the clock's second changes. TensorBoard reads a folder's event files in name order, and a
    name starts with the second its file was made, then the process, then a count kept as text (9 sorts
    after 10): two launches of one process in one second, which only a test makes, can be read in the
    wrong order, and the earlier one's purge then hides the later one's events."""
    time.sleep(1 - time.time() % 1 + 0.01)


LONG = 1e6  # seconds: what lengthen_the_clock adds to the run's clock in the checkpoint a launch resumes


def lengthen_the_clock(run) -> tuple[int, float] | None:
    """Before a launch: the checkpoint it resumes from says the run has been going LONG seconds more (as a
    run of days would). The clocks are set aside in the comparison with the uninterrupted run; this is
    what holds them. The step resumed from and its clock, or None."""
    path = checkpoint.latest(run / "checkpoints")
    if path is None:
        return None
    state = checkpoint.load(path)
    state["wall_s"] += LONG
    checkpoint.atomic_write(path, lambda f: torch.save(state, f))
    return state["step"], state["wall_s"]


def the_clock_carries_on(run, resumed: tuple[int, float] | None) -> None:
    """Every record of the run's time (wall_s) the launch resumed at `resumed` wrote after that step (its
    checkpoints, its FID rows in metrics.jsonl, time_to_fid.json's entries) counts on from the clock of
    the checkpoint it resumed: a clock that restarts with a launch, or from an earlier checkpoint's, fails."""
    if resumed is None:
        return
    step, clock = resumed
    records = [checkpoint.load(p) for p in (run / "checkpoints").glob("step_*.pt")]
    records += [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "wall_s" in r]
    if (run / "time_to_fid.json").exists():
        records += json.loads((run / "time_to_fid.json").read_text())["reached"].values()
    clocks = [r["wall_s"] for r in records if r["step"] > step]
    assert clocks and min(clocks) >= clock, (resumed, clocks)


def thresholds_along_the_way(monkeypatch, probe) -> None:
    """time_to_fid.json's thresholds for the runs to come: FID's own, and each score of `probe` (a run
    like them) that beats every score before it. FID's own are all reached at the first score with the
    tiny network, before any stop; these are reached at later steps too, so that the file's entries span
    the launches (a threshold reached at a step a launch resumes from must be kept, one reached after it
    counts on from its clock)."""
    written = map(json.loads, (probe / "metrics.jsonl").read_text().splitlines())
    scores = [(r["step"], r["fid"]) for r in written if "fid" in r]
    firsts = [fid for i, (_, fid) in enumerate(scores) if all(fid < f for _, f in scores[:i])]
    monkeypatch.setattr(jobs.FID, "THRESHOLDS", (*jobs.FID.THRESHOLDS, *firsts))


def lose(run, lost):
    """The checkpoints a launch killed before it wrote them would not have left."""
    for path in (run / "checkpoints").glob("step_*.pt" if lost == "all" else str(lost)):
        path.unlink()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("variant", VARIANTS)
def test_an_interrupted_run_leaves_the_run_directory_of_an_uninterrupted_one(celeba, tiny_fid_net, tmp_path,
                                                                             monkeypatch, variant, tiny_run):
    probe, whole, split = tmp_path / "probe", tmp_path / "whole", tmp_path / "split"
    assert main(settings(celeba, probe, tiny_fid_net, variant, tiny_run)) == 0
    thresholds_along_the_way(monkeypatch, probe)
    assert main(settings(celeba, whole, tiny_fid_net, variant, tiny_run)) == 0
    # What the thresholds are for, in the runs compared: one reached at step 15, where the fifth launch
    # stops after the checkpoint and before the score (the sixth, resumed at 15, scores it on the clock
    # it resumed); and one at the last step, 18, scored before the run finished, which the launch after
    # it resumes at and must keep.
    reached = json.loads((whole / "time_to_fid.json").read_text())["reached"].values()
    assert {15, 18} <= {r["step"] for r in reached}, sorted(r["step"] for r in reached)
    for step, lost in LAUNCHES:
        next_second()
        resumed = lengthen_the_clock(split)
        with monkeypatch.context() as m:
            stop_at(m, step)
            assert main(settings(celeba, split, tiny_fid_net, variant, tiny_run)) == 75
        the_clock_carries_on(split, resumed)
        lose(split, lost)
    assert checkpoint.load(checkpoint.latest(split / "checkpoints"))["step"] == LAUNCHES[-1][0]
    next_second()
    resumed = lengthen_the_clock(split)
    assert main(settings(celeba, split, tiny_fid_net, variant, tiny_run)) == 0
    the_clock_carries_on(split, resumed)
    next_second()  # once more after it finished (a requeued job, a rerun script): nothing changes
    assert main(settings(celeba, split, tiny_fid_net, variant, tiny_run)) == 0
    same_run_directories(whole, split)
    for run in (whole, split):
        images_count_every_rank(run, 8)
        histograms_read_as_the_loss_says(run, dict(VARIANTS[variant]).get("train__loss", "bce"))


def test_each_launchs_set_up_counts_in_the_runs_clock(celeba, tmp_path, monkeypatch):
    """The run's clock (wall_s, and the time to FID it gives) is what a user waits: it counts each launch
    from its start, its set-up included (the data scan, making the built-in faces, a cache build, FID's
    real statistics). Here the data scan of each launch takes LONG seconds on a clock the test moves, so
    a fresh launch's checkpoints read LONG or more, and a resumed one's the clock of the checkpoint it
    resumed plus LONG or more. A launch that starts the clock after its set-up (at the models, or at the
    checkpoint's loading) fails. Each launch's first metrics row gives its own set-up (setup_s: LONG or
    more, and less than two, not the earlier launches' time too). (A moved clock: the same on real time
    asserted a lower bound that a loaded machine broke.)"""
    moved = [0.0]
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real() + moved[0])
    scan = train.scan_data

    def slow_scan(cfg):
        moved[0] += LONG
        return scan(cfg)
    monkeypatch.setattr(train, "scan_data", slow_scan)
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, train__max_steps=4)) == 0
    first = checkpoint.load(run / "checkpoints" / "step_00000004.pt")["wall_s"]
    assert LONG <= first < 2 * LONG
    assert main(tiny_args(celeba, run, train__max_steps=8)) == 0
    assert checkpoint.load(run / "checkpoints" / "step_00000008.pt")["wall_s"] >= first + LONG
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    set_up = [r["setup_s"] for r in logged if "setup_s" in r]
    assert len(set_up) == 2 and all(LONG <= x < 2 * LONG for x in set_up), set_up


def histograms_read_as_the_loss_says(run: Path, loss: str) -> None:
    """Every D-output histogram's x-axis is its loss's reading (losses.py's table), as its PNG says."""
    drawn = sorted((run / "plots").glob("d_outputs_epoch_*.png"))
    assert drawn and all(Image.open(p).info["Description"] == f"x: {losses.HISTOGRAM_AXIS[loss]}"
                         for p in drawn), [Image.open(p).info.get("Description") for p in drawn]


def two_processes(stop: int, args: list[str]) -> None:
    """A two-process launch (gloo, as two nodes) of the trainer, stopped by SIGUSR1 on every rank at
    `stop` (0: not)."""
    r = torchrun_two_nodes([str(REPO / "tests" / "records_worker.py"), str(stop), *args])
    assert r.returncode == 0, r.stdout  # under torchrun a stop exits 0 too
    run = next(a.split("=", 1)[1] for a in args if a.startswith("train.run_dir="))
    assert json.loads(open(f"{run}.writes.rank1.json").read()) == [], "rank 1 wrote into the run directory"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_processes_interrupted_leave_the_run_directory_of_two_uninterrupted(celeba, tiny_fid_net,
                                                                               tmp_path, tiny_run):
    """The same under DDP: every rank's random state, its share of the data and of the FID samples, the
    histograms summed over ranks, BatchNorm's statistics over the ranks. The ranks agree on a stop at the
    epoch's end after the signal (or at a paced check before it); its checkpoint is lost, so the next
    launch resumes at the one before."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    # a file that does not decode: skipped_files.txt is a record too, rank 0's alone to write
    (celeba / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")

    def args(run):
        # sync_bn: the EMA generator's samples recalibrate its statistics across the ranks (a collective)
        return settings(celeba, run, tiny_fid_net, "bce-ema-augment", tiny_run) + ["train.batch_size=4",
                                                                                   "model.sync_bn=true"]
    two_processes(0, args(whole))
    two_processes(7, args(split))
    stopped = checkpoint.load(checkpoint.latest(split / "checkpoints"))["step"]
    assert 7 <= stopped <= 12 and (split / "STATUS").read_text().startswith(f"stopped {stopped}")
    lose(split, f"step_{stopped:08d}.pt")
    two_processes(0, args(split))
    same_run_directories(whole, split)
    for run in (whole, split):
        images_count_every_rank(run, 4 * 2)
        # img/s too (StepTimer.read computes it from the images per step it is given: test_perf.py)
        timed = json.loads(open(f"{run}.timed.rank0.json").read())
        assert timed and set(timed) == {4 * 2}


def same_run_directories(whole, split):
    a, b = files(whole), files(split)
    kept = lambda names: {n for n in names if not n.startswith(SET_ASIDE)}  # noqa: E731
    assert kept(a) == kept(b), "files only one of the runs has"
    for name in sorted(kept(a)):
        if name.endswith((".jsonl", "time_to_fid.json")):
            got, want = (rows(b[name]) if name.endswith("l") else json.loads(b[name].read_text()),
                         rows(a[name]) if name.endswith("l") else json.loads(a[name].read_text()))
            if name.endswith("time_to_fid.json"):
                for entries in (got, want):
                    entries["reached"] = {t: {k: v for k, v in r.items() if k not in CLOCKS}
                                          for t, r in entries["reached"].items()}
            assert got == want, name
        elif name in ("checkpoints/best_fid", "checkpoints/latest"):
            continue  # below: the files they name
        else:  # config.toml names its own run directory
            assert b[name].read_bytes().replace(bytes(split), bytes(whole)) == a[name].read_bytes(), name
    same_checkpoint(checkpoint.latest(whole / "checkpoints"), checkpoint.latest(split / "checkpoints"),
                    (whole, split))
    same_checkpoint(whole / "checkpoints" / "best_fid", split / "checkpoints" / "best_fid", (whole, split))
    assert (split / "STATUS").read_text().split(";")[0] == (whole / "STATUS").read_text().split(";")[0]
    assert tensorboard(split) == tensorboard(whole)


def images_count_every_rank(run, global_batch):
    """Every record that counts images counts every rank's, in every launch: the images column of
    metrics.jsonl, time_to_fid.json's entries and the checkpoint hold step x the global batch, and
    plan.json's global batch is it. Under DDP the uninterrupted run would have a count of one rank's
    wrong in the same way, which the comparison of the two run directories cannot see."""
    counted = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counted += json.loads((run / "time_to_fid.json").read_text())["reached"].values()
    counted.append(checkpoint.load(checkpoint.latest(run / "checkpoints")))
    assert all(r["images"] == r["step"] * global_batch for r in counted)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["global_batch"] == global_batch == plan["batch_per_process"] * plan["world"], plan


def test_the_steps_running_sums_resume_per_rank_or_as_totals_on_rank_0():
    """Each rank's part of the log's means and histograms since the last read (summed over the ranks
    when read) comes back to that rank; at another number of ranks, rank 0 carries the totals on."""
    ranks = [{"sums": torch.tensor([1.0, 2.0]), "hist": torch.tensor([3, 4])},
             {"sums": torch.tensor([10.0, 20.0]), "hist": torch.tensor([30, 40])}]
    for rank in range(2):
        assert rank_share(ranks, rank, 2) is ranks[rank]
    for world in (1, 3):
        shares = [rank_share(ranks, rank, world) for rank in range(world)]
        assert torch.equal(shares[0]["sums"], torch.tensor([11.0, 22.0]))
        assert torch.equal(shares[0]["hist"], torch.tensor([33, 44]))
        assert all(not s["sums"].any() and not s["hist"].any() for s in shares[1:])


def test_a_checkpoint_holds_each_ranks_running_sums():
    s = tiny_state()
    s.gan.metrics.sums.fill_(2.0)
    saved = s.gan_state()
    assert set(saved) >= {"ranks", "steps", "scaler"} and "sums" not in saved and len(saved["ranks"]) == 1
    fresh = tiny_state()
    fresh.load_gan_state(saved)
    assert torch.equal(fresh.gan.metrics.sums, s.gan.metrics.sums)
    older = {k: v for k, v in saved.items() if k != "ranks"} | saved["ranks"][0]  # before per-rank sums
    fresh.gan.metrics.sums.zero_()
    fresh.load_gan_state(older)
    assert torch.equal(fresh.gan.metrics.sums, s.gan.metrics.sums)
