"""python -m fastdcgan.generate: see __init__.py for the sub-commands."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
