"""Several processes on CPU: real torchrun, real gloo process groups, real signals."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, tiny_args, wait_for_step
from fastdcgan import checkpoint, dist
from fastdcgan.config import UsageError
from fastdcgan.model import generator_from_state_dict
from fastdcgan.train import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(*args, extra=(), **kw):
    return subprocess.Popen([*TORCHRUN, *extra, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            **kw)


def workers_of(proc) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_first_host_and_environments(monkeypatch):
    assert dist.first_host("gpu[03-05,7],cpu1") == "gpu03"
    assert dist.first_host("node12") == "node12"
    assert dist.first_host("a[1,4]") == "a1"
    assert dist.from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == dist.Env(3, 8, 1)
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "n[2-3]",
           "SLURM_JOB_ID": "77"}
    assert dist.from_environment(env) == dist.Env(5, 8, 1)
    assert env["MASTER_ADDR"] == "n2" and env["MASTER_PORT"] == "20077"
    assert dist.from_environment({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == dist.Env()


def test_two_processes_train_and_only_rank_0_writes(celeba, tmp_path):
    run = tmp_path / "run"
    proc = torchrun("-m", "fastdcgan.train", *tiny_args(celeba, run, train__batch_size=4, train__max_steps=8))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert out.count("global batch 8") == 1 and out.count("done: 8 steps") == 1  # one display
    # every line the run prints is rank 0's alone: none comes twice (the input backend's included).
    # torchrun frames its own note (OMP_NUM_THREADS, where it is unset) in two rows of stars: not ours.
    lines = [line for line in out.splitlines() if line.strip() and set(line.strip()) != {"*"}]
    assert len(lines) == len(set(lines)) and out.count("input: backend") == 1, out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    # images seen count every rank's: a step of 2 processes at batch 4 is 8 images
    assert [r["images"] for r in rows] == [16, 32, 48, 64]
    # ... and so does img/s: the global batch over each step's time (data wait + compute; the log line
    # between steps makes the rate a little lower). Counting one rank's images would halve it.
    pace = sorted(r["img_per_s"] * (r["data_ms"] + r["compute_ms"]) / (8 * 1000) for r in rows)
    assert 0.7 < pace[len(pace) // 2] <= 1.01, pace
    assert (run / "STATUS").read_text().split() == ["finished", "8"]
    last = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert (last["world"], last["images"]) == (2, 64)
    # the weights files are the plain networks' (no DDP "module." prefix): they load as the tutorial's
    for name, net in (("generator.pth", "G"), ("discriminator.pth", "D")):
        weights = torch.load(run / name, weights_only=True)
        assert weights.keys() == last[net].keys()
        assert all(torch.equal(v, last[net][k]) for k, v in weights.items())
    generator_from_state_dict(torch.load(run / "generator.pth", weights_only=True))


def test_sync_bn_two_half_batches_equal_one_whole_batch(tmp_path):
    worker = str(REPO / "tests" / "syncbn_worker.py")
    proc = torchrun(worker, tmp_path / "two.pt", 16, 1)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    subprocess.run([sys.executable, worker, tmp_path / "one.pt", "16", "1"], check=True, env=env, cwd=REPO)
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    # Same sums in another order: float32 rounding only (~1e-7 relative); an unsynced BatchNorm,
    # or gradients summed instead of averaged, would be off by whole Adam steps (2e-4).
    for net in ("G", "D"):
        for k, v in one[net].items():
            assert torch.allclose(two[net][k].float(), v.float(), atol=2e-6), (net, k)
    # The EMA generator's recalibration (model.sync_bn with model.ema): the cumulative average of its
    # batches' statistics, every rank's batches the same, so one process's. The variances differ by the
    # unbiased correction alone (n / (n - 1) at two ranks' count against one's: under 3e-4 at 128
    # images of 4 x 4 or more); one batch's statistics in place of the average differ by about 1e-2.
    one, two = one["recalibrated"], two["recalibrated"]
    means = [k for k in one if k.endswith("running_mean")]
    assert means
    for k in means:
        assert torch.allclose(two[k], one[k], rtol=1e-5, atol=1e-6), k
        var = k.replace("mean", "var")
        assert torch.allclose(two[var], one[var], rtol=3e-4, atol=0), var


def test_sigterm_to_one_worker_stops_all_with_one_checkpoint(celeba, tmp_path):
    run = tmp_path / "run"
    proc = torchrun("-m", "fastdcgan.train", *tiny_args(celeba, run, train__batch_size=4, train__epochs=1000,
                                                         ckpt__every=1000, sample__every=1000))
    wait_for_step(run, 3, proc)
    os.kill(workers_of(proc)[1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    # Under torchrun a stop exits 0 (STATUS says it): exit 75 was a failure to torchrun, which printed
    # a ChildFailedError and, given --max-restarts, restarted the workers
    assert proc.returncode == 0 and "ChildFailedError" not in out and "exitcode" not in out, out
    state, step = (run / "STATUS").read_text().split()
    assert state == "stopped"
    assert f"stopped by SIGTERM at step {step};" in out  # rank 0 names the signal another rank got
    saved = [int(checkpoint.load(p)["step"]) for p in checkpoint.list_checkpoints(run / "checkpoints")]
    # the stop's one checkpoint, at the agreed step; any before it are epoch ends (6 steps an epoch),
    # which a busy machine lets the run reach before the signal lands
    assert saved[-1] == int(step) and all(s % 6 == 0 for s in saved[:-1]), saved
    
    # ... and that 2-process checkpoint resumes in one process (fresh launch: the stale STOP is cleared),
    # with the first launch's epochs (tiny_args' 2 may be done by then: the run would have ended)
    assert main(tiny_args(celeba, run, train__batch_size=4, train__epochs=1000,
                          train__max_steps=int(step) + 4)) == 0
    assert (run / "STATUS").read_text().split() == ["finished", str(int(step) + 4)]


def test_sigterm_to_the_agent_of_fastdcgan_torchrun_says_so_in_one_line(celeba, tmp_path):
    """What scancel and scontrol requeue do (slurm/train.sbatch launches fastdcgan.torchrun): torchrun's
    agent signalled, it stops the workers, which checkpoint; one line, no SignalException traceback."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fastdcgan.torchrun", "--standalone", "--nproc_per_node=2",
                             "-m", "fastdcgan.train", *map(str, tiny_args(celeba, run, train__batch_size=4,
                                                                          train__epochs=1000))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "torchrun: SIGTERM: the workers were told to stop" in out, out
    assert "Traceback" not in out and "SignalException" not in out, out
    state, step = (run / "STATUS").read_text().split()
    assert state == "stopped" and checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"] == int(step)


def test_a_device_is_checked_where_it_is_named():
    """One line naming the setting or flag, before anything is built: a name torch does not know, CUDA
    where there is none, a CUDA index past the machine's devices (an error deep inside torch later)."""
    cuda7 = "CUDA device(s)" if torch.cuda.device_count() > 0 else "no CUDA device is available"
    for name, says in (("tpu:0", "unknown device 'tpu:0'"), ("cuda:7", cuda7), ("cuda:99", cuda7)):
        if name == "cuda:7" and torch.cuda.device_count() > 7:
            continue
        with pytest.raises(UsageError) as e:
            dist.parse_device(name, "--device")
        assert str(e.value).startswith("--device") and says in str(e.value), str(e.value)
    assert dist.parse_device("cpu").type == "cpu"


def test_killed_worker_restarts_and_resumes(celeba, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(celeba, run, train__batch_size=4, train__epochs=100, ckpt__every=3, train__max_steps=30)
    proc = torchrun("-m", "fastdcgan.train", *args, extra=["--max-restarts=1"])
    wait_for_step(run, 8, proc)
    os.kill(workers_of(proc)[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "resumed from" in out
    assert (run / "STATUS").read_text().split() == ["finished", "30"]


SBATCH = REPO / "slurm" / "train.sbatch"


def outside_slurm(*drop: str, **env: str) -> dict[str, str]:
    """This process's environment without SLURM's variables (and `drop`), with `env` and PYTHON set."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in drop}
    return {**kept, "PYTHON": sys.executable, **env}


def sbatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """slurm/train.sbatch run by bash (with DRY_RUN=1 it prints the command it would launch)."""
    return subprocess.run(["bash", SBATCH, *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_sbatch_script_parses_and_builds_the_torchrun_command():
    assert subprocess.run(["bash", "-n", SBATCH]).returncode == 0
    env = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_ID": "4242", "SLURM_NNODES": "3",
           "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_NODELIST": "gpu[10-12]", "SLURM_JOB_NAME": "faces",
           "PYTHON": sys.executable}
    r = sbatch(env, "--config", "configs/celeba64.toml", "data.root=/data/celeba")
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.split()
    assert cmd[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert cmd[cmd.index("-m") + 1] == "fastdcgan.torchrun"  # torchrun, without a traceback when scancelled
    for part in ("--nnodes=3", "--nproc_per_node=4", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu10:24242",
                 "--rdzv_id=4242", "fastdcgan.train", "train.run_dir=runs/faces-4242",
                 "data.root=/data/celeba"):
        assert part in cmd, part
    assert "device=cpu" not in cmd


def test_a_requeued_job_launches_the_same_run_under_the_same_rendezvous():
    """scontrol requeue (the time-limit warning, a preemption) starts the job again under its id. What
    SLURM changes then (the restart count, the nodes, the time it started) must change nothing in the
    command but the first node's address: the run directory is the one the job resumes in (another
    would start the run afresh), the rendezvous id the one the job's nodes meet under."""
    env = outside_slurm(DRY_RUN="1", SLURM_JOB_ID="4242", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4",
                        SLURM_JOB_NODELIST="gpu[10-11]", SLURM_JOB_NAME="faces")

    def command(**changed) -> list[str]:
        r = sbatch({**env, **changed}, "data.root=/data/celeba")
        assert r.returncode == 0, r.stderr
        return [a for a in r.stdout.split() if not a.startswith("--rdzv_endpoint=")]
    first = command()
    assert "train.run_dir=runs/faces-4242" in first and "--rdzv_id=4242" in first
    for requeued in ({"SLURM_RESTART_COUNT": "1"},
                     {"SLURM_RESTART_COUNT": "3", "SLURM_JOB_NODELIST": "gpu[20,31]",
                      "SLURMD_NODENAME": "gpu20", "SLURM_JOB_START_TIME": "1796567890"}):
        assert command(**requeued) == first, requeued


def test_sbatch_script_on_a_cpu_only_partition():
    """sbatch --gpus-per-node=0 --cpus-per-task=8 with PROCS_PER_NODE=2: two CPU workers of 4 threads."""
    env = outside_slurm("GPUS_PER_NODE", "OMP_NUM_THREADS", DRY_RUN="1", SLURM_JOB_ID="7", SLURM_NNODES="1",
                        SLURM_GPUS_PER_NODE="0", SLURM_CPUS_PER_TASK="8", SLURM_JOB_NODELIST="cpu1",
                        PROCS_PER_NODE="2")
    r = sbatch(env, "data.root=/data/celeba")
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.split()
    assert cmd[cmd.index("env") + 1] == "OMP_NUM_THREADS=4"  # torchrun would give each worker 1
    assert "--nproc_per_node=2" in cmd
    assert cmd.index("device=cpu") < cmd.index("data.root=/data/celeba")  # an argument to sbatch wins
    r = sbatch({**env, "PROCS_PER_NODE": ""})
    assert "--nproc_per_node=1" in r.stdout.split() and "OMP_NUM_THREADS=8" in r.stdout.split()



def test_the_readmes_dry_run_works_outside_slurm():
    env = outside_slurm("DRY_RUN", "GPUS_PER_NODE", "PROCS_PER_NODE")

    def run(extra):
        return sbatch({**env, **extra}, "data.root=/data/celeba")

    r = run({"DRY_RUN": "1"})
    assert r.returncode == 0, r.stderr
    assert "job id 0 stands in" in r.stderr
    cmd = r.stdout.split()
    # one worker per GPU the script's header asks for (what sbatch would give the job), not 1
    gpus = re.search(r"^#SBATCH --gpus-per-node=(\d+)$", SBATCH.read_text(), re.MULTILINE)[1]
    assert int(gpus) > 1 and f"--nproc_per_node={gpus}" in cmd
    for part in ("--nnodes=1", "--rdzv_endpoint=localhost:20000", "train.run_dir=runs/fastdcgan-0",
                 "data.root=/data/celeba"):
        assert part in cmd, part
    r = run({})  # a real launch still needs sbatch's job id
    assert r.returncode == 1 and "run this with sbatch" in r.stderr


def test_fid_during_two_process_training(celeba, tmp_path, tiny_fid_net):
    """Every rank evaluates its share; a new best FID checkpoints on every rank; rank 0 writes; a launch
    resumed at a step whose score is pending scores it on every rank."""
    run = tmp_path / "run"
    proc = torchrun("-m", "fastdcgan.train", *tiny_args(celeba, run, train__batch_size=4, train__max_steps=8,
                                                         ckpt__every=3, fid__every=3, fid__n=16,
                                                         fid__batch=8, fid__weights=tiny_fid_net))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    fids = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "fid" in r]
    assert [r["step"] for r in fids] == [3, 6]
    assert [r["images"] for r in fids] == [24, 48]  # both ranks' images: 3 steps of 2 x 4
    best = json.loads((run / "checkpoints" / "best_fid.json").read_text())
    assert best["fid"] == min(r["fid"] for r in fids)
    assert checkpoint.load(run / "checkpoints" / "best_fid")["step"] == best["step"]
    # Killed after step 6's checkpoint and before its score: what that leaves. The next launch resumes
    # at 6 and scores it first, every rank (FID is a collective; on rank 0 alone it waits out the timeout).
    (run / "checkpoints" / "step_00000008.pt").unlink()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in rows if r["step"] < 6 or (r["step"] == 6 and "fid" not in r)]
    (run / "metrics.jsonl").write_text("".join(f"{json.dumps(r)}\n" for r in kept))
    proc = torchrun("-m", "fastdcgan.train", *tiny_args(celeba, run, train__batch_size=4, train__max_steps=8,
                                                         ckpt__every=3, fid__every=3, fid__n=16, fid__batch=8,
                                                         fid__weights=tiny_fid_net, train__timeout_s=60))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    again = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "fid" in r]
    assert [(r["step"], r["fid"]) for r in again] == [(r["step"], r["fid"]) for r in fids]


def test_a_resume_on_one_process_keeps_the_epoch_position(celeba, tmp_path, capsys):
    run = tmp_path / "run"
    proc = torchrun("-m", "fastdcgan.train", *tiny_args(celeba, run, train__batch_size=4, train__max_steps=3))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    s = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert (s["world"], s["epoch"], s["batch_in_epoch"]) == (2, 0, 3)  # 24 of 48 images seen

    # One process at batch 4 has 12 steps per epoch; 24 images seen puts it at batch 6, so the epoch
    # ends 6 steps later, at step 9 (not at 12 from batch 3, nor at 15 from batch 0).
    assert main(tiny_args(celeba, run, train__batch_size=4, train__max_steps=10)) == 0
    assert "at step 3 (epoch 1, after batch 6)" in capsys.readouterr().out
    s = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert (s["step"], s["epoch"], s["batch_in_epoch"]) == (10, 1, 1)


NOISE_WORKER = """
import sys, torch, torch.distributed as dist
from fastdcgan.train import Run, parse_args
run = Run(parse_args(sys.argv[2:])[0])
noise = []  # what G is given in the trainer's own step, on this rank
run.G.register_forward_pre_hook(lambda module, args: noise.append(args[0].detach().clone()))
run.gan.step(next(iter(run.loader.epoch(0))))
every = [None] * dist.get_world_size()
dist.all_gather_object(every, noise)
if run.main:
    torch.save(every, sys.argv[1])
# The Run's DDP wrappers hold the process group: free them before the group goes, so that gloo's
# threads are joined here and not during interpreter exit (where one may abort the process).
del run
dist.destroy_process_group()
"""


def test_each_rank_draws_its_own_noise(celeba, tmp_path):
    """The same noise on every rank would train G on one batch of fakes copied world-size times."""
    worker = tmp_path / "noise_worker.py"
    worker.write_text(NOISE_WORKER)
    proc = torchrun(worker, tmp_path / "noise.pt", *tiny_args(celeba, tmp_path / "run", train__batch_size=4))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    rank0, rank1 = torch.load(tmp_path / "noise.pt")
    assert len(rank0) == len(rank1) >= 1  # the G phase reuses the D phase's fakes: one G call per step
    assert all(not torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))


SYNC_BN_WORKER = """
import sys, torch, torch.distributed as dist
from fastdcgan.train import Run, parse_args
run = Run(parse_args(sys.argv[2:])[0])
batch = next(iter(run.loader.epoch(0)))
run.gan.step(batch)
stats = [b.detach().clone() for m in (run.G, run.D) for name, b in m.named_buffers()
         if "running_mean" in name]
every = [None] * dist.get_world_size()
dist.all_gather_object(every, {"stats": stats, "batch": batch.float().mean().item(),
                               "kinds": sorted({type(m).__name__ for m in run.D.modules()
                                                if "Norm" in type(m).__name__})})
if run.main:
    torch.save(every, sys.argv[1])
# The Run's DDP wrappers hold the process group: free them before the group goes, so that gloo's
# threads are joined here and not during interpreter exit (where one may abort the process).
del run
dist.destroy_process_group()
"""


def test_sync_bn_reaches_the_trainers_models(celeba, tmp_path):
    """model.sync_bn=true: BatchNorm statistics over both ranks' batches, so after a step the running
    statistics agree on both ranks although each rank saw other images (and G other noise)."""
    worker = tmp_path / "sync_bn_worker.py"
    worker.write_text(SYNC_BN_WORKER)
    proc = torchrun(worker, tmp_path / "stats.pt", *tiny_args(celeba, tmp_path / "run", train__batch_size=4,
                                                                 model__sync_bn="true"))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    rank0, rank1 = torch.load(tmp_path / "stats.pt")
    assert rank0["batch"] != rank1["batch"]  # each rank trained on its own images
    assert "BatchNorm2d" not in rank0["kinds"]  # every BatchNorm of D was converted
    assert len(rank0["stats"]) >= 4
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(rank0["stats"], rank1["stats"], strict=True))


KNOWN_PEAK = """import sys
from fastdcgan import perf, train
perf.peak_flops = lambda device, precision: 1e12  # a device with a known peak, as a listed GPU has
sys.exit(train.main(sys.argv[1:]))
"""


def test_the_trainer_gives_mfu_against_the_peak_of_every_process_it_runs(celeba, tmp_path):
    """The trainer's side of Log's `devices`: with a known peak, MFU per img/s halves from one process
    to two, since img/s counts both processes' images and their two devices' peaks add up."""
    script = tmp_path / "known_peak.py"
    script.write_text(KNOWN_PEAK)
    args = tiny_args(celeba, tmp_path / "one", train__batch_size=4, train__max_steps=4)
    assert subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True).returncode == 0
    proc = torchrun(script, *tiny_args(celeba, tmp_path / "two", train__batch_size=4, train__max_steps=4))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out

    def mfu_per_image_per_s(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["mfu"] / r["img_per_s"] for r in rows if "mfu" in r}
    one, two = mfu_per_image_per_s(tmp_path / "one"), mfu_per_image_per_s(tmp_path / "two")
    assert len(one) >= 1 and len(two) >= 1
    assert max(two) == pytest.approx(min(one) / 2, rel=1e-6) and max(one) == pytest.approx(min(one), rel=1e-6)
