"""fastdcgan: a fast DCGAN trainer. `fastdcgan.load_generator(path)` loads a trained generator."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .generate.export import load_generator


def __getattr__(name: str):
    # lazy: `import fastdcgan` stays light for the trainer and its worker processes
    if name == "load_generator":
        from .generate.export import load_generator
        return load_generator
    raise AttributeError(f"module 'fastdcgan' has no attribute {name!r}")


__all__ = ["load_generator"]
