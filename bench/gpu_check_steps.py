"""The parts of bench/gpu_check.py that run the test suites and check the training step.

cuda-tests (pytest -m cuda), combos (the step under each precision/layout/compile/graphs mix against
eager fp32, each combination in a process of its own: combo_main), resume (a checkpoint of one mode
resumed in another) and autotune (the max-autotune combos, run last). What they share with the other
parts (Ctx, run_cmd, the results) is in gpu_check_common.py.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from gpu_check_common import (PY, REPO, SELF, Ctx, clip, error_line, failed, last_meaningful, ok,
                              pytest_counts, run_cmd, skipped)


# ----- cuda-tests -----

def cuda_tests(ctx: Ctx) -> dict:
    env = dict(os.environ, TORCH_LOGS="recompiles")
    timeout = ctx.left() - 2
    # the resume-across-modes tests are the resume part's (several at once)
    rc, lines = run_cmd([PY, "-m", "pytest", "tests/", "-m", "cuda", "-k", "not resume_across_modes", "-q",
                         "-p", "no:cacheprovider"], timeout, env=env)
    if rc is None:
        return failed(f"timeout after {timeout:.0f} s: {last_meaningful(lines)}")
    if rc == 5:
        return skipped("no test carries the cuda marker (pytest -m cuda selected nothing)")
    n = pytest_counts(lines)
    recompiles = sum("Recompiling function" in line for line in lines)
    figure = (f"{n.get('passed', 0)} passed, {n.get('failed', 0) + n.get('error', 0)} failed; "
              f"{recompiles} recompiles")
    details = {"counts": n, "recompile_lines": recompiles,
               "failures": [clip(x, 300) for x in lines if x.startswith(("FAILED ", "ERROR "))]}
    return ok(figure, **details) if rc == 0 else failed(error_line(lines), figure, **details)


# ----- combos -----

LR, BETAS = 2e-4, (0.5, 0.999)
EMA_DECAY = 0.5   # not 0.999: after 6 steps a missed EMA update must show beside the tolerance
STEPS, WARMUP = 6, 3
NOT_RUN = "not run"  # a combo the part's time did not reach
SIZES = {True: dict(image_size=64, ngf=32, ndf=32, batch=64, nz=100),   # CUDA
         False: dict(image_size=32, ngf=8, ndf=8, batch=8, nz=16)}      # CPU: the tests' tiny model


@dataclass(frozen=True)
class Combo:
    precision: str = "fp32"
    channels_last: bool = True
    compile: str = "off"
    graphs: bool = False
    d_steps: int = 1
    g_steps: int = 1
    ema: bool = False

    @property
    def name(self) -> str:
        compiled = {"off": "", "default": "compile", "max-autotune": "max-autotune"}[self.compile]
        mode = "+".join(filter(None, [compiled, "graphs" if self.graphs else ""])) or "eager"
        extra = (" d_steps=2" if self.d_steps > 1 else "") + (" g_steps=2" if self.g_steps > 1 else "")
        return (f"{self.precision} {'CL' if self.channels_last else 'NCHW'} {mode}{extra}"
                f"{' ema' if self.ema else ''}")

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name)

    def reference(self) -> Combo:
        """Eager fp32 NCHW with the same updates per step and EMA: what this combo must reproduce."""
        return replace(self, precision="fp32", channels_last=False, compile="off", graphs=False)


def combo_list(cuda: bool) -> list[Combo]:
    """The combinations worth their time, not the full product (3 x 2 x 3 x 2 x extras):
    - NCHW only in eager fp32 and bf16: the fast paths all run channels_last (the default);
    - fp16 never with graphs (GANStep refuses it: the scaler's overflow check) nor max-autotune;
    - max-autotune only in bf16, with and without graphs: it is the GPU preset's precision, and its
      autotuning costs minutes per combo;
    - d_steps=2, g_steps=2 and EMA on the whole fast path (bf16, compile, graphs), where extra
      loops, fresh noise and in-graph foreach updates are likeliest to break.
    On CPU: fp32 only (no native bf16 there: ~20x slower), compile off/default, no graphs; a handful."""
    if not cuda:
        return [Combo(), Combo(compile="default"), Combo(d_steps=2), Combo(g_steps=2),
                Combo(compile="default", ema=True)]
    fast = Combo("bf16", True, "default", True)
    return [Combo(channels_last=False), Combo(), Combo("bf16", channels_last=False), Combo("bf16"),
            Combo("fp16"), Combo(graphs=True), Combo("bf16", graphs=True),
            Combo(compile="default"), Combo("bf16", compile="default"), Combo("fp16", compile="default"),
            Combo(compile="default", graphs=True), fast,
            replace(fast, d_steps=2), replace(fast, g_steps=2), replace(fast, ema=True)]


def autotune_list(cuda: bool) -> list[Combo]:
    """max-autotune, in a part of its own at the end: its autotuning takes minutes per combo, and the
    other combos' answers should not wait for it. bf16, the GPU preset's precision, with and without
    the whole-step capture (inductor's own CUDA graphs are off in both: step.compile_mode)."""
    if not cuda:
        return []
    return [Combo("bf16", compile="max-autotune"), Combo("bf16", compile="max-autotune", graphs=True)]


def combos(ctx: Ctx) -> dict:
    return run_combos(ctx, combo_list(ctx.cuda))


def autotune(ctx: Ctx) -> dict:
    todo = autotune_list(ctx.cuda)
    return run_combos(ctx, todo) if todo else skipped("no CUDA")


def run_combos(ctx: Ctx, todo: list[Combo]) -> dict:
    folder = ctx.work / "combos"
    folder.mkdir(parents=True, exist_ok=True)
    # Compiling is CPU work: 4 at once on the 16-core GPU machine, one at a time on 2 cores.
    parallel, limit = (4, 240) if ctx.cuda else (1, 120)
    # Several at once: the slowest start first, so they overlap the rest. One at a time: the list's order.
    cost = {"max-autotune": 3, "default": 2, "off": 1}
    order = sorted(todo, key=lambda c: cost[c.compile], reverse=True) if parallel > 1 else todo

    def one(c: Combo) -> dict:
        timeout = min(limit, ctx.left() - 2)
        if timeout < 10:
            return {"ok": False, "error": NOT_RUN}
        result_file = folder / f"{c.slug}.json"
        result_file.unlink(missing_ok=True)
        t = time.monotonic()
        rc, lines = run_cmd([PY, SELF, "--combo", c.slug, "--work", ctx.work], timeout,
                            log=folder / f"{c.slug}.log")
        if rc is None and timeout < limit:  # the part's time ran out, not the combo's own limit
            r = {"ok": False, "error": NOT_RUN + f": stopped after {timeout:.0f} s, the part's time left"}
        elif rc is None:
            r = {"ok": False, "error": f"timeout after {timeout:.0f} s"}
        elif rc != 0 or not result_file.exists():
            r = {"ok": False, "error": f"exit {rc}: {error_line(lines)}"}
        else:
            r = json.loads(result_file.read_text())
        r["seconds"] = round(time.monotonic() - t, 1)
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {c.name} ({r['seconds']} s) {r.get('error', '')}", flush=True)
        if not r["ok"]:
            r["log_tail"] = lines[-15:]
            print("".join(f"   | {x}\n" for x in lines[-15:]), flush=True)
        return r

    with ThreadPoolExecutor(parallel) as pool:
        results = dict(zip([c.name for c in order], pool.map(one, order), strict=True))
    results = {c.name: results[c.name] for c in todo}
    for line in combo_table(results):
        print(line)
    good = sum(r["ok"] for r in results.values())
    figure = f"{good}/{len(todo)} combos ok"
    if good == len(todo):
        return ok(figure, combos=results)
    bad = [f"{name}: {clip(r['error'], 90)}" for name, r in results.items()
           if not r["ok"] and not r["error"].startswith(NOT_RUN)]
    not_run = sum(r.get("error", "").startswith(NOT_RUN) for r in results.values())
    why = ((f"{len(bad)} combos failed: " + "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else ""))
           if bad else "")
    # out_of_time: the only failure is work the part's time did not reach (gpu_check.ran_out_of_time)
    return failed("; ".join(filter(None, [why, f"{not_run} not run (the part's time was spent)"
                                               if not_run else ""])),
                  figure, combos=results, out_of_time=not bad)


def combo_table(results: dict) -> list[str]:
    def num(r, key, fmt=".1e"):
        return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else "-"
    lines = []
    for name, r in results.items():
        if "loss_diff" not in r:  # it crashed, timed out or did not run: no numbers
            lines.append(f"{'--  ' if r.get('error') == NOT_RUN else 'FAIL'} {name:<34} "
                         f"{clip(r.get('error'), 160)}")
            continue
        graphs = f"{r['graphs_after_warmup']}/{r['graphs_total']}" if "graphs_total" in r else "-"
        lines.append(f"{'ok  ' if r['ok'] else 'FAIL'} {name:<34} loss {num(r, 'loss_diff')} "
                     f"param {num(r, 'param_mean')} "
                     f"[{num(r, 'param_max')}] graphs {graphs} syncs {len(r.get('syncs', []))} "
                     f"warm-up {num(r, 'warmup_s', '.1f')} s step {num(r, 'step_ms', '.1f')} ms"
                     + (f"  {clip(r['error'], 120)}" if r.get("error") else ""))
    return lines


def combo_main(work: Path, slug: str) -> int:
    """One combination, in its own process: its numbers to WORK/combos/SLUG.json."""
    import torch
    cuda = torch.cuda.is_available()
    combo = {c.slug: c for c in combo_list(cuda)}[slug]
    if not cuda:
        # CPU fp32's bounds (tolerances) hold where both layouts' convolutions round alike, which
        # depends on the kernels oneDNN picks for the thread count: at one thread (OMP_NUM_THREADS=1)
        # channels_last and NCHW differ by 2e-7 after one step, and g_steps=2's twelve Adam updates of
        # the batch-8 model grow that to 1e-3 in the loss (measured), a divergence of the training, not
        # a missed update. Two threads, as CI's machine has, whatever the environment says.
        torch.set_num_threads(2)
    try:
        result = check_combo(combo, cuda)
    except Exception as e:
        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result = {"ok": False, "error": clip(f"{type(e).__name__}: {first}", 300)}
    print(json.dumps(result, default=str))
    (work / "combos" / f"{slug}.json").write_text(json.dumps(result, default=str))
    return 0


def tolerances(c: Combo, cuda: bool, skipped_updates: int) -> tuple[float, str, float]:
    """(loss, which parameter statistic, its bound) against eager fp32 NCHW; reasons in
    tests/test_fast_step.py. One Adam step moves a weight by up to lr, so a missed or doubled update
    shows as ~lr, far past lr / 2 on average."""
    if c.precision == "fp16":  # each overflowing update the GradScaler skipped leaves weights ~lr away
        return 0.1, "param_mean", LR * (skipped_updates + 0.5)
    if c.precision == "bf16":
        return 5e-2, "param_mean", LR / 2
    if cuda:  # fp32 convolutions run in TF32 under cuDNN's default: close, not bit-exact
        return 1e-2, "param_mean", LR / 2
    return 1e-5, "param_max", 1e-6  # CPU fp32: the reorderings of float sums only


def check_combo(c: Combo, cuda: bool) -> dict:
    import torch
    ref = train_combo(c.reference(), cuda, watch_syncs=False)
    got = train_combo(c, cuda, watch_syncs=cuda)
    bad = [k for k, row in enumerate(got["losses"].tolist()) if not all(map(math.isfinite, row))]
    skipped_updates = round(math.log2(2.0 ** 16 / got["scale"])) if got["scale"] else 0
    loss_tol, param_key, param_tol = tolerances(c, cuda, skipped_updates)
    diff = (got["params"] - ref["params"]).abs()
    r = {"ok": True, "loss_diff": (got["losses"] - ref["losses"]).abs().max().item(), "loss_tol": loss_tol,
         "param_mean": diff.mean().item(), "param_max": diff.max().item(), "param_check": param_key,
         "param_tol": param_tol, "graphs_after_warmup": got["graphs_after_warmup"],
         "graphs_total": got["graphs_total"],
         "syncs": got["syncs"], "warmup_s": got["warmup_s"], "step_ms": got["step_ms"],
         "losses": got["losses"][-1].tolist(), "device": torch.cuda.get_device_name() if cuda else "cpu"}
    if got["scale"]:
        r["skipped_updates"] = skipped_updates
    if got["ema"] is not None:
        r["ema_mean"] = (got["ema"] - ref["ema"]).abs().mean().item()
    errors = []
    if bad:
        errors.append(f"non-finite loss at step {bad[0]}")
    if r["loss_diff"] > loss_tol:
        errors.append(f"loss diff {r['loss_diff']:.2e} > {loss_tol:.0e}")
    if r[param_key] > param_tol:
        errors.append(f"{param_key} diff {r[param_key]:.2e} > {param_tol:.1e}")
    if r.get("ema_mean", 0) > param_tol:
        errors.append(f"EMA mean diff {r['ema_mean']:.2e} > {param_tol:.1e}")
    if r["graphs_total"] != r["graphs_after_warmup"]:
        errors.append(f"recompiled after warm-up: {r['graphs_after_warmup']} -> {r['graphs_total']} graphs")
    if r["syncs"]:
        errors.append(f"{len(r['syncs'])} host syncs in a step, first at {r['syncs'][0]}")
    if errors:
        r.update(ok=False, error="; ".join(errors))
    return r


def train_combo(c: Combo, cuda: bool, watch_syncs: bool) -> dict:
    """STEPS steps from seed-0 weights on fixed uint8 NHWC batches, noise seeded 100 + k before step k
    (as tests/test_fast_step.py), reading the losses after each step. Steps after the warm-up run under
    CUDA's sync debug mode ("warn": every sync site is recorded, and the step completes, so the parity
    numbers stay meaningful where "error" would abort the step halfway)."""
    import torch
    from torch._dynamo.utils import counters

    from fastdcgan.model import build_models
    from fastdcgan.state import configure_backends
    from fastdcgan.step import GANStep, StepOptions, make_ema, make_optimizers

    device = torch.device("cuda" if cuda else "cpu")
    configure_backends(device)  # as the trainer runs it (cuDNN benchmark mode)
    s = SIZES[cuda]
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    G, D = build_models(s["nz"], s["ngf"], s["ndf"], s["image_size"])
    fmt = torch.channels_last if c.channels_last else torch.preserve_format
    G.to(device, memory_format=fmt)
    D.to(device, memory_format=fmt)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[c.precision]
    extra = {"amp_dtype": amp} if "amp_dtype" in inspect.signature(make_optimizers).parameters else {}
    opt_g, opt_d = make_optimizers(G, D, LR, LR, BETAS, compiled=c.compile != "off", graphs=c.graphs, **extra)
    ema = make_ema(G) if c.ema else None
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=s["nz"], amp_dtype=amp, channels_last=c.channels_last,
                                                  compile=c.compile, cuda_graphs=c.graphs, d_steps=c.d_steps,
                                                  g_steps=c.g_steps, ema_decay=EMA_DECAY), ema=ema)
    shape = (s["batch"], s["image_size"], s["image_size"], 3)
    batches = [torch.randint(0, 256, shape, dtype=torch.uint8,
                             generator=torch.Generator().manual_seed(k)).to(device)
               for k in range(STEPS)]
    losses, syncs = [], []
    t0 = time.perf_counter()
    for k, batch in enumerate(batches):
        if k == WARMUP:
            graphs_after_warmup, t1 = counters["stats"]["unique_graphs"], time.perf_counter()
        torch.manual_seed(100 + k)  # seeds the CUDA generators too
        if watch_syncs and k >= WARMUP:
            syncs += step_watching_syncs(gan, batch)
        else:
            gan.step(batch)
        m = gan.read()  # one host read per step, outside the watched region
        if not m:
            raise RuntimeError(f"gan.read() returned nothing after step {k}")
        losses.append([m["loss_d"], m["loss_g"]])
    t2 = time.perf_counter()

    def flat(*modules):
        return torch.cat([p.detach().float().flatten().cpu() for m in modules for p in m.parameters()])
    return {"losses": torch.tensor(losses), "params": flat(G, D),
            "ema": flat(ema) if ema is not None else None,
            "graphs_after_warmup": graphs_after_warmup, "graphs_total": counters["stats"]["unique_graphs"],
            "syncs": syncs, "warmup_s": round(t1 - t0, 2),
            "step_ms": round((t2 - t1) / (STEPS - WARMUP) * 1e3, 2),
            "scale": gan.scaler.get_scale() if gan.scaler.is_enabled() else None}


def step_watching_syncs(gan, batch) -> list[str]:
    """gan.step(batch) with CUDA's sync debug mode on; where each host sync happened: the op's Python
    line, and the last fastdcgan line on the stack."""
    import torch
    sites = []
    package = REPO / "fastdcgan"

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        ours = [f for f in traceback.extract_stack()[:-1]
                if Path(f.filename).resolve().is_relative_to(package)]
        via = (f" via {Path(ours[-1].filename).name}:{ours[-1].lineno} `{clip(ours[-1].line, 80)}`"
               if ours else "")
        sites.append(f"{Path(filename).parent.name}/{Path(filename).name}:{lineno}{via}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # called as each warning is raised, so the stack is still there
        torch.cuda.set_sync_debug_mode("warn")
        try:
            gan.step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


# ----- resume -----

def resume(ctx: Ctx) -> dict:
    """A checkpoint of one mode resumed in another, for every pair of modes (eager, compile, fp16 on
    CPU; eager, compile, graphs on CUDA): tests/test_fast_step.py's resume_across_modes tests, which
    train through the trainer's entry point and check that the resumed run has the optimizer form its
    own mode builds. Several at once where pytest-xdist is installed (the GPU machine's image has it)."""
    import importlib.util
    marker = "cuda" if ctx.cuda else "not cuda"
    cmd = [PY, "-m", "pytest", "tests/test_fast_step.py", "-k", "resume_across_modes", "-m", marker, "-q",
           "-p", "no:cacheprovider"]
    if ctx.cuda and importlib.util.find_spec("xdist"):
        cmd += ["-n", "3"]
    timeout = ctx.left() - 2
    rc, lines = run_cmd(cmd, timeout, env=dict(os.environ, TORCH_LOGS="recompiles"))
    if rc is None:
        return failed(f"timeout after {timeout:.0f} s: {last_meaningful(lines)}")
    n = pytest_counts(lines)
    figure = f"{n.get('passed', 0)} pairs ok, {n.get('failed', 0) + n.get('error', 0)} failed"
    details = {"counts": n, "failures": [clip(x, 300) for x in lines if x.startswith(("FAILED ", "ERROR "))]}
    return ok(figure, **details) if rc == 0 else failed(error_line(lines), figure, **details)
