"""Every GPU path of fastdcgan in one command, for a GPU machine lent for minutes: a short table last.

    PYTHONPATH=. python bench/gpu_check.py --out gpu-check --budget-s 420 --data /data/celeba-2k
    python bench/gpu_check.py --list                      # the parts and their time limits
    python bench/gpu_check.py --only env combos           # some of them

Made for an offline machine with the project checked out but not installed. Each part runs in its
own process group under a time limit, so a crash or a hang costs one row, not the run. Parts run in
the order of PARTS until the budget (--budget-s) is spent; the rest are listed as `not run
(budget)`, and one that the budget's end cuts short as `not finished (budget)`. Without CUDA the
parts that can run do, at tiny sizes (CI runs it so, in 2-3 minutes on 2 cores), and the others
report `skipped: no CUDA`.

Writes into --out, after every part, few files (a GPU lease returns at most 8): summary.md (printed
last), results.json (every number, and the last log lines of failed parts), logs.tar.gz (each
part's NAME.log and NAME.json) and, once the trainer part has run, trainer-samples.png (its last
fixed-noise grid). Scratch (the run directories, per-part and per-combo logs, benchmark rows) goes to
--work: by default a temporary folder, removed at the end. Exit code 1 when a part failed; 3 when none
failed but the check is incomplete: a part the budget (or an interrupt) left not run or not finished, or
no part that checked anything (all skipped): a check that checked nothing never reads as a pass.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpu_check_* modules, however this file is run
import gpu_check_common as common  # noqa: E402
import gpu_check_runs as runs  # noqa: E402
import gpu_check_steps as steps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIN_PART_S = 20      # a part is not started with less budget than this left
KILL_GRACE_S = 5     # after SIGTERM at a part's time limit, SIGKILL this much later
NOT_RUN = "not run (budget)"  # and "not finished (budget): ..." for a part the budget's end stopped
EXIT_FAILED, EXIT_INCOMPLETE = 1, 3


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[common.Ctx], dict]
    timeout_s: int       # on a GPU; the budget left caps it
    needs_cuda: bool
    what: str


# In the order they run. Time limits are sized for the H200 (16 cores) the check is made for, so that
# a default budget of 420-480 s reaches the trainer; max-autotune (minutes of autotuning) comes last.
PARTS = [
    Part("env", runs.env, 60, False, "GPU, driver, torch, CUDA, cuDNN, DALI, compiler, memory, cores"),
    Part("cuda-tests", steps.cuda_tests, 150, True, "pytest tests/ -m cuda, with TORCH_LOGS=recompiles"),
    Part("combos", steps.combos, 180, False,
         "the step under each precision/layout/compile/graphs mix vs eager fp32"),
    Part("resume", steps.resume, 120, False,
         "a checkpoint of one mode resumed in another, every pair (pytest)"),
    Part("trainer", runs.trainer, 240, False,
         "celeba64-fast.toml as a user runs it: SIGTERM, exit 75, resume"),
    Part("bench", runs.bench, 300, True, "bench/test_step.py + bench/test_train.py at full size"),
    Part("input", runs.input_backends, 180, True, "bench/test_input.py at full size"),
    Part("fid", runs.fid, 240, False, "python -m fastdcgan.fid on the trainer part's run"),
    Part("autotune", steps.autotune, 300, True,
         "compile=max-autotune (bf16, with and without graphs) vs eager fp32"),
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-check", help="folder for the logs and results (default gpu-check/)")
    p.add_argument("--budget-s", type=float, default=480, help="seconds for all parts together (default 480)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these parts (see --list)")
    p.add_argument("--data", default="",
                   help="image folder or CelebA layout (default: built-in synthetic faces)")
    p.add_argument("--fid-weights", default=os.environ.get("FASTDCGAN_FID_WEIGHTS", ""),
                   help="FID feature network for the fid part (default $FASTDCGAN_FID_WEIGHTS)")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    p.add_argument("--list", action="store_true", help="list the parts and exit")
    # internal: how the runner starts one part, and the combos part one combination, in a process of its own
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--combo", help=argparse.SUPPRESS)
    p.add_argument("--deadline-s", type=float, default=600, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    names = [part.name for part in PARTS]
    for name in args.only or []:
        if name not in names:
            p.error(f"unknown part {name!r}; the parts: {', '.join(names)}")
    for key in ("out", "data", "fid_weights", "work"):  # parts run from the repository root
        if getattr(args, key):
            setattr(args, key, str(Path(getattr(args, key)).expanduser().resolve()))
    if not args.part and not args.combo:  # say it now, not after minutes of parts failing on it
        if args.data and not Path(args.data).is_dir():
            p.error(f"--data {args.data} is not a folder (on a lent GPU machine: copy the images into the "
                    "checkout and name that folder in carry)")
        if args.fid_weights and not Path(args.fid_weights).is_file():
            p.error(f"--fid-weights {args.fid_weights} is not a file")
    return args


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # a broken torch install: the env part will say how
        return False


# ----- one part, in its own process -----

def run_part_here(args: argparse.Namespace) -> int:
    """The body of a part's process: run its function, write NAME.json. A crash writes nothing:
    the runner then reports the log's last line."""
    part = next(p for p in PARTS if p.name == args.part)
    deadline = time.monotonic() + args.deadline_s - 3  # 3 s to write the result before the runner's kill
    ctx = common.Ctx(Path(args.out), Path(args.work), args.data, args.fid_weights, cuda_available(), deadline)
    signal.signal(signal.SIGTERM, common.on_sigterm)
    t = time.monotonic()
    result = part.run(ctx)
    result["seconds"] = round(time.monotonic() - t, 1)
    # what the runner handed this part, in results.json: a flag dropped on the way shows here
    result["given"] = {"out": str(ctx.out), "work": str(ctx.work), "data": ctx.data,
                       "fid_weights": ctx.fid_weights}
    (logs_dir(ctx.work) / f"{part.name}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


def logs_dir(work: Path) -> Path:
    """Each part's NAME.log and NAME.json, in the scratch folder; packed into --out as logs.tar.gz."""
    folder = Path(work) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pack_logs(out: Path, work: Path) -> None:
    tmp = out / "logs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(logs_dir(work), arcname="logs")
    os.replace(tmp, out / "logs.tar.gz")


def part_env(work: Path) -> dict:
    # the trainer's caches (file verdicts, decoded arrays, synthetic faces) in the scratch folder: the
    # home folder of a lent machine may not be writable, and nothing should outlive the check
    env = dict(os.environ, PYTHONUNBUFFERED="1", FASTDCGAN_CACHE=str(work / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def stop_part(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the part's group (the part then kills the commands it started, each in a group of
    its own), SIGKILL after grace seconds."""
    common.kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        common.kill_group(proc)


def run_part(part: Part, timeout: float, args: argparse.Namespace, work: Path, fid_weights: str) -> dict:
    """Start the part's process (its own process group), wait up to timeout, read its NAME.json."""
    out = Path(args.out)
    log, result_file = logs_dir(work) / f"{part.name}.log", logs_dir(work) / f"{part.name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part.name, "--out", str(out),
           "--work", str(work), "--deadline-s", f"{timeout:.0f}", "--data", args.data,
           "--fid-weights", fid_weights]
    t = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=part_env(work),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
            stop_part(proc, KILL_GRACE_S)
        except BaseException:  # interrupted: leave nothing running
            stop_part(proc, 2)
            raise
        finally:
            common.kill_group(proc)  # whatever the part left behind in its group
    seconds = round(time.monotonic() - t, 1)
    lines = log.read_text(errors="replace").splitlines()
    if rc is None:
        record = {"status": f"failed: timeout after {timeout:.0f} s", "figure": "", "details": {}}
    elif rc != 0 or not result_file.exists():
        why = f"exit {rc}: " if rc else "wrote no result: "
        record = {"status": "failed: " + why + common.last_meaningful(lines), "figure": "", "details": {}}
    else:
        record = json.loads(result_file.read_text())
    record.update(name=part.name, seconds=seconds, log=log.name)
    if record["status"].startswith("failed"):
        record["log_tail"] = lines[-40:]
    result_file.write_text(json.dumps(record, indent=1, default=str))
    return record


# ----- the run -----

def ran_out_of_time(record: dict, timeout: float) -> bool:
    """Failed at its time limit: killed there, or gave up on its own (a part's commands get the part's
    time left, so it reports their timeout a few seconds before the runner would kill it), or failed
    only for the work its time did not reach (combos: none started with under 10 s left; on a loaded
    machine that comes well before the limit)."""
    only_time = bool(record.get("details", {}).get("out_of_time"))
    return record["status"].startswith("failed") and (record["seconds"] >= timeout - 10 or only_time)


def skip_reason(part: Part, cuda: bool, fid_weights: str) -> str | None:
    if part.needs_cuda and not cuda:
        return "skipped: no CUDA"
    if part.name == "fid" and not fid_weights:
        return "skipped: no FID weights (--fid-weights or $FASTDCGAN_FID_WEIGHTS)"
    return None


def environment_lines(records: list[dict], cuda: bool) -> list[str]:
    env = next((r["details"] for r in records if r["name"] == "env" and r.get("details")), None)
    if env:
        return runs.env_summary(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [f"python {platform.python_version()}, CUDA {'available' if cuda else 'not available'}, "
            f"{cores} cores (run the env part for more)"]


def summary(records: list[dict], env_lines: list[str], footer: str) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["# fastdcgan GPU check", "", "| check | status | figure | seconds |",
             "| --- | --- | --- | --- |"]
    for r in records:
        seconds = f"{r['seconds']:.1f}" if r.get("seconds") is not None else ""
        status, figure = cell(common.clip(r["status"], 160)), cell(r.get("figure", ""))
        lines.append(f"| {r['name']} | {status} | {figure} | {seconds} |")
    return "\n".join(lines + [""] + [f"- {line}" for line in env_lines] + [f"- {footer}", ""])


def verdict(records: list[dict]) -> tuple[int, str]:
    """The exit code and the words for it: failed parts first; then a check that is incomplete (parts
    not run or not finished) or checked nothing (every part skipped); else every part checked passed."""
    failed = sum(r["status"].startswith("failed") for r in records)
    unfinished = sum(r["status"].startswith(("not run", "not finished")) for r in records)
    passed = sum(r["status"] == "ok" for r in records)
    counts = f"{passed} ok, {failed} failed, {unfinished} not run or not finished"
    if failed:
        return EXIT_FAILED, f"FAILED: {counts}"
    if unfinished or not passed:
        interrupted = any(r["status"].endswith("(interrupted)") for r in records)
        why = "interrupted" if interrupted else "nothing was checked" if not passed else "the budget ran out"
        return EXIT_INCOMPLETE, f"INCOMPLETE ({why}): {counts}"
    return 0, f"passed: {counts}"


def write_results(out: Path, records: list[dict], info: dict, cuda: bool) -> str:
    code, words = verdict(records)
    footer = (f"{words}; {info['elapsed_s']:.0f} s of a {info['budget_s']:.0f} s budget; "
              f"every number in {out / 'results.json'}")
    env_lines = environment_lines(records, cuda)
    text = summary(records, env_lines, footer)
    (out / "summary.md").write_text(text)
    results = {**info, "environment": env_lines, "exit_code": code, "verdict": words, "parts": records}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return text


def print_details(records: list[dict]) -> None:
    """Before the summary: the combos' numbers and each failure's last log lines."""
    for r in records:
        if r["name"] == "combos" and r.get("details", {}).get("combos"):
            print("\ncombos (loss: max |loss - eager fp32 NCHW|; param: mean |w - eager|, max in brackets):")
            for line in steps.combo_table(r["details"]["combos"]):
                print("  " + line)
        if r["status"].startswith(("failed", "not finished")):
            print(f"\n{r['name']} {r['status']}\n  last lines of {r.get('log', 'its log')}:")
            for line in r.get("log_tail", [])[-8:]:
                print("  | " + common.clip(line, 200))
    print(flush=True)


def run_all(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    selected = [p for p in PARTS if not args.only or p.name in args.only]
    cuda = cuda_available()
    fid_weights = args.fid_weights
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    temporary = not args.work and not args.keep_work
    print(f"gpu_check: {len(selected)} parts, budget {args.budget_s:.0f} s, CUDA {'yes' if cuda else 'no'}, "
          f"out {out}, scratch {work}{' (removed at the end)' if temporary else ''}", flush=True)
    info = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": args.budget_s, "cuda": cuda, "out": str(out), "work": str(work), "elapsed_s": 0.0}
    records: list[dict] = []
    signal.signal(signal.SIGTERM, common.raise_keyboard_interrupt)  # a killed run still writes its summary
    t0 = time.monotonic()  # the budget counts from the first part: set-up above is not the parts' time
    running = None  # the part under way, if an interrupt comes: not finished; the parts after it: not run
    try:
        for part in selected:
            left = args.budget_s - (time.monotonic() - t0)
            status = skip_reason(part, cuda, fid_weights) or (NOT_RUN if left < MIN_PART_S else None)
            if status:
                record = {"name": part.name, "status": status, "figure": "", "seconds": None, "details": {}}
            else:
                timeout = min(part.timeout_s, left)
                print(f"[{time.monotonic() - t0:5.0f} s] {part.name}: start (limit {timeout:.0f} s)",
                      flush=True)
                running = part.name
                record = run_part(part, timeout, args, work, fid_weights)
                if timeout < part.timeout_s and ran_out_of_time(record, timeout):
                    # the budget's end, not the part's own limit, stopped it: not a failure of the code
                    record["status"] = "not finished (budget): " + record["status"].removeprefix("failed: ")
            records.append(record)
            running = None
            figure = f" | {record['figure']}" if record.get("figure") else ""
            took = f" ({record['seconds']:.1f} s)" if record.get("seconds") is not None else ""
            print(f"[{time.monotonic() - t0:5.0f} s] {part.name}: "
                  f"{common.clip(record['status'], 200)}{figure}{took}", flush=True)
            info["elapsed_s"] = round(time.monotonic() - t0, 1)
            write_results(out, records, info, cuda)
            pack_logs(out, work)
    except KeyboardInterrupt:
        done = {r["name"] for r in records}
        records += [{"name": p.name, "status": "not finished (interrupted)" if p.name == running
                     else "not run (interrupted)", "figure": "", "seconds": None, "details": {}}
                    for p in selected if p.name not in done]
    finally:
        pack_logs(out, work)
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    info["elapsed_s"] = round(time.monotonic() - t0, 1)
    text = write_results(out, records, info, cuda)
    print_details(records)
    print(text, flush=True)
    return verdict(records)[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for p in PARTS:
            print(f"{p.name:<11} {p.timeout_s:>4} s  "
                  f"{'CUDA only' if p.needs_cuda else 'CUDA or CPU':<11}  {p.what}")
        return 0
    if args.combo:
        return steps.combo_main(Path(args.work), args.combo)
    if args.part:
        return run_part_here(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
