"""FID during training: every fid.every steps, a metrics row, and the best checkpoint kept.

The trainer owns the loop and the files; this holds the extractor, the real statistics and the
best score so far, and keeps `checkpoints/best_fid` (a complete checkpoint, loadable like any
step_*.pt) with `checkpoints/best_fid.json` ({"step", "fid", "n", "ema"}) beside it. Under DDP every
rank computes its share of the real and generated statistics and one all_reduce combines them, so
every rank gets the same score (and the same idea of the best); rank 0 alone writes files.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from torch import nn

from .. import checkpoint
from ..config import Config
from . import extractors
from .frechet import Gaussian, describe, frechet_distance, generator_stats, protocol, real_stats

BEST, BEST_JSON = "best_fid", "best_fid.json"


class FIDTracker:
    def __init__(self, cfg: Config, files: list[Path], extractor: extractors.Extractor, ckpt_dir: Path,
                 ema: bool):
        self.cfg, self.files, self.ckpt_dir, self.ema = cfg, files, ckpt_dir, ema
        # loaded before any set-up: a missing network fails at start, not at step N
        self.extractor = extractor
        self.real: Gaussian | None = None
        try:
            self.best = json.loads((ckpt_dir / BEST_JSON).read_text())["fid"]  # a resumed run keeps its best
        except (OSError, ValueError, KeyError):
            self.best = float("inf")

    def prepare(self) -> str:
        """Load or compute the real statistics; a line saying which."""
        t = time.perf_counter()
        f = self.cfg.fid
        self.real, cached = real_stats(self.files, self.cfg.data.image_size, self.extractor, f.batch,
                                       self.cfg.data.workers)
        how = "from the cache" if cached else f"computed in {time.perf_counter() - t:.0f} s and cached"
        self.protocol = protocol(self.extractor, f.n, self.files, self.cfg.data.image_size,
                                 self.cfg.data.split)
        return (f"FID every {f.every} steps on {f.n} samples{' of the EMA generator' if self.ema else ''}; "
                f"real statistics of {self.real.n} images {how}\n{describe(self.protocol)}")

    def evaluate(self, G: nn.Module, step: int, epoch: int) -> dict:
        """FID of G now (the same noise every time), as a metrics.jsonl row."""
        if self.real is None:
            self.prepare()
        t = time.perf_counter()
        f = self.cfg.fid
        fake = generator_stats(G, f.n, self.extractor, f.batch, seed=0)
        score = frechet_distance(self.real, fake)
        return {"step": step, "epoch": epoch, "fid": score, "fid_n": fake.n, "fid_ema": self.ema,
                "fid_s": round(time.perf_counter() - t, 2), "fid_network": self.extractor.name,
                "fid_stats": self.protocol["stats"], "time": time.time()}

    def is_best(self, row: dict) -> bool:
        return row["fid"] < self.best  # NaN never wins

    def keep_if_best(self, row: dict, saved: Path | None, write: bool = True) -> bool:
        """If row's FID is the lowest yet, make checkpoints/best_fid `saved`, this step's checkpoint (the
        trainer checkpoints a step whose score is a new best), as a hard link: no copy, and it outlives
        the step file's rotation. Every rank calls it (so all agree on the best); only the one with
        write=True touches files."""
        if not self.is_best(row):
            return False
        self.best = row["fid"]
        if not write:
            return True
        best = self.ckpt_dir / BEST
        tmp = best.with_name(BEST + ".link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(saved, tmp)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(saved, tmp)
        os.replace(tmp, best)
        info = {k: row[k] for k in ("step", "fid")} | {"n": row["fid_n"], "ema": row["fid_ema"]}
        checkpoint.atomic_write(self.ckpt_dir / BEST_JSON,
                                lambda fh: fh.write((json.dumps(info) + "\n").encode()))
        return True
