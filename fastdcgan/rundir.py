"""A run directory's layout, in one place: the names every part of a run writes and reads, and how a
path a user gives (a run directory, a checkpoint, or a generator file) becomes the file to read."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checkpoint


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.toml")            # the resolved settings
    plan = property(lambda self: self.root / "plan.json")                # what the launch runs, as built
    status = property(lambda self: self.root / "STATUS")                 # running N, finished N, ...
    stop = property(lambda self: self.root / "STOP")                     # touch it to stop the run
    metrics = property(lambda self: self.root / "metrics.jsonl")         # one row per log step and FID
    fid_log = property(lambda self: self.root / "fid.jsonl")             # python -m fastdcgan.fid's scores
    time_to_fid = property(lambda self: self.root / "time_to_fid.json")
    skipped = property(lambda self: self.root / "skipped_files.txt")
    samples = property(lambda self: self.root / "samples")
    plots = property(lambda self: self.root / "plots")
    checkpoints = property(lambda self: self.root / "checkpoints")
    tensorboard = property(lambda self: self.root / "tb")
    generator = property(lambda self: self.root / "generator.pth")       # plain state_dicts, at the end
    discriminator = property(lambda self: self.root / "discriminator.pth")
    generator_ema = property(lambda self: self.root / "generator_ema.pth")

    def latest_checkpoint(self) -> Path | None:
        return checkpoint.latest(self.checkpoints)

    @classmethod
    def of(cls, file: Path) -> RunDir:
        """The run directory a checkpoint or weights file belongs to."""
        file = Path(file)
        return cls(file.parent.parent if file.parent.name == "checkpoints" else file.parent)


def find_weights(where: str | Path) -> Path:
    """The file a user means: a file is itself; a run directory means its latest checkpoint, else its
    generator.pth; a folder of checkpoints (checkpoints/), its latest. FileNotFoundError if none."""
    path = Path(where).expanduser()
    if path.is_file():
        return path
    run = RunDir(path)
    found = (run.latest_checkpoint() or checkpoint.latest(path)
             or (run.generator if run.generator.is_file() else None))
    if found is None:
        raise FileNotFoundError(f"no checkpoint or generator.pth found at {path}")
    return found
