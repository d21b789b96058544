"""bench/gpu_check.py on CPU, as CI runs it: real runs of the script in subprocesses, no mocks.

CUDA is hidden from the script (CUDA_VISIBLE_DEVICES=""), so these test its CPU behaviour on any
machine. The slowest, env + combos, takes about a minute on 2 cores (one torch.compile).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import gpu_check as check  # noqa: E402
MIN_PART_S = 20  # gpu_check.MIN_PART_S: a part is not started with less budget left


def gpu_check(tmp_path: Path, *args: str, timeout: float = 300, out: str = "gc",
              work: bool = True) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """Run the script as the GPU session does (PYTHONPATH=., no install); its output, --out folder and
    parts. work=False: no --work (a temporary scratch folder)."""
    out = tmp_path / out
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
           "FASTDCGAN_FID_WEIGHTS": ""}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out),
                           *(["--work", str(tmp_path / "work")] if work else []), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    results = out / "results.json"
    parts = {p["name"]: p for p in json.loads(results.read_text())["parts"]} if results.exists() else {}
    return proc, out, parts


def packed_logs(out: Path) -> dict[str, str]:
    """The parts' logs and results as logs.tar.gz holds them: {file name: text}."""
    with tarfile.open(out / "logs.tar.gz") as tar:
        return {Path(m.name).name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


def assert_summary_printed_last(proc: subprocess.CompletedProcess, out: Path) -> str:
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# fastdcgan GPU check") and "| check | status | figure | seconds |" in summary
    assert proc.stdout.rstrip().endswith(summary.rstrip()), proc.stdout[-2000:]
    return summary


def test_env_and_combos_run_on_cpu_and_report_their_numbers(tmp_path):
    proc, out, parts = gpu_check(tmp_path, "--only", "env", "combos", "--budget-s", "200")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = assert_summary_printed_last(proc, out)
    assert "passed: 2 ok, 0 failed, 0 not run or not finished" in summary
    assert list(parts) == ["env", "combos"]
    env = parts["env"]
    assert env["status"] == "ok" and env["details"]["cuda_available"] is False and env["details"]["torch"]
    assert "no CUDA" in env["figure"] and "| env | ok |" in summary

    combos = parts["combos"]
    results = combos["details"]["combos"]
    assert combos["status"] == "ok" and combos["figure"] == f"{len(results)}/{len(results)} combos ok"
    assert len(results) >= 4 and "fp32 CL compile" in results and "fp32 CL compile ema" in results
    for name, r in results.items():
        # measured against eager fp32 NCHW, within CPU fp32's bounds, and nothing recompiled after warm-up
        assert r["ok"], (name, r)
        assert r["param_check"] == "param_max" and r["param_max"] <= r["param_tol"] <= 1e-6
        assert r["loss_diff"] <= r["loss_tol"] <= 1e-5
        assert r["graphs_total"] == r["graphs_after_warmup"]
        assert r["graphs_total"] > 0 if "compile" in name else r["graphs_total"] == 0
    assert "ema_mean" in results["fp32 CL compile ema"]
    logs = packed_logs(out)
    for name in ("env", "combos"):
        assert json.loads(logs[f"{name}.json"])["status"] == "ok" and logs[f"{name}.log"]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "results.json", "summary.md"]  # few files
    assert "fp32 CL compile" in proc.stdout  # the per-combo table comes before the summary


def test_no_part_starts_once_the_budget_is_spent(tmp_path):
    proc, out, parts = gpu_check(tmp_path, "--only", "env", "cuda-tests", "combos", "--budget-s", "1")
    assert proc.returncode == 3, proc.stdout  # checked nothing: not a pass
    assert "INCOMPLETE (nothing was checked): 0 ok, 0 failed, 2 not run or not finished" in \
        assert_summary_printed_last(proc, out)
    assert {n: p["status"] for n, p in parts.items()} == {
        "env": "not run (budget)", "cuda-tests": "skipped: no CUDA", "combos": "not run (budget)"}
    assert packed_logs(out) == {}


def test_parts_after_the_budget_runs_out_are_not_run(tmp_path):
    # env may start (MIN_PART_S + 0.5 left); its process alone takes over half a second (importing
    # torch), so less than MIN_PART_S is left after it and combos must not start.
    proc, out, parts = gpu_check(tmp_path, "--only", "env", "combos", "--budget-s", str(MIN_PART_S + 0.5))
    assert proc.returncode == 3, proc.stdout  # env passed, but combos was never checked
    assert parts["env"]["status"] == "ok" and parts["combos"]["status"] == "not run (budget)"
    summary = assert_summary_printed_last(proc, out)
    assert "| combos | not run (budget) |" in summary
    assert "INCOMPLETE (the budget ran out): 1 ok, 0 failed, 1 not run or not finished" in summary


def test_cuda_only_parts_and_fid_without_weights_are_skipped(tmp_path):
    proc, out, parts = gpu_check(tmp_path, "--only", "cuda-tests", "bench", "input", "fid")
    assert proc.returncode == 3, proc.stdout  # every part skipped: nothing was checked
    assert "INCOMPLETE (nothing was checked)" in assert_summary_printed_last(proc, out)
    assert {n: p["status"] for n, p in parts.items()} == {
        "cuda-tests": "skipped: no CUDA", "bench": "skipped: no CUDA", "input": "skipped: no CUDA",
        "fid": "skipped: no FID weights (--fid-weights or $FASTDCGAN_FID_WEIGHTS)"}


def test_a_failing_part_fails_the_run_with_the_trainers_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, out, parts = gpu_check(tmp_path, "--only", "trainer", "--data", str(empty), "--budget-s", "120")
    assert proc.returncode == 1, proc.stdout
    status = parts["trainer"]["status"]
    # the trainer exits 2 on a folder without images; its own error line is the reason
    assert status.startswith("failed: trainer exit 2: error: data.root") and "no images" in status, status
    assert f"| trainer | {status}" in assert_summary_printed_last(proc, out)
    assert any("no images" in line for line in parts["trainer"]["log_tail"])
    assert "no images" in packed_logs(out)["trainer.log"]


def test_list_and_unknown_parts(tmp_path):
    listed = subprocess.run([sys.executable, "bench/gpu_check.py", "--list"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert listed.returncode == 0
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == ["env", "cuda-tests", "combos", "resume", "trainer", "bench", "input", "fid", "autotune"]
    proc, _, _ = gpu_check(tmp_path, "--only", "nonsense")
    assert proc.returncode == 2 and "unknown part 'nonsense'" in proc.stderr
    proc, _, _ = gpu_check(tmp_path, "--data", str(tmp_path / "not-copied"))  # forgot to carry the faces
    assert proc.returncode == 2 and "not-copied is not a folder" in proc.stderr


def test_every_flag_reaches_the_parts_or_the_record(tmp_path):
    """Each flag a user gives the check, changed from its default, shows where it acts: the folders and
    files every part is handed (results.json records them), the budget and the parts in the record, the
    scratch folder kept or removed. A flag parsed and then dropped on the way to the parts (--fid-weights
    left out of a part's command runs the fid part on $FASTDCGAN_FID_WEIGHTS; --keep-work ignored removes
    what the user asked to keep) fails here; a flag added without a check here fails by name. The env
    part only: a few seconds a run."""
    hidden = {"--part", "--combo", "--deadline-s"}  # how the runner starts a part: every run here uses them
    checked = {"--out", "--work", "--data", "--fid-weights", "--budget-s", "--only", "--keep-work",
               "--list"}  # --list: test_list_and_unknown_parts
    flags = {a.option_strings[0] for a in check.parser()._actions if a.option_strings} - {"-h"}
    assert flags == checked | hidden, f"flags without a check here: {sorted(flags - checked - hidden)}"
    faces, net = tmp_path / "faces", tmp_path / "net.pt"
    faces.mkdir()
    net.write_bytes(b"a network")
    proc, out, parts = gpu_check(tmp_path, "--only", "env", "--budget-s", "77", "--data", str(faces),
                                 "--fid-weights", str(net))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert list(parts) == ["env"] and json.loads((out / "results.json").read_text())["budget_s"] == 77
    assert parts["env"]["given"] == {"out": str(out), "work": str(tmp_path / "work"), "data": str(faces),
                                     "fid_weights": str(net)}
    for keep in (False, True):  # no --work: a temporary scratch folder, removed at the end unless kept
        proc, out, _ = gpu_check(tmp_path, "--only", "env", *(["--keep-work"] if keep else []),
                                 out=f"keep-{keep}", work=False)
        assert proc.returncode == 0, proc.stdout[-2000:]
        scratch = Path(json.loads((out / "results.json").read_text())["work"])
        assert scratch.name.startswith("gpu-check-") and scratch.is_dir() == keep, (keep, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
