"""fastdcgan.load_generator from every source, TorchScript and ONNX export, EMA weights."""
import json

import pytest
import torch

import fastdcgan
from fastdcgan import checkpoint
from fastdcgan.generate.cli import main
from fastdcgan.checkpoint import is_torchscript
from fastdcgan.generate.latent import seed_noise
from fastdcgan.model import fixed_noise
from test_generate_commands import vivid_generator



def test_load_generator_from_every_source(tiny_run):
    sources = [tiny_run, checkpoint.latest(tiny_run / "checkpoints"), tiny_run / "generator.pth"]
    gens = [fastdcgan.load_generator(s) for s in sources]
    assert all(g.nz == 16 and g.image_size == 32 and not g.training for g in gens)
    ref = gens[0].sample(4, seed=0)
    assert ref.shape == (4, 3, 32, 32)
    assert torch.equal(ref, gens[0].net(fixed_noise(4, 16, 0)))  # sample(n, seed) is the plain form's noise
    assert all(torch.equal(g.sample(4, seed=0), ref) for g in gens[1:])
    assert torch.equal(gens[0].sample_seeds([5]), gens[0].sample(1, seed=5))


# reading it as a user without fastdcgan would
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_torchscript_export_matches_eager(tiny_run, tmp_path, capsys):
    out = tmp_path / "g.pt"
    assert main(["export", "--checkpoint", str(tiny_run), "--out", str(out)]) == 0
    assert "matches the original" in capsys.readouterr().out and is_torchscript(out)
    eager, exported = fastdcgan.load_generator(tiny_run), fastdcgan.load_generator(out)
    assert not exported.eager and exported.nz == 16 and exported.image_size == 32
    z = seed_noise(range(8), 16)
    assert torch.allclose(exported(z), eager(z), atol=1e-6)
    extra = {"fastdcgan.json": ""}
    net = torch.jit.load(str(out), _extra_files=extra)  # without fastdcgan: the sizes are in the file
    meta = json.loads(extra["fastdcgan.json"])
    assert (meta["nz"], meta["image_size"], net.nz, net.image_size) == (16, 32, 16, 32)
    # as loaded by torch.jit.load alone (C++ too): in eval mode, so BatchNorm uses its running statistics
    # and an image does not depend on the others in its batch
    assert not net.training and torch.allclose(net(z), eager(z), atol=1e-6)
    assert main(["grid", "--checkpoint", str(out), "--seeds", "0-3", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["features", "--checkpoint", str(out), "--out", str(tmp_path / "f.png")]) == 2


def test_an_export_that_does_not_match_the_original_is_refused_and_not_kept(tiny_run, tmp_path, capsys,
                                                                            monkeypatch):
    """export draws seeds 0-3 from the file it wrote and from the original: an export that scripted other
    weights (here the last layer's 0.1 larger) ends with exit 2, the difference named, and what --out
    held before is left as it was."""
    from fastdcgan.generate import export
    copy = export._cpu_copy

    def off(net):
        net = copy(net)
        with torch.no_grad():
            list(net.parameters())[-1].add_(0.1)  # the last layer's weights
        return net
    monkeypatch.setattr(export, "_cpu_copy", off)
    out = tmp_path / "g.pt"
    out.write_bytes(b"an earlier export")
    assert main(["export", "--checkpoint", str(tiny_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "differs from the original by" in err and "not written" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"an earlier export" and sorted(tmp_path.iterdir()) == [out]  # nothing left


def test_a_generator_with_non_finite_output_is_not_exported(tiny_run, tmp_path, capsys):
    state = torch.load(tiny_run / "generator.pth", weights_only=True)
    next(iter(state.values())).fill_(float("nan"))  # the first layer's weights
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    out = tmp_path / "g.pt"
    assert main(["export", "--checkpoint", str(broken), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "non-finite images" in err and len(err.splitlines()) == 1 and not out.exists()


def test_onnx_export_refused_without_onnx(tiny_run, tmp_path, capsys, monkeypatch):
    # as on a machine without it
    monkeypatch.setattr("fastdcgan.generate.export.onnx_available", lambda: False)
    out = tmp_path / "g.onnx"
    assert main(["export", "--checkpoint", str(tiny_run), "--out", str(out)]) == 2
    assert "pip install onnx" in capsys.readouterr().err and not out.exists()


# onnxruntime and PyTorch sum the convolutions in other orders: float32 rounding only. Measured
# on this CPU: max 6.3e-7 on images in [-1, 1]; 1e-5 leaves a 15x margin, and still fails an export
# whose BatchNorm running variances are 1% off.
ONNX_ATOL = 1e-5


def test_onnx_export_runs_in_onnxruntime_at_any_batch_size(tiny_run, tmp_path):
    onnx = pytest.importorskip("onnx", reason="pip install -e '.[dev]' brings onnx")
    ort = pytest.importorskip("onnxruntime", reason="pip install -e '.[dev]' brings onnxruntime")
    source = vivid_generator(tiny_run, tmp_path / "generator.pth")  # images that span [-1, 1]
    out = tmp_path / "g.onnx"
    assert main(["export", "--checkpoint", str(source), "--out", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nz"] == "16" and meta["image_size"] == "32"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    G = fastdcgan.load_generator(source)
    for n in (1, 5):  # the batch axis is dynamic: the file was traced at batch 1
        z = seed_noise(range(n), 16)
        got = torch.from_numpy(session.run(None, {"z": z.numpy()})[0])
        want = G(z)
        assert got.shape == (n, 3, 32, 32) and want.std() > 0.3
        print(f"batch {n}: max |onnxruntime - torch| = {(got - want).abs().max():.1e}")
        assert (got - want).abs().max() < ONNX_ATOL


def test_ema_weights_when_present_and_a_clear_error_when_not(tiny_run, tmp_path, capsys):
    assert main(["--checkpoint", str(tiny_run), "--ema", "--out", str(tmp_path / "x.png")]) == 2
    assert "no EMA weights" in capsys.readouterr().err
    state = checkpoint.load(checkpoint.latest(tiny_run / "checkpoints"))
    state["G_ema"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in state["G"].items()}
    torch.save(state, tmp_path / "ema.pt")
    plain, ema = (fastdcgan.load_generator(tmp_path / "ema.pt"),
                  fastdcgan.load_generator(tmp_path / "ema.pt", ema=True))
    z = seed_noise([1, 2], 16)
    assert not torch.allclose(plain(z), ema(z))
    assert torch.equal(ema.net.main[0].weight, state["G"]["main.0.weight"] * 0.5)
