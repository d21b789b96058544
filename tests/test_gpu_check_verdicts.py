"""bench/gpu_check.py's verdicts and what its parts report, each against what it checks: a run with a part
not finished never passes, a part stopped at its own limit fails, a failed check of the trainer part fails
it, a figure counts what it says, the summary's lines say what the env part found, and the arguments
that name files are checked and resolved where the user gave them.

The parts' commands (the trainer's launches, a benchmark suite, pytest) are stood in for, as in
test_gpu_check_trainer_figure.py, by what they leave behind (run-directory files, a rows file, output
lines): each part's own reading of them is what is tested. The runner's own limit is run for real.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402
import gpu_check_common as common  # noqa: E402
import gpu_check_runs as runs  # noqa: E402
import gpu_check_steps as steps  # noqa: E402


# ----- the verdict -----

def rec(name: str, status: str) -> dict:
    return {"name": name, "status": status, "figure": "", "seconds": 1.0, "details": {}}


@pytest.mark.parametrize("statuses, code", [
    (["ok", "ok"], 0),
    (["ok", "failed: boom"], 1),
    (["ok", "not run (budget)"], 3),
    (["ok", "not finished (budget): timeout after 40 s"], 3),
    (["ok", "not run (interrupted)"], 3),
    (["skipped: no CUDA", "skipped: no CUDA"], 3),
    (["ok", "skipped: no CUDA"], 0),
    (["ok", "not finished (interrupted)", "not run (interrupted)"], 3),
    (["failed: boom", "not finished (interrupted)"], 1),
])
def test_only_a_run_whose_every_part_checked_passed_or_was_skipped_passes(statuses, code):
    records = [rec(f"p{i}", s) for i, s in enumerate(statuses)]
    got, words = gpu_check.verdict(records)
    assert got == code, words
    assert words.startswith({0: "passed", 1: "FAILED", 3: "INCOMPLETE"}[code])


@pytest.mark.parametrize("when", ["between parts", "during a part"])
def test_an_interrupt_leaves_the_check_incomplete_naming_what_it_stopped(when, tmp_path, monkeypatch, capsys):
    """SIGTERM (a lease's end, a Ctrl-C) after env's record, before the trainer part starts, or while the
    trainer part runs: exit 3 and a summary saying so, the part it stopped `not finished (interrupted)`,
    the parts it kept from starting `not run (interrupted)`; never a failure of code that did not fail."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    timers = []

    def signal_in(seconds: float):
        timers.append(threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM)))
        timers[-1].start()

    if when == "between parts":  # the signal as env's logs are packed
        pack, signalled = gpu_check.pack_logs, []

        def pack_logs(out, work):
            if not signalled:
                signalled.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
            pack(out, work)
        monkeypatch.setattr(gpu_check, "pack_logs", pack_logs)
    else:  # 3 s into the trainer part, which takes longer
        start = gpu_check.run_part
        monkeypatch.setattr(gpu_check, "run_part", lambda part, *a: (
            part.name == "trainer" and signal_in(3), start(part, *a))[1])
    old = signal.getsignal(signal.SIGTERM)  # run_all turns SIGTERM into KeyboardInterrupt
    try:
        code = gpu_check.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                               "--budget-s", "200", "--only", "env", "trainer", "fid"])
    finally:
        for t in timers:  # a signal not yet sent (the part ended first) is never sent
            t.cancel()
            t.join()
        signal.signal(signal.SIGTERM, old)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    statuses = {p["name"]: p["status"] for p in results["parts"]}
    stopped = "not run" if when == "between parts" else "not finished"
    assert statuses == {"env": "ok", "trainer": f"{stopped} (interrupted)", "fid": "not run (interrupted)"}, \
        capsys.readouterr().out[-2000:]
    assert code == 3 and results["verdict"].startswith("INCOMPLETE (interrupted)"), results["verdict"]
    assert "INCOMPLETE (interrupted)" in (tmp_path / "out" / "summary.md").read_text()


def test_a_part_stopped_at_its_own_limit_fails_the_run(tmp_path, monkeypatch, capsys):
    """Its own limit, not the budget's end: combos given 6 s of its own (and a budget of 100) has no time
    for a combo; that is the part's failure (exit 1), not a budget left unspent (exit 3)."""
    part = next(p for p in gpu_check.PARTS if p.name == "combos")
    monkeypatch.setattr(gpu_check, "PARTS", [gpu_check.Part("combos", part.run, 6, False, part.what)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    old = signal.getsignal(signal.SIGTERM)  # run_all turns SIGTERM into KeyboardInterrupt
    try:
        code = gpu_check.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                               "--budget-s", "100"])
    finally:
        signal.signal(signal.SIGTERM, old)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    status = results["parts"][0]["status"]
    assert code == 1 and status.startswith("failed:"), (status, capsys.readouterr().out[-2000:])


# ----- the trainer part -----

def trainer_part(tmp_path, monkeypatch, first=None, second=None):
    """runs.trainer with its two launches stood in for: each writes its log rows, a grid and STATUS and
    returns its exit code, unless `first` / `second` changes what it leaves (a dict of
    {rc, status, weights, samples, rows})."""
    ctx = common.Ctx(tmp_path / "out", tmp_path / "work", str(tmp_path / "faces"), "", False,
                     time.monotonic() + 300)
    ctx.out.mkdir()
    run = ctx.work / "trainer-run"
    launches = []
    plans = [dict(rc=75, status="stopped 10", steps=[5, 10]) | (first or {}),
             dict(rc=0, status="finished 60", steps=[15, 60], weights=True) | (second or {})]

    def launch(cmd, timeout, log=None, env=None, watch=None):
        plan = plans[len(launches)]
        launches.append(cmd)
        run.mkdir(parents=True, exist_ok=True)
        if plan.get("rows", True):
            with open(run / "metrics.jsonl", "a") as f:
                for step in plan["steps"]:
                    f.write(json.dumps({"step": step, "img_per_s": 100.0 + step}) + "\n")
        if plan.get("samples", True):
            (run / "samples").mkdir(exist_ok=True)
            last = plan["steps"][-1]
            (run / "samples" / f"step_{last:08d}.png").write_bytes(f"grid {last}".encode())
        if plan.get("weights"):
            (run / "generator.pth").write_bytes(b"weights")
        (run / "STATUS").write_text(plan["status"] + "\n")
        return plan["rc"], [f"launch {len(launches)}"]
    monkeypatch.setattr(runs, "run_cmd", launch)
    return runs.trainer(ctx), ctx, len(launches)


def test_the_trainer_part_passes_a_stopped_then_finished_run_and_brings_its_last_grid(tmp_path, monkeypatch):
    result, ctx, n = trainer_part(tmp_path, monkeypatch)
    assert n == 2 and result["status"] == "ok", result
    assert (ctx.out / "trainer-samples.png").read_bytes() == b"grid 60"  # the last grid, not the first


@pytest.mark.parametrize("first, second, said", [
    (dict(rc=0, status="finished 60"), None, "finished before the SIGTERM"),
    (dict(rc=2, status="failed"), None, "trainer exit 2"),
    (dict(status="finished 10"), None, "STATUS 'finished 10'"),
    (dict(status="running"), None, "STATUS 'running'"),
    (None, dict(rc=1, status="failed"), "resumed run: exit 1"),
    (None, dict(status="finished 59"), "expected 'finished 60'"),
    (None, dict(status="stopped 30"), "expected 'finished 60'"),
    (None, dict(weights=False), "no generator.pth"),
], ids=["first-exit-0", "first-exit-2", "75-but-finished", "75-but-running", "second-exit-1",
        "finished-elsewhere", "second-stopped", "no-weights"])
def test_each_check_of_the_trainer_part_fails_it(tmp_path, monkeypatch, first, second, said):
    result, _, _ = trainer_part(tmp_path, monkeypatch, first, second)
    assert result["status"].startswith("failed") and said in result["status"], result["status"]


def test_the_trainer_part_without_samples_or_rows_fails(tmp_path, monkeypatch):
    result, _, _ = trainer_part(tmp_path, monkeypatch, dict(samples=False, rows=False),
                                dict(samples=False, rows=False))
    assert result["status"].startswith("failed") and "no samples" in result["status"] \
        and "no log rows" in result["status"], result["status"]


# ----- the benchmark parts' figures -----

def bench_part(tmp_path, monkeypatch, fn, rows, rc=0):
    """A benchmark part whose suite run (pytest ... --bench-out FILE) is stood in for by its rows file."""
    def suite(cmd, timeout, log=None, env=None, watch=None):
        out = Path(str(cmd[cmd.index("--bench-out") + 1]))
        out.write_text(json.dumps({"machine": {}, "rows": rows}))
        return rc, ["1 passed in 1.0s"]
    monkeypatch.setattr(runs, "run_cmd", suite)
    ctx = common.Ctx(tmp_path, tmp_path, "", "", True, time.monotonic() + 300)
    return fn(ctx)


def row(suite, variant, img_per_s, baseline=False):
    return {"suite": suite, "variant": variant, "img_per_s": img_per_s, "baseline": baseline}


def test_the_bench_parts_figure_is_the_fast_presets_rate_against_the_plain_trainer(tmp_path, monkeypatch):
    rows = [row("step", "eager fp32 NCHW", 1000.0, True), row("step", "all: compile + graphs + bf16", 9000.0),
            row("e2e", "plain trainer (baseline)", 500.0, True),
            row("e2e", "fast preset: set-up (scan, cache)", 0.0),
            row("e2e", "fast preset: compile/capture", 0.0),
            row("e2e", "fast preset", 2000.0)]
    r = bench_part(tmp_path, monkeypatch, runs.bench, rows)
    assert r["status"] == "ok"
    assert r["figure"] == "e2e fast preset: 2,000 img/s = 4.00x plain trainer (baseline)"
    r = bench_part(tmp_path, monkeypatch, runs.bench, rows[:2])  # no e2e rows: the fastest step row
    assert r["figure"] == "step all: compile + graphs + bf16: 9,000 img/s = 9.00x eager fp32 NCHW"


def test_the_input_parts_figure_is_the_fastest_feed_never_a_cache_build(tmp_path, monkeypatch):
    rows = [row("input", "torch 1 workers", 300.0), row("input", "torch 8 workers", 1000.0, True),
            row("input", "cache build (once)", 50_000.0), row("input", "cache build by pil", 40_000.0),
            row("input", "cache cpu", 5000.0)]
    r = bench_part(tmp_path, monkeypatch, runs.input_backends, rows)
    assert r["status"] == "ok" and r["figure"] == "cache cpu: 5,000 img/s = 5.00x torch 8 workers"


def test_the_suite_reads_a_folder_of_exactly_the_full_size_count(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "BENCH_MIN_IMAGES", 3)  # the bound, small enough to write its images
    for n, used in ((2, False), (3, True), (4, True)):
        data = tmp_path / f"n{n}"
        data.mkdir()
        for i in range(n):
            (data / f"{i}.jpg").write_bytes(b"")  # counted, not decoded
        ctx = common.Ctx(tmp_path, tmp_path, str(data), "", True, time.monotonic() + 300)
        assert runs.bench_data_args(ctx) == (["--bench-data", str(data)] if used else []), n


def test_the_summary_says_the_gpus_free_memory_of_its_total():
    lines = runs.env_summary({"cuda_available": True, "gpu": "H100", "capability": "sm_90", "gpus": 1,
                              "gpu_free_gib": 70.5, "gpu_total_gib": 79.1, "driver": "550", "bf16": True})
    assert "70.5 of 79.1 GiB free" in lines[1], lines


# ----- what the parts count -----

@pytest.mark.parametrize("line, counts", [
    ("3 passed, 1 failed, 2 errors in 4.20s", {"passed": 3, "failed": 1, "error": 2}),
    ("1 error in 0.5s", {"error": 1}),
    ("2 failed, 5 passed, 1 skipped, 40 deselected, 3 warnings in 12.3s",
     {"failed": 2, "passed": 5, "skipped": 1, "deselected": 40, "warning": 3}),
])
def test_pytest_counts_are_read_in_the_singular_whatever_the_number(line, counts):
    assert common.pytest_counts(["something", line]) == counts


def test_the_cuda_tests_figure_counts_errors_as_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "run_cmd", lambda *a, **k: (1, ["ERROR tests/test_x.py::t - boom",
                                                               "3 passed, 1 failed, 2 errors in 4.2s"]))
    ctx = common.Ctx(tmp_path, tmp_path, "", "", True, time.monotonic() + 300)
    r = steps.cuda_tests(ctx)
    assert r["status"].startswith("failed") and r["figure"].startswith("3 passed, 3 failed"), r


def test_a_commands_last_words_are_its_own_not_gpu_checks(tmp_path):
    rc, lines = common.run_cmd([sys.executable, "-c", "import time; print('step 40 of 60', flush=True); "
                                "time.sleep(30)"], 2, log=tmp_path / "log")
    assert rc is None
    logged = (tmp_path / "log").read_text().splitlines()
    assert logged[-1].startswith("[gpu_check: killed after")  # the part's log, as run_part reads it
    assert common.last_meaningful(logged) == "step 40 of 60"


# ----- the arguments -----

def test_a_folder_given_as_fid_weights_is_refused_at_once(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(["--fid-weights", str(tmp_path), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "is not a file" in capsys.readouterr().err


def test_paths_are_resolved_where_they_were_given(tmp_path, monkeypatch):
    """The parts run from the repository root: a relative --data (or --out, --work, --fid-weights) must
    name what it named in the user's folder."""
    (tmp_path / "faces").mkdir()
    (tmp_path / "net.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    args = gpu_check.parse_args(["--data", "faces", "--fid-weights", "net.pth", "--out", "o", "--work", "w"])
    assert (args.data, args.fid_weights, args.out, args.work) == tuple(
        str(tmp_path / x) for x in ("faces", "net.pth", "o", "w"))
