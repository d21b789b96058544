"""The parts of bench/gpu_check.py that report the machine and run fastdcgan's commands whole.

env (GPU, driver, torch, CUDA, cuDNN, DALI, compiler; env_summary makes the summary's lines of it),
trainer (the trainer as a user runs it: SIGTERM, exit 75, resume), bench and input (the benchmark
suites at full size) and fid (python -m fastdcgan.fid on the trainer part's run). What they share with
the other parts (Ctx, run_cmd, the results) is in gpu_check_common.py.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sysconfig
from pathlib import Path

from gpu_check_common import (PY, REPO, Ctx, clip, error_line, failed, last_meaningful, ok, read_rows,
                              run_cmd, skipped)


# ----- env -----

def env(ctx: Ctx) -> dict:
    import torch
    d = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
         "cuda_available": torch.cuda.is_available(),
         "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    try:
        d["cpu"] = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                        if x.startswith("model name"))
    except (OSError, StopIteration):
        d["cpu"] = platform.processor() or platform.machine()
    d["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    # what torch.compile (Triton builds a launcher: a C compiler and Python.h) and the suites need
    d["cc"] = shutil.which("cc") or shutil.which("gcc") or "none"
    d["python_h"] = (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
    for name, module in (("torchvision", "torchvision"), ("triton", "triton"), ("dali", "nvidia.dali"),
                         ("pytest_benchmark", "pytest_benchmark"), ("xdist", "xdist")):
        try:
            d[name] = __import__(module, fromlist=["__version__"]).__version__
        except Exception as e:  # DALI is absent on most machines: that is a fact to report, not a failure
            d[name] = f"not importable ({type(e).__name__})"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        d["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        d["driver"] = d["nvidia_smi"].split(",")[1].strip() if smi.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        d["nvidia_smi"], d["driver"] = f"not available ({type(e).__name__})", "unknown"
    if d["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        d.update(gpu=p.name, capability=f"sm_{p.major}{p.minor}", gpus=torch.cuda.device_count(),
                 gpu_free_gib=round(free / 2**30, 1), gpu_total_gib=round(total / 2**30, 1),
                 bf16=torch.cuda.is_bf16_supported())
    try:
        d["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=REPO, timeout=10).stdout.strip() or "not a git checkout"
    except (OSError, subprocess.SubprocessError):
        d["git"] = "no git"
    for k, v in d.items():
        print(f"{k:<14} {v}")
    if d["cuda_available"]:
        return ok(f"{d['gpu']}, torch {d['torch']}, CUDA {d['cuda_build']}, cuDNN {d['cudnn']}", **d)
    return ok(f"no CUDA: torch {d['torch']}, {d['cores']} cores", **d)


def env_summary(d: dict) -> list[str]:
    """The env part's details as the summary's environment lines."""
    lines = [f"python {d.get('python')}, torch {d.get('torch')}, torchvision {d.get('torchvision')}, "
             f"CUDA {d.get('cuda_build')}, cuDNN {d.get('cudnn')}, triton {d.get('triton')}, "
             f"DALI {d.get('dali')}"]
    if d.get("cuda_available"):
        lines.append(f"GPU {d.get('gpu')} ({d.get('capability')}, x{d.get('gpus')}), "
                     f"{d.get('gpu_free_gib')} of {d.get('gpu_total_gib')} GiB free, "
                     f"driver {d.get('driver')}, bf16 {d.get('bf16')}")
    else:
        lines.append(f"no CUDA device (nvidia-smi: {clip(d.get('nvidia_smi'), 80)})")
    lines.append(f"CPU {d.get('cpu')}, {d.get('cores')} cores; checkout {d.get('git')}")
    return lines


# ----- trainer -----

TINY = ["data.image_size=32", "model.nz=16", "model.ngf=8", "model.ndf=8", "train.batch_size=8",
        "train.epochs=1000"]


def trainer(ctx: Ctx) -> dict:
    data = ctx.data_root()
    run = ctx.work / "trainer-run"
    shutil.rmtree(run, ignore_errors=True)
    if ctx.cuda:
        # epochs: the preset's 25 would end a run over a 2,000-image folder (15 steps each) at step 375
        # 300 steps: over 2,000 faces an epoch is 15 steps, and each epoch end writes a checkpoint,
        # plots and a grid (timed apart from img/s, but they take the part's time)
        steps, every, extra = 300, 50, ["train.epochs=1000", "sample.every=100", "ckpt.every=300"]
    else:  # the tiny model; enough steps after the first log row that the SIGTERM lands mid-run
        steps, every, extra = 60, 5, [*TINY, "sample.every=30", "ckpt.every=30"]
    cmd = [PY, "-m", "fastdcgan.train", "--config", "configs/celeba64-fast.toml", f"data.root={data}",
           f"train.run_dir={run}", f"train.max_steps={steps}", f"log.every={every}", *extra]
    env = dict(os.environ, TORCH_LOGS="recompiles")
    sent = []

    def stop_after_first_row(proc, lines):
        # The first log row comes after the compile/capture warm-up (up to 10 steps; log.every is more)
        if not sent and read_rows(run / "metrics.jsonl"):
            proc.send_signal(signal.SIGTERM)
            sent.append(True)
            print("[gpu_check: SIGTERM sent]", flush=True)

    timeout = ctx.left() - 2
    rc, first = run_cmd(cmd, timeout, env=env, watch=stop_after_first_row)
    status = (run / "STATUS").read_text().strip() if (run / "STATUS").exists() else "no STATUS"
    if rc is None:
        return failed(f"first run: timeout after {timeout:.0f} s: {last_meaningful(first)}")
    if rc == 0:
        return failed(f"the run finished before the SIGTERM took effect (STATUS {status!r})")
    if rc != 75:
        return failed(f"trainer exit {rc}: {error_line(first)}")
    if not status.startswith("stopped"):
        return failed(f"exit 75 after SIGTERM, but STATUS {status!r}")
    timeout = ctx.left() - 2
    rc, second = run_cmd(cmd, timeout, env=env)
    status = (run / "STATUS").read_text().strip() if (run / "STATUS").exists() else "no STATUS"
    samples = sorted(p.name for p in (run / "samples").glob("*.png")) if (run / "samples").is_dir() else []
    grids = sorted((run / "samples").glob("step_*.png")) if (run / "samples").is_dir() else []
    if grids:  # the last fixed-noise grid comes back with the summary: do the samples look like faces?
        shutil.copyfile(grids[-1], ctx.out / "trainer-samples.png")
    rows = [r for r in read_rows(run / "metrics.jsonl") if "img_per_s" in r]
    text = "\n".join(first + second)
    warmups = [float(x) for x in re.findall(r"compile/capture warm-up: ([\d.]+) s", text)]
    recompiles = sum("Recompiling function" in line for line in first + second)
    speeds = [r["img_per_s"] for r in rows[1:]]
    median = statistics.median(speeds) if speeds else float("nan")
    mfu = [r["mfu"] for r in rows[1:] if "mfu" in r]
    figure = (f"{median:,.0f} img/s" + (f", MFU {statistics.median(mfu):.1%}" if mfu else "")
              + (f", warm-up {' / '.join(f'{w:.1f}' for w in warmups)} s" if warmups else ""))
    details = {"steps": steps, "batch": 128 if ctx.cuda else 8, "data": data, "warmup_s": warmups,
               "recompile_lines": recompiles, "status": status, "samples": samples[-5:], "rows": [
                   {k: r[k] for k in ("step", "img_per_s", "data_ms", "compute_ms", "mfu", "loss_d", "loss_g",
                                      "setup_s", "warmup_s") if k in r} for r in rows]}
    setup = ("input: ", "device ", "compile/capture", "note:", "warning:")  # what the resumed run said it did
    details["setup"] = [x for x in second if x.startswith(setup)]
    if rc != 0:
        why = f"timeout after {timeout:.0f} s" if rc is None else f"exit {rc}: {error_line(second)}"
        return failed(f"resumed run: {why}", figure, **details)
    errors = [e for e, bad in ((f"STATUS {status!r}, expected 'finished {steps}'",
                                status != f"finished {steps}"),
                               ("no generator.pth", not (run / "generator.pth").exists()),
                               ("no samples", not samples), ("no log rows", not rows)) if bad]
    return failed("; ".join(errors), figure, **details) if errors else ok(figure, **details)


# ----- bench, input -----

def bench_rows(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return []


BENCH_MIN_IMAGES = 8192  # the full-size suite's own synthetic set: 64 steps an epoch at batch 128


def bench_data_args(ctx: Ctx) -> list[str]:
    """--bench-data only for a folder at least as big as the suite's own full-size set: over 2,000
    images an epoch is 15 steps, and a DataLoader refilling its workers every 15 steps would make the
    baseline look slower than on CelebA (and the speed-up larger)."""
    if not ctx.data:
        return []
    from fastdcgan.data import folder
    n = len(folder.find_images(Path(ctx.data)).files)
    return ["--bench-data", ctx.data] if n >= BENCH_MIN_IMAGES else []


def run_bench(ctx: Ctx, files: list[str], out: Path) -> tuple[int | None, list[str], list[dict]]:
    out.unlink(missing_ok=True)
    rc, lines = run_cmd([PY, "-m", "pytest", *files, "--benchmark-only", "-q", "-p", "no:cacheprovider",
                         "--bench-size=full", *bench_data_args(ctx), "--bench-out", out], ctx.left() - 2)
    return rc, lines, bench_rows(out)


def versus_baseline(rows: list[dict], row: dict) -> str:
    base = next((r for r in rows if r["suite"] == row["suite"] and r["baseline"]), None)
    return (f" = {row['img_per_s'] / base['img_per_s']:.2f}x {base['variant']}"
            if base and base is not row else "")


def bench(ctx: Ctx) -> dict:
    rc, lines, rows = run_bench(ctx, ["bench/test_step.py", "bench/test_train.py"], ctx.work / "bench.json")
    fast = next((r for r in rows if r["suite"] == "e2e" and r["variant"] == "fast preset"), None)
    steps = [r for r in rows if r["suite"] == "step"]
    best = fast or (max(steps, key=lambda r: r["img_per_s"]) if steps else None)
    figure = (f"{best['suite']} {best['variant']}: "
              f"{best['img_per_s']:,.0f} img/s{versus_baseline(rows, best)}" if best else "")
    if rc != 0:
        why = f"timeout: {last_meaningful(lines)}" if rc is None else error_line(lines)
        return failed(why, figure, rows=rows)
    return ok(figure, rows=rows)


def input_backends(ctx: Ctx) -> dict:
    rc, lines, rows = run_bench(ctx, ["bench/test_input.py"], ctx.work / "input.json")
    feeds = [r for r in rows if "build" not in r["variant"]]
    best = max(feeds, key=lambda r: r["img_per_s"]) if feeds else None
    figure = f"{best['variant']}: {best['img_per_s']:,.0f} img/s{versus_baseline(rows, best)}" if best else ""
    if rc != 0:
        why = f"timeout: {last_meaningful(lines)}" if rc is None else error_line(lines)
        return failed(why, figure, rows=rows)
    return ok(figure, rows=rows)


# ----- fid -----

def fid(ctx: Ctx) -> dict:
    run = ctx.work / "trainer-run"
    if not (run / "generator.pth").exists():
        return skipped("no trained run to score (the trainer part did not finish in this run)")
    data = ctx.data_root()
    n = 2000 if ctx.cuda else 32
    cmd = [PY, "-m", "fastdcgan.fid", "--checkpoint", run, "--n", n, "--weights", ctx.fid_weights,
           "--data", data]
    if not ctx.cuda:  # the path, not the number: Inception on 2 cores takes ~0.1 s an image
        from fastdcgan.data import folder
        cmd += ["--batch", "32"] + (["--split", "test"] if folder.find_images(data).layout == "celeba"
                                    else [])
    rc, lines = run_cmd(cmd, ctx.left() - 2)
    if rc is None:
        return failed(f"timeout: {last_meaningful(lines)}")
    if rc != 0:
        return failed(f"exit {rc}: {error_line(lines)}")
    try:
        value = float(lines[-1])
    except (IndexError, ValueError):
        return failed(f"no FID on the last line: {last_meaningful(lines)}")
    network = next((x.split("network", 1)[1].strip() for x in lines if "; network " in x), "")
    return ok(f"FID {value:.2f} (n={n})", fid=value, n=n, weights=ctx.fid_weights, network=network)
