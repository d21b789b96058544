"""Every field of Feed (data/base.py) on every input backend, by construction.

A backend is handed a Feed and nothing else, so a field one backend drops is a setting silently lost
on that backend only: data.prefetch on nvjpeg, data.dali_threads on the cache build, the rank's GPU
in DALI's pipeline, the scan's sizes re-read from every header. TABLE gives, for every field and every
backend, the check that shows the backend takes the field, or why the backend has no use for it. A
field added to Feed, or a backend added to loaders.BACKENDS, without its cells fails
test_every_field_has_a_cell_for_every_backend by name.

A check opens the backend twice, from feeds that differ in that field alone, and asserts that each
shows what its own feed says, and that the two differ: the batches (which files, in which order, their
size and count, their device), or, where the field acts on something a CPU batch cannot show, what the
backend was built with (its threads, its read-ahead, the folder its cache is named by, the pipelines
DALI is given). A GPU's pipeline is built as for cuda:1 with DALI's own build step skipped, as
test_dali.py does; a host-decoding backend's device is the meta device, as test_loaders.py did.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import color_ids, runs_here, write_colors
from fastdcgan.data import InputFailure, cache, dali
from fastdcgan.data.base import Feed, Loader
from fastdcgan.data.loaders import BACKENDS
from fastdcgan.data.order import epoch_batches

CPU, GPU1, META = torch.device("cpu"), torch.device("cuda:1"), torch.device("meta")
N = 24


@dataclass
class Opened:
    """A backend opened from a feed: the loader, what it said, and the DALI pipelines and cache
    decoders it made on the way (their arguments)."""
    feed: Feed
    loader: Loader | None = None
    said: list[str] = field(default_factory=list)
    pipelines: list[dict] = field(default_factory=list)  # build_pipeline's arguments and the pipeline
    decoders: list[tuple[str, torch.device]] = field(default_factory=list)  # the cache build's (kind, device)


def open_backend(name: str, feed: Feed, monkeypatch, cache_home: Path) -> Opened:
    """BACKENDS[name].open(feed) and its first batch asked for (the DALI loader makes its pipeline for
    it), recording every DALI pipeline and cache decoder made, a cache built afresh in cache_home. A
    feed for a GPU: DALI's build step skipped (a pipeline for cuda:1 cannot be built here), so running
    the pipeline fails, after its making."""
    from nvidia.dali.pipeline import Pipeline
    seen = Opened(feed)
    build, decoder = dali.build_pipeline, cache._decoder
    signature = inspect.signature(build)

    def recording_build(*args, **kw):
        pipe = build(*args, **kw)
        seen.pipelines.append({**signature.bind(*args, **kw).arguments, "pipe": pipe})
        return pipe

    def recording_decoder(kind, images, size, device, *rest):
        seen.decoders.append((kind, device))
        return decoder(kind, images, size, device, *rest)

    with monkeypatch.context() as m:
        m.setattr(dali, "build_pipeline", recording_build)
        m.setattr(cache, "_decoder", recording_decoder)
        m.setenv("FASTDCGAN_CACHE", str(cache_home))
        if feed.device.type == "cuda":
            m.setattr(Pipeline, "build", lambda self: None)
            with pytest.raises(InputFailure):
                seen.loader = BACKENDS[name].open(feed, seen.said.append)
                next(iter(seen.loader.epoch(0)))
        else:
            seen.loader = BACKENDS[name].open(feed, seen.said.append)
            if name == "dali":
                next(iter(seen.loader.epoch(0)))
    return seen


# ----- what a backend shows -----

def batches(o: Opened) -> tuple[int, list]:
    """len() and epoch 1's batches: the ids of their files, their shape and their device."""
    return len(o.loader), [(color_ids(b), tuple(b.shape), b.device) for b in o.loader.epoch(1)]


def contract(o: Opened) -> tuple[int, list]:
    """What batches() must be for the feed (base.py's contract): this rank's share of the seeded order
    of the feed's files, in batches of its size, at its image size, on its device."""
    f = o.feed
    table = epoch_batches(len(f.files), f.batch_size, f.seed, 1, f.rank, f.world)
    ids = [int(p.stem) for p in f.files]  # write_colors: each file's colour says its number
    return len(table), [([ids[i] for i in row], (f.batch_size, f.image_size, f.image_size, 3), f.device)
                        for row in table.tolist()]


def devices(o: Opened) -> set:
    return {b.device for b in o.loader.epoch(0)}


def pipeline_devices(o: Opened) -> list:
    """The devices and GPU ids of the DALI pipelines made (the loader's, or the cache build's)."""
    return sorted({(str(p["device"]), p["pipe"].device_id) for p in o.pipelines})


def regions(o: Opened) -> list:
    """The distinct crop regions the DALI pipelines were given."""
    return sorted({tuple(r) for p in o.pipelines for r in np.asarray(p["regions"]).tolist()})


def regions_expected(o: Opened) -> list:
    """The regions of the feed's sizes, or of the files' own (write_colors': 40 x 48) when it has none."""
    sizes = o.feed.sizes or [(40, 48)]
    return sorted({tuple(r) for r in dali.regions_of(sizes, o.feed.image_size, True).tolist()})


def threads_of(o: Opened) -> int:
    if isinstance(o.loader, cache.CacheLoader):  # the build line names its threads
        return int(re.search(r", (\d+) (?:read )?(?:threads|processes)", " ".join(o.said))[1])
    return o.loader.pipe.num_threads if o.loader.name == "dali" else o.loader.pool._max_workers


def prefetch_of(o: Opened) -> int:
    return o.loader.pipe.prefetch_queue_depth if o.loader.name == "dali" else o.loader.prefetch


def cache_folder_name(o: Opened) -> str:
    """The name the cache folder starts with (cache.location: its root's)."""
    return Path(re.search(r" at (\S+)$", o.said[0])[1]).name.rsplit("-", 2)[0]


# ----- the table -----

@dataclass(frozen=True)
class Takes:
    """The backend takes the field: `base` and `changed` are the two feeds' differences from BASE (only
    this field's value, and what both need), observe() must equal expected() for each, and differ."""
    base: dict
    changed: dict
    observe: Callable[[Opened], Any]
    expected: Callable[[Opened], Any]
    files: str = "jpeg"  # the images: write_colors' JPEGs, or PNGs of the same colours


def contract_cell(base: dict, changed: dict) -> Takes:
    return Takes(base, changed, batches, contract)


# The fields that every backend's batches show (the loader contract).
CONTRACT = {
    "files": contract_cell({}, {"files": "reversed"}),
    "image_size": contract_cell({}, {"image_size": 24}),
    "batch_size": contract_cell({}, {"batch_size": 3}),
    "seed": contract_cell({}, {"seed": 1}),
    "rank": contract_cell({"world": 2}, {"world": 2, "rank": 1}),
    "world": contract_cell({}, {"world": 2}),
}
DEFAULT_THREADS = dali.default_threads()
THREADS = Takes({"threads": 1}, {"threads": max(3, DEFAULT_THREADS + 1)}, threads_of,
                lambda o: o.feed.threads)
PREFETCH = Takes({}, {"prefetch": 5}, prefetch_of, lambda o: o.feed.prefetch)
ON_META = Takes({}, {"device": META}, devices, lambda o: {o.feed.device})
# the sizes the scan read, (width, height) per file, trusted instead of every file's header read again
SIZES = Takes({"device": GPU1}, {"device": GPU1, "sizes": [(48, 40)] * N}, regions, regions_expected)
NO_SIZES = "decodes each file whole and takes its size from the decoded image"
NO_ROOT = "reads feed.files by their full paths; nothing is named by the folder"
NO_WORKERS = "decodes on threads (data.dali_threads), not in DataLoader processes"
NO_PREFETCH = "serves from memory: there is nothing to read ahead"

TABLE: dict[str, dict[str, Takes | str]] = {
    **{f: {b: cell for b in BACKENDS} for f, cell in CONTRACT.items()},
    "device": {
        "torch": ON_META,
        "nvjpeg": dataclasses.replace(ON_META, files="png"),  # PIL's path: torchvision's decode_jpeg
        # leaves a meta device's images on the CPU; on a GPU (test_nvjpeg.py) they are the GPU's
        "dali": Takes({}, {"device": GPU1}, pipeline_devices,
                      lambda o: [(str(o.feed.device), o.feed.device.index)]),
        # the build decodes on the feed's device with that device's decoder; serving from GPU memory is
        # test_cache.py's (its gather run on a CPU tensor)
        "cache": Takes({}, {"device": GPU1}, lambda o: o.decoders,
                       lambda o: [(cache.decoder_kind(o.feed.device),
                                   o.feed.device)]),
    },
    "sizes": {"dali": SIZES, "cache": SIZES, "torch": NO_SIZES, "nvjpeg": NO_SIZES},
    "root": {
        "cache": Takes({}, {"root": "parent"}, cache_folder_name,
                       lambda o: (o.feed.root or o.feed.files[0].parent).name),
        "dali": NO_ROOT, "torch": NO_ROOT, "nvjpeg": NO_ROOT,
    },
    "workers": {
        "torch": Takes({}, {"workers": 2}, lambda o: o.loader.loader.num_workers, lambda o: o.feed.workers),
        "dali": NO_WORKERS, "nvjpeg": NO_WORKERS, "cache": NO_WORKERS,
    },
    "threads": {"dali": THREADS, "nvjpeg": THREADS, "cache": THREADS,
                "torch": "decodes in DataLoader processes (data.workers), one image per process at a time"},
    "prefetch": {"dali": PREFETCH, "nvjpeg": PREFETCH, "cache": NO_PREFETCH,
                 "torch": "a DataLoader's own prefetch_factor, per worker process"},
}
CELLS = [(f, b) for f, row in TABLE.items() for b, cell in sorted(row.items()) if isinstance(cell, Takes)]


def test_every_field_has_a_cell_for_every_backend():
    assert set(TABLE) == {f.name for f in dataclasses.fields(Feed)}
    for f, row in TABLE.items():
        assert set(row) == set(BACKENDS), f
        for b, cell in row.items():
            assert isinstance(cell, Takes) or (isinstance(cell, str) and cell), (f, b)


def images(tmp_path: Path, kind: str) -> list[Path]:
    return write_colors(tmp_path / "colors", N, suffix=".jpg" if kind == "jpeg" else ".png")


def feed(files: list[Path], tmp_path: Path, settings: dict) -> Feed:
    values = {"image_size": 16, "batch_size": 4, "seed": 0, "device": CPU, "threads": 1, **settings}
    if values.get("files") == "reversed":
        values["files"] = files[::-1]
    if values.get("root") == "parent":
        values["root"] = tmp_path
    return Feed(**{"files": files, **values})


@pytest.mark.parametrize("field_name,backend", CELLS, ids=[f"{f}-{b}" for f, b in CELLS])
def test_the_backend_takes_the_field(field_name, backend, tmp_path, monkeypatch):
    runs_here(backend)
    cell = TABLE[field_name][backend]
    if GPU1 in (cell.base.get("device"), cell.changed.get("device")) and dali.unavailable_reason():
        pytest.skip(dali.unavailable_reason())  # a GPU's pipelines are DALI's
    files = images(tmp_path, cell.files)
    got = []
    for k, settings in enumerate((cell.base, cell.changed)):
        o = open_backend(backend, feed(files, tmp_path, settings), monkeypatch, tmp_path / f"cache{k}")
        got.append(cell.observe(o))
        assert got[-1] == cell.expected(o), settings
    assert got[0] != got[1]


# Where Feed.of takes each field from: the config, the scan's ImageList, or the trainer's arguments.
SOURCES = {
    "files": lambda cfg, images, args: images.files, "sizes": lambda cfg, images, args: images.sizes,
    "root": lambda cfg, images, args: images.root,
    "image_size": lambda cfg, images, args: cfg.data.image_size,
    "batch_size": lambda cfg, images, args: cfg.train.batch_size,
    "seed": lambda cfg, images, args: cfg.train.seed,
    "workers": lambda cfg, images, args: cfg.data.workers,
    "threads": lambda cfg, images, args: cfg.data.dali_threads,
    "prefetch": lambda cfg, images, args: cfg.data.prefetch,
    "device": lambda cfg, images, args: args["device"], "rank": lambda cfg, images, args: args["rank"],
    "world": lambda cfg, images, args: args["world"],
}


def test_feed_of_carries_every_field_from_where_it_is_set(tmp_path):
    """The trainer's Feed (Feed.of) holds each field's value from the config, the scan or the trainer,
    none left at Feed's default: values that no default here has."""
    from fastdcgan import config
    from fastdcgan.data.folder import ImageList
    assert set(SOURCES) == {f.name for f in dataclasses.fields(Feed)}
    cfg = config.build(None, ["data.image_size=128", "train.batch_size=5", "train.seed=7", "data.workers=3",
                              "data.dali_threads=4", "data.prefetch=6"])
    files = write_colors(tmp_path / "colors", 12)
    images = ImageList(tmp_path, files, "folder", sizes=[(40, 48)] * 12)
    args = {"device": META, "rank": 2, "world": 3}
    made = Feed.of(cfg, images, **args)
    defaults = Feed(files=[], image_size=0, batch_size=0)
    for name, source in SOURCES.items():
        want = source(cfg, images, args)
        assert getattr(made, name) == want != getattr(defaults, name), name
