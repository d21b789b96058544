"""Where the FID network comes from, first match wins (metrics/extractors.py): fid.weights (--weights),
then $FASTDCGAN_FID_WEIGHTS, then the fetched default_1.pt. Each source is checked with every one after it
present, so an explicit setting beats whatever else is set. The fid tool adds the run's own fid.weights
between --weights and the rest, while its file is there; a run whose network file has gone is scored with
the next source, not refused."""
import json
import shutil

import pytest

from conftest import make_celeba, tiny_args, write_tiny_fid_net
from fastdcgan.fid import main as fid
from fastdcgan.metrics import extractors
from fastdcgan.train import main as train

SOURCES = ["fid.weights", "$FASTDCGAN_FID_WEIGHTS", "fetched"]


def networks(folder, kinds):
    """A network per kind, each another file (another name), and the name extractors.load gives each."""
    nets = {k: write_tiny_fid_net(folder / f"net{i}.pt", seed=i) for i, k in enumerate(kinds)}
    names = {k: extractors.load(str(p)).name for k, p in nets.items()}
    assert len(set(names.values())) == len(kinds)
    return nets, names


def present(nets, sources, monkeypatch, folder):
    """Make the environment and the fetched file (in a cache of this test's own) hold these sources."""
    monkeypatch.setenv("FASTDCGAN_CACHE", str(folder / "cache"))
    if "$FASTDCGAN_FID_WEIGHTS" in sources:
        monkeypatch.setenv(extractors.ENV, str(nets["$FASTDCGAN_FID_WEIGHTS"]))
    else:
        monkeypatch.delenv(extractors.ENV, raising=False)
    if "fetched" in sources:
        extractors.default_path().parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(nets["fetched"], extractors.default_path())


@pytest.mark.parametrize("first", SOURCES)
def test_each_source_of_the_network_beats_those_after_it(first, tmp_path, monkeypatch):
    nets, names = networks(tmp_path, SOURCES)
    sources = SOURCES[SOURCES.index(first):]
    present(nets, sources, monkeypatch, tmp_path)
    weights = str(nets["fid.weights"]) if "fid.weights" in sources else ""
    assert extractors.load(weights).name == names[first]


@pytest.fixture(scope="module")
def run_with_its_network(tmp_path_factory):
    """A run that records its own fid.weights (the file named here)."""
    tmp = tmp_path_factory.mktemp("own_net")
    own = write_tiny_fid_net(tmp / "own.pt", seed=7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTDCGAN_CACHE", str(tmp / "cache"))
        assert train(tiny_args(make_celeba(tmp / "celeba", 16), tmp / "run", train__max_steps=2,
                               fid__weights=own)) == 0
    return tmp / "run", own


# the fid tool's sources, first match wins; "run's own" is the run's fid.weights while its file is there
TOOL_SOURCES = ["--weights", "run's own", "$FASTDCGAN_FID_WEIGHTS", "fetched"]


@pytest.mark.parametrize("first", TOOL_SOURCES)
def test_the_fid_tool_takes_the_first_network_there_is(first, run_with_its_network, tmp_path, monkeypatch,
                                                       capsys):
    run, own = run_with_its_network
    nets, names = networks(tmp_path, ["--weights", "$FASTDCGAN_FID_WEIGHTS", "fetched"])
    names["run's own"] = extractors.load(str(own)).name
    sources = TOOL_SOURCES[TOOL_SOURCES.index(first):]
    present(nets, sources, monkeypatch, tmp_path)
    moved = own.with_name("moved.pt")
    if "run's own" not in sources:
        own.rename(moved)  # the run's network file has gone since it trained
    try:
        argv = ["--checkpoint", str(run), "--n", "4", "--batch", "4"]
        code = fid(argv + (["--weights", str(nets["--weights"])] if "--weights" in sources else []))
    finally:
        if moved.exists():
            moved.rename(own)
    assert code == 0, capsys.readouterr().err
    record = json.loads((run / "fid.jsonl").read_text().splitlines()[-1])
    assert record["network"] == names[first]
