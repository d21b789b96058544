"""What a launch checks and reads before it trains: the run directory, the checkpoint it resumes from
(and whether this config's model can hold it), the images. Everything here fails at once, with one
line naming the key or file (UsageError, exit 2), before any data is decoded or cached."""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import checkpoint, config
from .config import Config, UsageError
from .data import folder
from .model import d_norm_for
from .rundir import RunDir


def find_resume(cfg: Config) -> Path | None:
    """The checkpoint this launch resumes from, as train.resume asks (auto: the latest, if any)."""
    how, run_dir = cfg.train.resume, Path(cfg.train.run_dir)
    if how == "auto":
        return RunDir(run_dir).latest_checkpoint()
    if how == "never":
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(f"train.run_dir {run_dir} is not empty and train.resume=never")
        return None
    path = Path(how)
    if not path.is_file():
        raise UsageError(f"train.resume: no checkpoint file {path}")
    return path


# What decides the names and shapes of the weights (by the setting's value, or by what it implies: D's
# norm for a loss, D's dropout layers on or off). A checkpoint loads only into a model built alike.
MODEL_LAYOUT = {"data.image_size": None, "model.nz": None, "model.ngf": None, "model.ndf": None,
                "model.spectral_norm": None, "train.loss": d_norm_for, "model.d_dropout": lambda p: p > 0}


def check_resumable(path: Path, cfg: Config) -> None:
    """Refuse, naming each setting, a checkpoint whose weights this config's model cannot hold: said
    before any set-up rather than as load_state_dict's size mismatch after the cache build."""
    try:
        saved = checkpoint.load(path).get("config", {})
    except checkpoint.Unreadable as e:
        raise UsageError(f"cannot resume from {path}: {e.reason}") from None
    now, was = config.to_dict(cfg), config.to_dict(config.from_dict(saved))
    differ = []
    for key, implies in MODEL_LAYOUT.items():
        old, new = config.get(was, key), config.get(now, key)
        if (implies(old) != implies(new)) if implies else old != new:
            differ.append(f"{key} {old!r} in the checkpoint, {new!r} now")
    if differ:
        raise UsageError(f"cannot resume from {path}: its model was built with other settings: "
                         f"{'; '.join(differ)}. Set them back, or start a new train.run_dir "
                         "(train.init cannot change shapes either)")


def check_run_dir(cfg: Config) -> Path | None:
    """The run directory can be written (one line and exit 2 if not, e.g. a read-only mount), and the
    checkpoint this launch resumes from, if any, fits the model the config builds."""
    run_dir = Path(cfg.train.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise UsageError(f"train.run_dir {run_dir} cannot be written: {e.strerror or e}") from None
    path = find_resume(cfg)
    if path:
        check_resumable(path, cfg)
    return path


def scan_data(cfg: Config) -> folder.ImageList:
    """The images the run trains on (the built-in synthetic faces when data.root is empty)."""
    d = cfg.data
    root = d.root
    if not root:
        from .data import synthetic
        root = synthetic.default_root(n=d.synthetic_n, seed=0)
    return folder.scan(root, d.split, workers=d.workers, min_size=d.image_size)
