"""slurm/train.sbatch on a real SLURM, and two torchrun agents as two nodes.

The SLURM tests use the one-host SLURM that slurm/testbed.sh brings up (Debian's slurm-wlm and munge;
.ci/run starts it): real sbatch, scontrol and scancel, real signals from SLURM itself, CPU runs of a
tiny model (300 steps, two workers per job). They skip, saying why, only where that SLURM cannot run
(not root, packages missing). By hand, as root:

    bash slurm/testbed.sh && python -m pytest tests/test_cluster.py; bash slurm/testbed.sh stop

The jobs that no test has to act on at a given moment (the uninterrupted run, the time-limit job,
which waits on SLURM's clock, the requeued job and the failed launch) are submitted first, together,
and run while the other tests act on their own jobs. Every wait polls, with generous limits: the
machine may be busy.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_celeba, tiny_args, two_node_agent, weights
from fastdcgan import checkpoint

SCRIPT = REPO / "slurm" / "train.sbatch"
TESTBED = REPO / "slurm" / "testbed.sh"
STEPS = 300       # a run: a few hundred steps of the tiny model, 2 CPU workers x batch 8
FIRST_ROW = 10    # log.every: the first metrics row says the run is training
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE"}


def poll(condition, timeout: float, what: str, interval: float = 0.2):
    t = time.time()
    while not (result := condition()):
        if time.time() - t > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
    return result


@pytest.fixture(scope="module")
def cluster():
    """The test SLURM, up and idle; stopped again afterwards if these tests started it."""
    was_up = subprocess.run(["bash", TESTBED, "status"], capture_output=True).returncode == 0
    # installing is slurm/testbed.sh's (and CI's) job
    r = subprocess.run(["bash", TESTBED, "start"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_INSTALL": "1"})
    if r.returncode == 3:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr
    jobs: list[Job] = []
    yield jobs
    for job in jobs:  # whatever a failed test left running
        subprocess.run(["scancel", job.id], capture_output=True)
    if not was_up:
        subprocess.run(["bash", TESTBED, "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_celeba(tmp_path_factory.mktemp("faces"), 48)


def run_args(faces: Path, run: Path, **extra) -> list[str]:
    """The run every SLURM test trains (the scancel test lets it run on): checkpoints only when it stops
    and at the end, so that a resume can only come from the stop's checkpoint."""
    return tiny_args(faces, run, **{"train__epochs": 1000, "train__max_steps": STEPS, "log__every": FIRST_ROW,
                                    "sample__every": 100000, "ckpt__every": 100000, **extra})


class Job:
    """A run of slurm/train.sbatch submitted with sbatch, as a CPU-only partition runs it."""

    def __init__(self, cluster: list, name: str, where: Path, faces: Path, *sbatch: str,
                 environ: dict | None = None, **extra):
        where.mkdir(parents=True, exist_ok=True)
        self.run, self.log = where / "run", where / "job.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env.update(PYTHON=sys.executable, RUN_DIR=str(self.run), PROCS_PER_NODE="2", OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1", FASTDCGAN_CACHE=str(where.parent / "cache"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        env.update(environ or {})
        r = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1",
                            f"--job-name={name}", f"--output={self.log}", *sbatch, SCRIPT,
                            *run_args(faces, self.run, **extra)],
                           capture_output=True, text=True, env=env, cwd=where, timeout=60)
        assert r.returncode == 0, r.stderr
        self.id = r.stdout.strip().split(";")[0]
        cluster.append(self)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def info(self) -> dict[str, str]:
        r = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True, text=True,
                           timeout=60)
        return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)

    def state(self) -> str:
        return self.info().get("JobState", "?")

    def wait_end(self, timeout: float = 300) -> str:
        return poll(lambda: (s := self.state()) in ENDED and s, timeout,
                    f"job {self.id} ended\n{self.output()}", 0.5)

    def logged(self, step: int) -> bool:
        path = self.run / "metrics.jsonl"
        return path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines())

    def status(self) -> list[str]:
        return (self.run / "STATUS").read_text().split()


def trainer_processes(run: Path) -> list[int]:
    """torchrun's workers training this run (their command lines name its directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            if ("fastdcgan.train" in argv and f"train.run_dir={run}" in argv
                    and "torch.distributed.run" not in argv and "fastdcgan.torchrun" not in argv):
                pids.append(int(proc.name))
    return pids


class BackgroundJob(Job):
    """A job that runs while other tests do, with what is done to it in a thread of its own (`act`);
    wait_end raises what went wrong there."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._act, daemon=True)
        self.thread.start()

    def act(self) -> None:
        pass

    def _act(self) -> None:
        try:
            self.act()
        except BaseException as e:  # noqa: BLE001 (wait_end raises it)
            self.error = e

    def wait_end(self, timeout: float = 300) -> str:
        state = super().wait_end(timeout)
        self.thread.join(timeout=60)
        if self.error:
            raise self.error
        return state

    def wait_training(self) -> None:
        poll(lambda: self.logged(FIRST_ROW) or self.state() in ENDED, 240,
             f"job {self.id} training\n{self.output()}")
        assert self.state() not in ENDED, self.output()


class TimeLimitJob(BackgroundJob):
    """A job of two minutes with the script's warning scaled down to 55 s before the limit: SLURM sends
    USR1 to the batch script 35-65 s after the start (it checks time limits every 30 s).

    The tiny run would finish before that, so its workers are held (SIGSTOP: they use no CPU meanwhile)
    from their first log row until SLURM's warning has come. Once the warning is in, the job gets 10
    minutes, so that the resumed run finishes rather than being warned again."""

    WARNING = "USR1: asking the workers to checkpoint and stop"  # the script's line when the warning comes

    def __init__(self, *args):
        super().__init__(*args, "--time=2", "--signal=B:USR1@55")

    def act(self) -> None:
        held = []
        try:
            deadline = time.time() + 240
            while self.WARNING not in self.output():
                assert time.time() < deadline, f"no warning from SLURM within 240 s\n{self.output()}"
                assert self.state() not in ENDED, f"the job ended before the warning\n{self.output()}"
                if not held and self.logged(FIRST_ROW):
                    held = trainer_processes(self.run)
                    for pid in held:
                        os.kill(pid, signal.SIGSTOP)
                time.sleep(0.2)
            r = subprocess.run(["scontrol", "update", f"JobId={self.id}", "TimeLimit=10"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        finally:
            for pid in held:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


class RequeuedJob(BackgroundJob):
    """`scontrol requeue` once the run trains: SIGTERM to every process of the job (the batch script,
    srun, torchrun, the workers), then the job is pending again."""

    def act(self) -> None:
        self.wait_training()
        subprocess.run(["scontrol", "requeue", self.id], check=True, timeout=60)


def module_dir(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.getbasetemp() / name


@pytest.fixture(scope="module")
def uninterrupted(cluster, faces, tmp_path_factory) -> BackgroundJob:
    """The same run as the interrupted ones, in one job without interruptions."""
    return BackgroundJob(cluster, "uninterrupted", module_dir(tmp_path_factory, "uninterrupted"), faces,
                         "--time=10")


@pytest.fixture(scope="module")
def time_limit(cluster, faces, tmp_path_factory) -> TimeLimitJob:
    return TimeLimitJob(cluster, "time-limit", module_dir(tmp_path_factory, "time_limit"), faces)


@pytest.fixture(scope="module")
def requeued(cluster, faces, tmp_path_factory) -> RequeuedJob:
    return RequeuedJob(cluster, "requeue", module_dir(tmp_path_factory, "requeue"), faces, "--time=10")


@pytest.fixture(scope="module")
def bad_launch(cluster, faces, tmp_path_factory) -> BackgroundJob:
    """A launch that fails at once (a bad setting; no restarts), on a run whose last stop left STATUS."""
    run = module_dir(tmp_path_factory, "bad_launch") / "run"
    run.mkdir(parents=True)
    (run / "STATUS").write_text("stopped 12\n")
    return BackgroundJob(cluster, "bad-launch", run.parent, faces, "--time=10", environ={"MAX_RESTARTS": "0"},
                         train__no_such_key=1)


@pytest.fixture(scope="module", autouse=True)
def background_jobs_first(request):
    """The jobs that need no test to act on them start first, and run while the other tests act on theirs."""
    used = {name for item in request.session.items if item.module is request.module
            for name in item.fixturenames}
    with contextlib.suppress(pytest.skip.Exception):  # no SLURM: the tests that need it skip, not the others
        for name in ("uninterrupted", "time_limit", "requeued", "bad_launch"):
            if name in used:
                request.getfixturevalue(name)


def stop_step(out: str, by: str) -> int:
    steps = re.findall(rf"stopped by {by} at step (\d+);", out)
    assert len(steps) == 1, out  # one line: rank 0's, from one stop
    return int(steps[0])


def assert_resumed(job: Job, step: int, out: str) -> None:
    assert re.search(rf"resumed from {re.escape(str(job.run / 'checkpoints'))}/\S+ at step {step} \(",
                     out), out
    assert checkpoint.load(checkpoint.latest(job.run / "checkpoints"))["step"] == STEPS


def test_scancel_stops_with_a_checkpoint_and_no_requeue(cluster, faces, tmp_path):
    job = Job(cluster, "scancel", tmp_path, faces, "--time=10", train__max_steps=100000)
    poll(lambda: job.logged(FIRST_ROW), 240, f"job {job.id} training\n{job.output()}")
    subprocess.run(["scancel", job.id], check=True, timeout=60)
    assert job.wait_end() == "CANCELLED", job.output()
    state, step = job.status()
    assert state == "stopped", job.output()
    assert stop_step(job.output(), "SIGTERM") == int(step) >= FIRST_ROW
    assert checkpoint.load(checkpoint.latest(job.run / "checkpoints"))["step"] == int(step)
    assert job.info()["Restarts"] == "0" and "(restart 1)" not in job.output()
    assert "Traceback" not in job.output() and "SignalException" not in job.output(), job.output()


def test_a_warning_while_the_workers_start_is_not_lost(cluster, faces, tmp_path):
    """SLURM's warning as it comes (USR1 to the batch script alone) before the trainer has started: a
    fresh launch deletes the STOP it finds (the last stop's), so the script puts it back until the
    launcher ends, and the run stops instead of training on into the time limit."""
    job = Job(cluster, "early-warning", tmp_path, faces, "--time=10")
    poll(lambda: "(restart 0)" in job.output(), 240, f"job {job.id} started\n{job.output()}")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job.id], check=True, timeout=60)

    def requeued():
        info = job.info()
        assert info["JobState"] not in ENDED, f"the job ended instead:\n{job.output()}"
        return info["Restarts"] == "1"
    poll(requeued, 240, f"job {job.id} requeued\n{job.output()}")
    subprocess.run(["scancel", job.id], check=True, timeout=60)  # that is all this test needs of it
    out = job.output()
    assert TimeLimitJob.WARNING in out and "run state: stopped" in out, out
    step = stop_step(out, "STOP file")
    assert job.status() == ["stopped", str(step)] and step < STEPS, out


def test_two_nodes_rendezvous_train_one_run_and_it_resumes_on_one(faces, tmp_path):
    """Two torchrun agents as two nodes (--nnodes=2, c10d rendezvous on this host, one worker each)
    train one run with one writer; a STOP ends both at the same step with exit 0 and no restart; one
    agent with both workers resumes it from that step and finishes it."""
    run, steps = tmp_path / "run", 60
    args = run_args(faces, run, train__max_steps=steps, log__every=5)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    node = two_node_agent("--max-restarts=1")
    nodes = [subprocess.Popen([*node, "-m", "fastdcgan.train", *args], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        def training():
            assert all(p.poll() is None for p in nodes), [p.communicate()[0] for p in nodes]
            path = run / "metrics.jsonl"
            return path.exists() and any(json.loads(x)["step"] >= 5 for x in path.read_text().splitlines())
        poll(training, 240, "two nodes training")
        (run / "STOP").touch()
        outs = [p.communicate(timeout=120)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    both = "\n".join(outs)
    assert [p.returncode for p in nodes] == [0, 0], both
    assert both.count("2 processes, global batch 16") == 1, both  # one display ...
    step = stop_step(both, "STOP file")
    assert (run / "STATUS").read_text().split() == ["stopped", str(step)]
    rows = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(5, step + 1, 5)), rows  # ... and one writer: each row once
    saved = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert (saved["step"], saved["world"]) == (step, 2)
    for noise in ("ChildFailedError", "Traceback", "will restart worker group"):
        assert noise not in both, both

    one = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "fastdcgan.train", *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=240)
    assert one.returncode == 0, one.stdout + one.stderr
    assert f".pt at step {step} (" in one.stdout, one.stdout
    assert (run / "STATUS").read_text().split() == ["finished", str(steps)]
    rows = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(5, steps + 1, 5)), rows


def test_scontrol_requeue_checkpoints_resumes_and_finishes(requeued):
    """The workers checkpoint at a step boundary, and the requeued job resumes there."""
    job = requeued
    assert job.wait_end() == "COMPLETED", job.output()
    out = job.output()
    step = stop_step(out, "SIGTERM")
    assert FIRST_ROW <= step < STEPS
    assert "(restart 1)" in out and job.info()["Restarts"] == "1", out
    assert_resumed(job, step, out)
    assert job.status() == ["finished", str(STEPS)]
    # torchrun, signalled itself, says so in one line (fastdcgan.torchrun), and restarts no worker
    assert "torchrun: SIGTERM: the workers were told to stop" in out, out
    for noise in ("will restart worker group", "ChildFailedError", "Traceback", "SignalException"):
        assert noise not in out, out


def test_a_launch_that_fails_is_not_taken_for_the_last_stop(bad_launch):
    """The STATUS a stop left says `stopped`: a launch that fails before writing its own must end the
    job, not requeue it again and again."""
    job = bad_launch

    def ended_or_requeued():
        info = job.info()
        return (info["JobState"] in ENDED or info["Restarts"] != "0") and info
    info = poll(ended_or_requeued, 240, f"job {job.id} ended\n{job.output()}")
    out = job.output()
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), out
    assert "train.no_such_key" in out and "run state: missing" in out, out


def test_the_time_limit_warning_checkpoints_requeues_resumes_and_finishes(time_limit):
    job = time_limit
    assert job.wait_end() == "COMPLETED", job.output()
    out = job.output()
    step = stop_step(out, "STOP file")
    assert out.count(job.WARNING) == 1, out
    assert (re.search(r"run state: stopped\n.*\(restart 1\)", out, re.DOTALL)
            and job.info()["Restarts"] == "1"), out
    assert_resumed(job, step, out)
    assert job.status() == ["finished", str(STEPS)] and out.rstrip().endswith("run state: finished"), out


def test_an_orderly_stop_restarts_no_worker_and_prints_no_traceback(time_limit):
    """The job's output after the warning's stop reads cleanly. (With exit 75 from its workers torchrun
    restarted them, each found STOP and stopped again, until --max-restarts was spent, then printed a
    ChildFailedError.)"""
    job = time_limit
    job.wait_end()
    out = job.output()
    assert job.WARNING in out, out
    for noise in ("ChildFailedError", "Traceback", "will restart worker group", "FAILED",
                  "asked to stop; not training"):
        assert noise not in out, f"{noise!r} in the job's output:\n{out}"
    # SLURM's own notice when the script requeues the job is the one error line
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert all("DUE TO JOB REQUEUE" in line for line in errors), out


def test_interrupted_runs_end_bit_identical_to_the_uninterrupted_run(uninterrupted, time_limit, requeued):
    """Stopped by the warning, or by a hard requeue, resumed: the same weights to the bit as the run
    that was never stopped (CPU, one thread per worker in each)."""
    assert uninterrupted.wait_end() == "COMPLETED", uninterrupted.output()
    assert "stopped by" not in uninterrupted.output()
    for job in (time_limit, requeued):
        assert job.wait_end() == "COMPLETED", job.output()
        assert "stopped by" in job.output(), job.output()
        for name in ("generator.pth", "discriminator.pth"):
            a, b = weights(uninterrupted.run / name), weights(job.run / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (job.run, name)
