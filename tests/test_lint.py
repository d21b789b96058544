"""The linter passes: ruff with pyproject.toml's rules (pyflakes, syntax errors, the 110-character
line, bugbear), over the whole repository. Part of the suite so that a finding fails here, by name,
rather than waiting for CI; .ci/run also runs it first, on its own."""
import subprocess
import sys

import pytest

from conftest import REPO


def test_ruff_finds_nothing():
    pytest.importorskip("ruff", reason="ruff is not installed (it is in the dev extra: "
                                       "pip install -e '.[dev]')")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"python -m ruff check . found problems:\n{r.stdout}{r.stderr}"
