"""Shared by every benchmark suite: sizes, the image folder, result rows and the closing table.

    pytest bench/ --benchmark-only                             # small: a few minutes on a 2-core CPU
    pytest bench/ --benchmark-only --bench-size=full           # CelebA-size: 178x218 JPEGs, batch 128, 64x64
    pytest bench/ --benchmark-only --bench-data /data/celeba   # your images instead of synthetic faces
    pytest bench/ --benchmark-only --bench-out results.json    # the rows as JSON too

A suite measures with pytest-benchmark's `benchmark` fixture (so --benchmark-only selects it) and
records one row per variant with `bench_record`: images/s and per-batch p50/p95 latency, beside the
suite's baseline measured in the same run. Warm-up (workers starting, pipelines building,
compilation) happens before the timed region. Benchmarks report; they never assert a speed. What
runs is said at the start; each suite file's rows print as soon as it finishes, and at the end one
table of them all is printed with the machine, the versions and the command line.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
import torch

# What --bench-size means: images made when no --bench-data is given, batch size, training size.
SIZES = {"small": dict(images=1024, batch=64, image_size=64, rounds=3, width=32, steps=8),
         "full": dict(images=8192, batch=128, image_size=64, rounds=3, width=64, steps=50)}


def pytest_configure(config):
    # pytest-benchmark's own table times what each bench hands its fixture (a whole epoch, or nothing
    # for a one-off cost such as the cache build), not the rows of ours: one table, ours, is printed.
    # --benchmark-verbose still shows it.
    config.option.benchmark_quiet = True


def pytest_addoption(parser):
    g = parser.getgroup("fastdcgan benchmarks")
    g.addoption("--bench-size", choices=sorted(SIZES), default="small",
                help="small (default): a few minutes on a 2-core CPU; "
                     "full: CelebA-size JPEGs, batch 128, 64x64")
    g.addoption("--bench-data", default=None, metavar="PATH",
                help="image folder or CelebA download to read (default: synthetic 178x218 faces made once)")
    g.addoption("--bench-out", default=None, metavar="FILE",
                help="also write the result rows and machine as JSON")


@dataclass
class Row:
    suite: str
    variant: str
    img_per_s: float
    p50_ms: float
    p95_ms: float
    max_ms: float = 0.0
    baseline: bool = False
    extra: dict = field(default_factory=dict)


ROWS: list[Row] = []


@dataclass
class BenchData:
    root: Path
    files: list[Path]
    batch: int
    image_size: int
    rounds: int
    size: str
    width: int   # ngf = ndf of the models the step and end-to-end suites train
    steps: int   # timed steps per round in the step suite


@pytest.fixture(scope="session")
def bench_data(request, tmp_path_factory) -> BenchData:
    """The image folder every suite reads: --bench-data, or synthetic CelebA-size faces made once."""
    from fastdcgan.data import folder, synthetic

    size = request.config.getoption("--bench-size")
    s = SIZES[size]
    root = request.config.getoption("--bench-data")
    if root is None:
        root = synthetic.make_faces(tmp_path_factory.mktemp("bench-faces"), n=s["images"])
    images = folder.scan(root)
    return BenchData(Path(root), images.files, s["batch"], s["image_size"], s["rounds"], size, s["width"],
                     s["steps"])


def timed_calls(fn, n: int, device: torch.device) -> list[float]:
    """Seconds of each of n calls of fn: CUDA events around each on a GPU (read after the last),
    the host clock on CPU, where the work is done when fn returns."""
    import time
    if device.type != "cuda":
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [a.elapsed_time(b) / 1000 for a, b in events]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@pytest.fixture
def bench_record():
    """record(suite, variant, batch_seconds, batch_size, baseline=False, **extra) -> Row."""

    def record(suite: str, variant: str, batch_seconds: list[float], batch_size: int, baseline: bool = False,
               **extra) -> Row:
        row = Row(suite, variant, batch_size * len(batch_seconds) / sum(batch_seconds),
                  1000 * statistics.median(batch_seconds), 1000 * percentile(batch_seconds, 0.95),
                  1000 * max(batch_seconds), baseline, extra)
        ROWS.append(row)
        return row

    return record


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": _cpu_model(), "cores": cores, "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else "none (no GPU)", "gpu": "none"}
    try:
        import nvidia.dali
        info["dali"] = nvidia.dali.__version__
    except Exception:
        info["dali"] = "not importable"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "unknown"
    prog = Path(sys.argv[0]).name
    info["command"] = " ".join(["python -m pytest" if prog in ("__main__.py", "pytest") else prog,
                                *sys.argv[1:]])
    return info


def check_ran(row: Row, claimed: dict, ran: dict) -> None:
    """Put the configuration that actually ran in the row's notes, print it, and fail when it is not
    the one the row's name claims: a row measured on another backend or mode misleads its reader."""
    row.extra.update(ran)
    print(f"{row.suite} | {row.variant} | ran: " + ", ".join(f"{k}={v}" for k, v in ran.items()))
    wrong = {k: f"claimed {v}, ran {ran.get(k)}" for k, v in claimed.items() if ran.get(k) != v}
    assert not wrong, f"{row.suite} row {row.variant!r} did not run what its name says: {wrong}"


@pytest.fixture
def bench_record_once():
    """record_once(suite, variant, seconds, **extra) -> Row: a one-off cost (a cache build, a compile
    warm-up), shown as its seconds beside the rates so that a fast row never hides its set-up."""

    def record_once(suite: str, variant: str, seconds: float, **extra) -> Row:
        row = Row(suite, variant, 0.0, 1000 * seconds, 1000 * seconds, 1000 * seconds, extra=extra)
        ROWS.append(row)
        return row

    return record_once


def _reporter(config):
    return config.pluginmanager.get_plugin("terminalreporter")


def pytest_collection_finish(session):
    """Say what will run before it does: the suites, how many benchmarks each, and how to run one."""
    tr = _reporter(session.config)
    if tr is None or not session.items:
        return
    per_file: dict[str, int] = {}
    for item in session.items:
        per_file[item.location[0]] = per_file.get(item.location[0], 0) + 1
    size = session.config.getoption("--bench-size")
    tr.write_line(f"fastdcgan benchmarks, --bench-size {size}: "
                  + ", ".join(f"{f} ({n})" for f, n in per_file.items())
                  + "; each file's rows print when it finishes. One file alone: pytest bench/test_step.py "
                  "--benchmark-only")


_printed = 0  # ROWS[:_printed] are on the screen already


def pytest_runtest_teardown(item, nextitem):
    """At the end of each suite file, its rows (the closing table repeats them with the machine)."""
    global _printed
    if nextitem is not None and nextitem.location[0] == item.location[0] or _printed == len(ROWS):
        return
    tr = _reporter(item.config)
    if tr is not None:
        tr.write_line("")
        for line in _table(ROWS[_printed:]):
            tr.write_line(line)
    _printed = len(ROWS)


def _table(rows: list[Row]) -> list[str]:
    base = {r.suite: r.img_per_s for r in rows if r.baseline}
    head = (f"{'suite':<8} {'variant':<34} {'img/s':>10} {'vs base':>8} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'max ms':>8}  notes")
    lines = [head, "-" * len(head)]
    for r in rows:
        rel = f"{r.img_per_s / base[r.suite]:.2f}x" if r.suite in base and r.img_per_s else ""
        rate = f"{r.img_per_s:>10,.0f}" if r.img_per_s else f"{'-':>10}"  # a one-off cost: its time only
        notes = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        lines.append(f"{r.suite:<8} {r.variant:<34} {rate} {rel:>8} {r.p50_ms:>8.2f} "
                     f"{r.p95_ms:>8.2f} {r.max_ms:>8.2f}  {notes}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not ROWS:
        return
    m = machine()
    tr = terminalreporter
    tr.section("fastdcgan benchmark results")
    for key, value in m.items():
        tr.write_line(f"{key:<8} {value}")
    tr.write_line("")
    for line in _table(ROWS):
        tr.write_line(line)
    out = config.getoption("--bench-out")
    if out:
        Path(out).write_text(json.dumps({"machine": m, "rows": [asdict(r) for r in ROWS]}, indent=1))
        tr.write_line(f"rows written to {out}")
