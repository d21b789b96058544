"""Each fast switch trains the same model as the eager fp32 NCHW step.

Tolerances, from what the switches change (observed figures measured on this CPU, 6 steps):
- channels_last and compile in fp32 only reorder float sums: relative error ~1e-7 per op. Losses
  agree to 1e-5 and parameters to 1e-6 (observed: 7e-7 and 1.2e-7). One Adam step moves a weight
  by up to lr = 2e-4, so a variant that skipped or doubled an update would miss by 200x the bound.
- bf16 keeps 8 mantissa bits (relative error 4e-3 per op). Losses agree to 1e-2 (observed 1.8e-3);
  parameters on average to lr / 2 (observed mean 5.7e-5), far below what a missing update gives.
"""
import pytest
import torch

from conftest import needs_cuda, tiny_args, weights
from fastdcgan import checkpoint
from fastdcgan.model import build_models
from fastdcgan.step import GANStep, StepOptions, make_ema, make_optimizers
from fastdcgan.train import main

STEPS, LR = 6, 2e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each test's compiled optimizers start with their own cache entries


def build_step(device="cpu", channels_last=False, compile="off", amp=None, graphs=False, d_dropout=0.0,
               **options) -> GANStep:
    """The tiny models' step, from seed 0; options: the step's other StepOptions fields."""
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32, d_dropout)
    ema = make_ema(G) if "ema_decay" in options else None
    fmt = torch.channels_last if channels_last else torch.preserve_format
    G.to(device, memory_format=fmt)
    D.to(device, memory_format=fmt)
    opt_g, opt_d = make_optimizers(G, D, LR, LR, (0.5, 0.999), compiled=compile != "off", graphs=graphs)
    return GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, channels_last=channels_last, compile=compile,
                                                   amp_dtype=amp, cuda_graphs=graphs, **options), ema=ema)


def train(device="cpu", channels_last=False, compile="off", amp=None, graphs=False, noise_seed=100,
          d_dropout=0.0, **options):
    """STEPS steps of the tiny models on fixed batches; options: the step's other StepOptions fields."""
    gan = build_step(device, channels_last, compile, amp, graphs, d_dropout, **options)
    G, D, ema = gan.G, gan.D, gan.ema
    losses = []
    for k in range(STEPS):
        batch = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(k))
        torch.manual_seed(noise_seed + k)
        gan.step(batch.to(device))
        m = gan.read()
        losses.append([m["loss_d"], m["loss_g"]])
    nets = [G, D, *([ema] if ema is not None else [])]
    params = torch.cat([p.detach().float().flatten().cpu() for net in nets for p in net.parameters()])
    train.last = gan  # for tests that look inside (the fp16 scaler)
    return torch.tensor(losses), params


@pytest.fixture(scope="module")
def eager():
    return train()


def check(result, eager, loss_tol, param_max=None, param_mean=None):
    (losses, params), (ref_losses, ref_params) = result, eager
    assert (losses - ref_losses).abs().max() < loss_tol
    diff = (params - ref_params).abs()
    if param_max is not None:
        assert diff.max() < param_max
    if param_mean is not None:
        assert diff.mean() < param_mean


def test_tolerances_tell_a_different_run_apart(eager):
    """Other noise, same everything else: must fail the fp32 and the bf16 bounds alike."""
    losses, params = train(noise_seed=7)
    diff = (params - eager[1]).abs()
    assert diff.max() > 1e-6 and diff.mean() > LR / 2 / 10
    assert (losses - eager[0]).abs().max() > 1e-5


def test_channels_last_matches_eager(eager):
    check(train(channels_last=True), eager, loss_tol=1e-5, param_max=1e-6)


def test_compile_matches_eager(eager):
    check(train(compile="default"), eager, loss_tol=1e-5, param_max=1e-6)


def test_bf16_tracks_eager(eager):
    check(train(amp=torch.bfloat16), eager, loss_tol=1e-2, param_mean=LR / 2)


def test_all_cpu_switches_together_track_eager(eager):
    check(train(channels_last=True, compile="default", amp=torch.bfloat16), eager, loss_tol=1e-2,
          param_mean=LR / 2)


# Every StepOptions field that says what the step computes, changed from its default at once (two sets:
# the losses' own fields exclude each other); the others choose how it runs: the switches under test.
HOW_IT_RUNS = {"nz", "amp_dtype", "channels_last", "compile", "cuda_graphs", "distributed"}
EVERY_OPTION = [
    {"loss": "lsgan", "real_label": 0.9, "d_steps": 2, "g_steps": 2, "r1_gamma": 1.0, "r1_every": 2,
     "augment": "translation,cutout", "ema_decay": 0.9, "ema_warmup": False, "d_dropout": 0.3},
    {"loss": "wgan-gp", "gp_lambda": 5.0, "augment": "color", "ema_decay": 0.5},
]


def test_every_option_is_in_the_switch_comparison():
    """A step option added without a place here fails by name: the switches must be compared with it on."""
    from dataclasses import fields
    changed = {k for opts in EVERY_OPTION for k in opts} - {"d_dropout"}
    assert {f.name for f in fields(StepOptions)} - HOW_IT_RUNS == changed


@pytest.mark.parametrize("options", EVERY_OPTION, ids=lambda o: o["loss"])
def test_the_cpu_switches_keep_every_option(options):
    """Each switch, with every option changed from its default, trains what eager trains with the
    same options: a switch whose path dropped an option (a loss, a penalty's pace, the EMA, dropout)
    lands far off. Inductor draws dropout's masks with eager's generator here, as eager does."""
    import torch._inductor.config
    reference = train(**options)
    assert (reference[1] - train(**options, noise_seed=7)[1]).abs().max() > 1e-4  # the options train
    check(train(channels_last=True, **options), reference, loss_tol=1e-4, param_max=5e-5)
    with torch._inductor.config.patch(fallback_random=True):
        check(train(compile="default", **options), reference, loss_tol=1e-4, param_max=5e-5)
    check(train(amp=torch.bfloat16, **options), reference, loss_tol=5e-2, param_mean=LR / 2)


def every_tensor(gan: GANStep) -> dict[str, torch.Tensor]:
    """Every tensor a step holds, by where it is: its modules' weights and buffers, its optimizers' state,
    and each tensor in its attributes and theirs (the log's sums, the histograms, the EMA's count), found
    by walking them: a tensor added to the step is compared with no change here."""
    found, seen = {}, set()

    def walk(x, path):
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            found[path] = x
        elif isinstance(x, torch.nn.Module):
            for k, v in x.state_dict(keep_vars=True).items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, torch.optim.Optimizer):
            params = [p for group in x.param_groups for p in group["params"]]
            for i, p in enumerate(params):
                walk(x.state.get(p, {}), f"{path}.state[{i}]")
        elif isinstance(x, dict):
            for i, (k, v) in enumerate(x.items()):
                walk(v, f"{path}[{k if isinstance(k, str) else i}]")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif type(x).__module__.startswith("fastdcgan") and hasattr(x, "__dict__"):
            for k, v in vars(x).items():
                walk(v, f"{path}.{k}")

    walk(gan, "step")
    return found


def differing(a: GANStep, b: GANStep) -> list[str]:
    ta, tb = every_tensor(a), every_tensor(b)
    assert ta.keys() == tb.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


@pytest.mark.parametrize("options", [{}, *EVERY_OPTION], ids=lambda o: o.get("loss", "defaults"))
def test_the_capture_undoes_its_warm_up_in_every_tensor_the_step_holds(options):
    """A CUDA graph is captured after three warm-up steps, whose effect must be undone or the captured run
    starts three steps ahead: its weights, Adam's moments, the EMA and its warm-up count, the log's sums,
    the D-output histograms. The undoing (GANStep._undoing) runs on CPU here: after it, a step must leave
    every tensor the step holds as the same step from a fresh start does (a tensor left out of
    _training_state keeps the warm-up's changes)."""
    r1 = options.get("r1_gamma", 0) > 0
    batch = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    warmed, fresh, not_undone = (build_step(**options) for _ in range(3))
    torch.manual_seed(5)
    warmed._undoing(lambda: [warmed._step(batch, r1) for _ in range(3)])
    torch.manual_seed(5)
    for _ in range(3):
        not_undone._step(batch, r1)
    for gan in (warmed, fresh, not_undone):
        torch.manual_seed(100)
        gan._step(batch, r1)
    assert differing(warmed, fresh) == []
    # the comparison sees the warm-up wherever it acts: without the undoing every tensor the step holds
    # differs (the EMA's count moves only with its warm-up on)
    counted = set(every_tensor(fresh))
    if fresh.ema is None or not fresh.options.ema_warmup:
        counted.remove("step.ema_updates")
    assert set(differing(not_undone, fresh)) == counted


def test_fp16_tracks_eager_within_its_skipped_steps(eager):
    """The GradScaler starts at 2^16 and halves its scale at each step whose gradients overflow,
    skipping that update. Each skip leaves weights about one Adam step (lr) from eager, so the
    bound is lr per skipped step plus the fp16 rounding (half an lr, as for bf16)."""
    result = train(amp=torch.float16)
    skipped = round(torch.log2(torch.tensor(2.0 ** 16 / train.last.scaler.get_scale())).item())
    assert 1 <= skipped < STEPS  # it did skip, and it did train
    check(result, eager, loss_tol=0.1, param_mean=LR * (skipped + 0.5))


def test_fp16_scaler_state_is_checkpointed(celeba, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, precision="fp16", train__max_steps=3)) == 0
    scaler = checkpoint.load(checkpoint.latest(run / "checkpoints"))["gan"]["scaler"]
    assert scaler["scale"] < 2.0 ** 16  # it has skipped overflowing steps and backed off
    assert main(tiny_args(celeba, run, precision="fp16", train__max_steps=5)) == 0


def test_channels_last_step_has_no_layout_conversions():
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, 32)
    G.to(memory_format=torch.channels_last)
    D.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(G, D, LR, LR, (0.5, 0.999), compiled=False, graphs=False)
    gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, channels_last=True))
    batch = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    gan.step(batch)
    with torch.profiler.profile() as prof:
        gan.step(batch)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::contiguous" not in ops and "aten::clone" not in ops, sorted(ops)


def test_no_recompiles_after_warmup_over_epochs_samples_and_checkpoints(celeba, tmp_path):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    assert main(tiny_args(celeba, tmp_path / "a", compile="default", train__max_steps=2)) == 0
    after_warmup = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    counters.clear()
    # two epochs of 6 steps, with samples, logs and checkpoints every 2-4 steps and at epoch ends
    assert main(tiny_args(celeba, tmp_path / "b", compile="default", log__every=1, sample__every=3,
                          ckpt__every=2)) == 0
    assert after_warmup > 0 and counters["stats"]["unique_graphs"] == after_warmup


def test_checkpoints_move_between_compiled_and_eager_runs(celeba, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(celeba, run, compile="default", train__max_steps=3)) == 0
    last = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert not any(k.startswith("_orig_mod.") for k in last["G"])
    # so are the weights files: the plain networks' (the tutorial's keys), not the compiled wrappers'
    for name, net in (("generator.pth", "G"), ("discriminator.pth", "D")):
        saved = weights(run / name)
        assert saved.keys() == last[net].keys()
        assert all(torch.equal(v, last[net][k]) for k, v in saved.items())
    assert main(tiny_args(celeba, run, train__max_steps=5)) == 0  # eager resumes the compiled run
    assert main(tiny_args(celeba, run, compile="default", train__max_steps=7)) == 0  # and back
    assert checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"] == 7


def test_compiled_resume_is_exact(celeba, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(tiny_args(celeba, whole, compile="default", train__max_steps=7)) == 0
    assert main(tiny_args(celeba, split, compile="default", train__max_steps=4)) == 0
    assert main(tiny_args(celeba, split, compile="default", train__max_steps=7)) == 0
    a, b = weights(whole / "generator.pth"), weights(split / "generator.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cuda_graphs_refused_with_fp16(capsys):
    assert main(["cuda_graphs=true", "precision=fp16", "--dry-run"]) == 2
    assert "precision=bf16" in capsys.readouterr().err


def test_cuda_graphs_is_ignored_on_cpu_with_a_note(celeba, tmp_path, capsys):
    assert main(tiny_args(celeba, tmp_path / "r", cuda_graphs="true", train__max_steps=2)) == 0
    assert "cuda_graphs off (needs CUDA)" in capsys.readouterr().out


@needs_cuda
def test_cuda_eager_matches_cpu_closely(eager, monkeypatch):
    """In IEEE fp32: cuDNN's default TF32 convolutions alone would differ from the CPU by ~6e-4 in
    the loss (emulated on CPU), past this bound."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check(train(device="cuda"), eager, loss_tol=1e-4, param_mean=LR / 20)


@needs_cuda
def test_cuda_graphs_match_eager_cuda():
    ref = train(device="cuda")
    check(train(device="cuda", graphs=True), ref, loss_tol=1e-5, param_max=1e-6)


@needs_cuda
def test_cuda_graphs_replay_the_ema_and_its_warmup():
    """The EMA update and its warm-up counter run inside the captured graph: after the same steps the
    average is eager's, and the counter counted every replay (the capture's own warm-up steps undone)."""
    def ema_after(graphs: bool):
        torch.manual_seed(0)
        G, D = (m.cuda() for m in build_models(16, 8, 8, 32))
        opt_g, opt_d = make_optimizers(G, D, LR, LR, (0.5, 0.999), compiled=False, graphs=graphs)
        ema = make_ema(G)
        gan = GANStep(G, D, opt_g, opt_d, StepOptions(nz=16, ema_decay=0.999, cuda_graphs=graphs), ema=ema)
        for k in range(STEPS):
            batch = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(k))
            torch.manual_seed(100 + k)
            gan.step(batch.cuda())
        return torch.cat([p.detach().flatten() for p in ema.parameters()]).cpu(), gan.ema_updates.item()

    (eager_ema, eager_n), (graph_ema, graph_n) = ema_after(False), ema_after(True)
    assert eager_n == graph_n == STEPS
    torch.testing.assert_close(graph_ema, eager_ema, rtol=0, atol=1e-6)


@needs_cuda
def test_cuda_all_switches_track_eager_cuda():
    ref = train(device="cuda")
    check(train(device="cuda", channels_last=True, compile="default", amp=torch.bfloat16, graphs=True), ref,
          loss_tol=1e-2, param_mean=LR / 2)


@needs_cuda
@pytest.mark.parametrize("options", EVERY_OPTION, ids=lambda o: o["loss"])
def test_cuda_graphs_keep_every_option(options):
    """The captured step (both kinds, with lazy R1's penalty and without) with every option changed
    trains what eager CUDA trains with the same options."""
    reference = train(device="cuda", **options)
    check(train(device="cuda", graphs=True, **options), reference, loss_tol=1e-4, param_max=5e-5)


MODES = {"eager": {}, "compile": {"compile": "default"}, "fp16": {"precision": "fp16"},
         "graphs": {"cuda_graphs": "true", "compile": "default", "precision": "bf16"}}


def optimizer_form(run) -> list:
    """Each optimizer's flags, its lr's kind and where its step counters live."""
    out = []
    for opt in (run.opt_g, run.opt_d):
        g = opt.param_groups[0]
        steps = {str(s["step"].device) for s in opt.state.values()}
        out.append(({k: g.get(k) for k in ("foreach", "fused", "capturable")}, type(g["lr"]).__name__, steps))
    return out


def resume_across_modes(tmp_path, saved_mode, resumed_mode, device):
    """A run in `saved_mode` checkpoints; one in `resumed_mode` resumes it, with the optimizer form that
    mode builds (load_state_dict would impose the saved run's flags), and trains on."""
    from fastdcgan import config
    from fastdcgan.train import Run
    data = tmp_path / "celeba"
    from conftest import make_celeba
    make_celeba(data, 24)

    def args(run_dir, mode, steps):
        return tiny_args(data, run_dir, device=device, train__max_steps=steps, **MODES[mode])

    assert main(args(tmp_path / "saved", saved_mode, 2)) == 0
    fresh = Run(config.build(None, args(tmp_path / "fresh", resumed_mode, 3)))
    fresh.gan.step(next(iter(fresh.loader.epoch(0))))  # its Adam state exists after one step
    resumed = Run(config.build(None, args(tmp_path / "saved", resumed_mode, 4)))
    assert resumed.step == 2
    assert optimizer_form(resumed) == optimizer_form(fresh)
    assert resumed.fit() == 0 and resumed.step == 4


@pytest.mark.parametrize("saved", ["eager", "compile", "fp16"])
@pytest.mark.parametrize("resumed", ["eager", "compile", "fp16"])
def test_resume_across_modes_keeps_the_optimizer_form_of_the_new_mode(tmp_path, saved, resumed):
    if "compile" in (saved, resumed) and saved == resumed:
        pytest.skip("same mode: test_compiled_resume_is_exact")
    resume_across_modes(tmp_path, saved, resumed, "cpu")


@needs_cuda
@pytest.mark.parametrize("saved", ["eager", "compile", "graphs"])
@pytest.mark.parametrize("resumed", ["eager", "compile", "graphs"])
def test_cuda_resume_across_modes_keeps_the_optimizer_form_of_the_new_mode(tmp_path, saved, resumed):
    if saved == resumed:
        pytest.skip("same mode: the resume tests of each mode")
    resume_across_modes(tmp_path, saved, resumed, "cuda")


@needs_cuda
def test_cuda_graph_capture_tolerates_another_thread_using_cuda():
    """The DataLoader's pin-memory thread and DALI's workers make CUDA calls while the step is being
    captured; with the default (global) capture mode such a call invalidates the capture."""
    import threading
    stop = threading.Event()

    def pin_memory_thread():
        side = torch.cuda.Stream()
        while not stop.is_set():
            host = torch.empty(1 << 20, dtype=torch.uint8).pin_memory()
            with torch.cuda.stream(side):
                host.to("cuda", non_blocking=True)
            torch.cuda.Event().query()

    worker = threading.Thread(target=pin_memory_thread, daemon=True)
    worker.start()
    try:
        ref = train(device="cuda")
        check(train(device="cuda", graphs=True), ref, loss_tol=1e-5, param_max=1e-6)
    finally:
        stop.set()
        worker.join()
