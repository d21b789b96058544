"""python -m fastdcgan.prepare's closing summary, each figure against what it counts: the cache's size on
disk in the unit it names, and the files that do not decode: every one counted, the first 20 named and the
rest said as how many more (test_cache.py's prepare test has one such file, and a cache too small for its
size to show a unit).
"""
from __future__ import annotations

from pathlib import Path

from conftest import write_colors
from fastdcgan.prepare import main as prepare


def test_the_summary_counts_every_skipped_file_once_and_the_cache_in_mib(tmp_path, capsys):
    root = tmp_path / "images"
    write_colors(root, 32)
    broken = [root / f"broken{i:02d}.jpg" for i in range(23)]
    for f in broken:
        f.write_bytes(b"not a jpeg")
    assert prepare([str(root), "--image-size", "128", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    folder = Path(next(x for x in lines if x.startswith("cache built: ")).removeprefix("cache built: "))
    mib = (folder / "images.npy").stat().st_size / 2**20
    assert mib > 1  # 32 images of 128 x 128 x 3: a size the unit shows
    assert f"  on disk     {mib:.1f} MiB" in lines, lines
    assert any(x.startswith("  images      32 at 128x128 (") for x in lines), lines  # then the decoder's name
    assert "  skipped     23 files that do not decode:" in lines, lines
    named = [x for x in lines if x.startswith("    broken")]
    assert len(named) == 20 and len(set(named)) == 20
    assert lines[lines.index(named[-1]) + 1] == "    ... and 3 more", lines
