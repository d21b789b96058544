"""End to end: whole training iterations with input, over the same images and model size.

- plain: the trainer's own loop (fastdcgan.train.main) on the baseline path: torch DataLoader with 2
  workers, fp32, eager, NCHW.
- fast: the same loop with configs/celeba64-fast.toml (input backend auto: the cache where it fits;
  channels_last, compile, and on a GPU bf16 and CUDA graphs).
- reference: what users run today, re-created from the description of pytorch/examples
  dcgan/main.py: ImageFolder + ToTensor + Normalize, 2 workers, D ending in Sigmoid with BCELoss,
  and five `.item()` reads plus a print every iteration.

The trainer's rows come from its metrics.jsonl: each log window (window() steps: at least 200 on
CUDA, where a step takes about a millisecond) is one latency sample (mean step time in the window);
the first window (workers starting, compilation) is dropped. The fast preset's one-off costs are
rows of their own, so its rate never hides them: its set-up (data scan and a cache build from
scratch: the run gets an empty cache folder) and its compile/capture warm-up, both as the trainer
logged them. celeba_epoch is 202,599 images / img/s; first_epoch adds the one-off costs to it.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from conftest import check_ran, timed_calls
from fastdcgan.model import build_models
from fastdcgan.train import main

CELEBA = 202_599
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
WINDOWS = 3 if CUDA else 5


def window(bench_data) -> int:
    if CUDA:
        return 200
    return 5 if bench_data.size == "small" else 20


def run_trainer(tmp_path, bench_data, extra: list[str], capsys) -> tuple[list[float], dict, dict]:
    """Seconds per step for each log window after the first, the one-off costs the trainer
    logged (setup_s, warmup_s), and what ran, from a real trainer run with a cache folder of its own."""
    steps = window(bench_data)
    run = tmp_path / "run"
    args = [f"data.root={bench_data.root}", f"data.image_size={bench_data.image_size}",
            f"model.ngf={bench_data.width}", f"model.ndf={bench_data.width}",
            f"train.batch_size={bench_data.batch}",
            f"train.run_dir={run}", "train.epochs=1000", f"train.max_steps={steps * (WINDOWS + 1)}",
            f"log.every={steps}", "sample.every=100000", "ckpt.every=100000", *extra]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTDCGAN_CACHE", str(tmp_path / "cache"))  # a cache build, if any, is part of the run
        assert main(args) == 0
    printed = capsys.readouterr().out
    sys.stdout.write(printed)  # still shown with -s
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    once = {k: v for r in rows for k, v in r.items() if k in ("setup_s", "warmup_s")}
    return ([bench_data.batch / r["img_per_s"] for r in rows[1:] if "img_per_s" in r], once,
            what_ran(printed, run))


def what_ran(printed: str, run) -> dict:
    """The configuration the trainer ran, as it built it (RUN_DIR/plan.json), and the worker and
    thread counts it was given (config.toml)."""
    from fastdcgan.config import tomllib  # tomli before Python 3.11
    assert (run / "plan.json").exists(), f"the trainer wrote no plan.json:\n{printed}"
    plan = json.loads((run / "plan.json").read_text())
    data = tomllib.loads((run / "config.toml").read_text())["data"]
    return {"backend": plan["backend"], "precision": plan["precision"], "compile": plan["compile"],
            "channels_last": plan["memory_format"] == "channels_last", "graphs": plan["cuda_graphs"],
            "workers": data["workers"], "threads": data["dali_threads"]}


def in_unit_of(s: float, epoch: float) -> str:
    """s in the unit an epoch of `epoch` seconds is given in: seconds below 120, else minutes."""
    return f"{s:.1f} s" if epoch < 120 else f"{s / 60:.1f} min"


def record(bench_record, name, seconds, bench_data, baseline=False, once: dict | None = None):
    row = bench_record("e2e", name, seconds, bench_data.batch, baseline=baseline, ngf=bench_data.width)
    epoch = CELEBA / row.img_per_s
    row.extra["celeba_epoch"] = in_unit_of(epoch, epoch)
    if once:  # in the unit of celeba_epoch, beside it
        row.extra["first_epoch"] = in_unit_of(epoch + sum(once.values()), epoch)
    return row


def test_plain_trainer(benchmark, bench_data, bench_record, tmp_path, capsys):
    plain = ["data.backend=torch", "data.workers=2", "precision=fp32", "compile=off", "channels_last=false",
             "cuda_graphs=false"]
    out: list = []
    benchmark.pedantic(lambda: out.extend(run_trainer(tmp_path, bench_data, plain, capsys)), rounds=1,
                       iterations=1)
    row = record(bench_record, "plain trainer (baseline)", out[0], bench_data, baseline=True)
    check_ran(row, dict(backend="torch", workers=2, precision="fp32", compile="off", channels_last=False,
                        graphs=False), out[2])


def fast_preset_claims(bench_data) -> dict:
    """What "fast preset" means on this machine: the cache when the decoded images fit its memory
    budget (README), every switch on a GPU; on CPU fp32 with compile and graphs off (configs/)."""
    from fastdcgan.data.loaders import choose
    backend = choose("auto", len(bench_data.files), bench_data.image_size, DEVICE)[0]
    bf16 = CUDA and torch.cuda.is_bf16_supported()
    return dict(backend=backend, precision="bf16" if bf16 else "fp32", compile="default" if CUDA else "off",
                channels_last=True, graphs=CUDA)


def test_fast_trainer(benchmark, bench_data, bench_record, bench_record_once, tmp_path, capsys):
    fast = ["--config", "configs/celeba64-fast.toml", "data.backend=auto"]
    out: list = []
    benchmark.pedantic(lambda: out.extend(run_trainer(tmp_path, bench_data, fast, capsys)), rounds=1,
                       iterations=1)
    seconds, once, ran = out
    bench_record_once("e2e", "fast preset: set-up (scan, cache)", once.get("setup_s", 0.0),
                      images=len(bench_data.files))
    if "warmup_s" in once:
        bench_record_once("e2e", "fast preset: compile/capture", once["warmup_s"])
    row = record(bench_record, "fast preset", seconds, bench_data, once=once)
    check_ran(row, fast_preset_claims(bench_data), ran)


def test_reference_loop(benchmark, bench_data, bench_record):
    """pytorch/examples dcgan/main.py's loop, as users run it today."""
    from torchvision import datasets, transforms
    size = bench_data.image_size
    try:
        dataset = datasets.ImageFolder(str(bench_data.root), transform=transforms.Compose([
            transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    except (FileNotFoundError, RuntimeError) as e:
        pytest.skip(f"ImageFolder cannot read {bench_data.root}: {e}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=bench_data.batch, shuffle=True, num_workers=2,
                                         drop_last=True)
    torch.manual_seed(0)
    netG, D = build_models(100, bench_data.width, bench_data.width, size)
    netD = nn.Sequential(*D.main, nn.Sigmoid())  # the reference's D ends in a Sigmoid
    netG.to(DEVICE)
    netD.to(DEVICE)
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batches = iter(())

    def iteration():
        nonlocal batches
        try:
            data = next(batches)
        except StopIteration:
            batches = iter(loader)
            data = next(batches)
        netD.zero_grad()
        real = data[0].to(DEVICE)
        label = torch.full((real.size(0),), 1.0, device=DEVICE)
        output = netD(real).view(-1)
        err_real = criterion(output, label)
        err_real.backward()
        d_x = output.mean().item()
        fake = netG(torch.randn(real.size(0), 100, 1, 1, device=DEVICE))
        label.fill_(0.0)
        output = netD(fake.detach()).view(-1)
        err_fake = criterion(output, label)
        err_fake.backward()
        d_g_z1 = output.mean().item()
        optD.step()
        netG.zero_grad()
        label.fill_(1.0)
        output = netD(fake).view(-1)
        err_g = criterion(output, label)
        err_g.backward()
        d_g_z2 = output.mean().item()
        optG.step()
        print(f"Loss_D: {(err_real + err_fake).item():.4f} Loss_G: {err_g.item():.4f} D(x): {d_x:.4f} "
              f"D(G(z)): {d_g_z1:.4f} / {d_g_z2:.4f}")

    steps = window(bench_data) * WINDOWS
    for _ in range(window(bench_data)):  # warm-up: workers start, allocator, cudnn
        iteration()
    seconds: list[float] = []
    benchmark.pedantic(lambda: seconds.extend(timed_calls(iteration, steps, DEVICE)), rounds=1, iterations=1)
    record(bench_record, "pytorch/examples loop", seconds, bench_data)
