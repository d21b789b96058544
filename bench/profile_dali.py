"""Where DALI's CPU time goes: the input pipeline taken apart, stage by stage, on CPU threads.

    python bench/profile_dali.py --data /data/celeba --threads 1 2 --rounds 3

Each variant is a DALI pipeline over the same files and batches (batch 128, 64x64 uint8 out, the
epoch orders of order.py), run for --batches batches after 5 untimed ones. For each it prints
images/s and the CPU time per image of every thread of the process, summed by thread name (DALI's
pool threads, its executor thread, the file reader's prefetch thread, Python's main thread), read
from /proc/self/task: CPU time, unlike wall time, says where the work is, even on a busy machine.

  before        the previous design: an external_source callback feeding each batch's file names,
                fn.io.file.read, fn.peek_image_shape and a graph of ~30 scalar DALI operators that
                computes the plain path's region, fn.decoders.image, fn.resize of that region
  reader        the same, but fn.readers.file reads the files (no Python per batch)
  const-roi     reader, and the region as constants (computed in Python per image size)
  after         what fastdcgan.data.dali.build_pipeline builds now: const-roi, and the decoder
                decodes only the rows and columns the resize reads (fn.decoders.image_slice)
  decode-only   reader and fn.decoders.image, no resize: the decode's own cost

Medians over --rounds rounds (each variant once per round, in turn). Needs one image size across the
files for the constant regions (CelebA's 178x218); `after` itself handles any mix of sizes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastdcgan.data import dali  # noqa: E402
from fastdcgan.data.folder import header_sizes, scan  # noqa: E402
from fastdcgan.data.order import epoch_batches  # noqa: E402

VARIANTS = ("before", "reader", "const-roi", "after", "decode-only")
KINDS = {"[DALI][TP": "pool", "[DALI] Executor": "executor", "PrefetchWorker": "reader"}


def thread_cpu() -> dict[tuple[str, str], float]:
    """CPU seconds (user + system) of every thread of this process, by (tid, name)."""
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread ended
        fields = stat.rsplit(")", 1)[1].split()
        out[tid, name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def kind(name: str) -> str:
    return next((k for prefix, k in KINDS.items() if name.startswith(prefix)),
                "python" if name.startswith("python") else "other")


class NameSource:
    """The previous design's external_source callback: one batch of encoded file names per call."""

    def __init__(self, files: list[str], order: np.ndarray, batch: int):
        self.names = [np.frombuffer(f.encode(), dtype=np.uint8) for f in files]
        self.order, self.batch, self.pos = order, batch, 0

    def __call__(self):
        row = self.order[self.pos * self.batch:(self.pos + 1) * self.batch]
        self.pos = (self.pos + 1) % (len(self.order) // self.batch)
        return [self.names[i] for i in row]


def graph_roi(shape, size: int):
    """The previous design's region, computed per sample by DALI arithmetic operators."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    short = dmath.min(shape[0], shape[1])
    starts, ends = [], []
    for n in (shape[0], shape[1]):
        r = n * size // short
        half = (r - size) // 2
        off = half + ((r - size) % 2) * (half % 2)
        scale = fn.cast(n, dtype=types.FLOAT) / fn.cast(r, dtype=types.FLOAT)
        starts.append(fn.cast(off, dtype=types.FLOAT) * scale)
        ends.append(fn.cast(off + size, dtype=types.FLOAT) * scale)
    return fn.stack(*starts), fn.stack(*ends)


def build(variant: str, files: list[str], order: np.ndarray, regions: np.ndarray, wh: tuple[int, int],
          size: int, batch: int, threads: int, prefetch: int):
    from nvidia.dali import fn, pipeline_def, types

    listed = [files[i] for i in order]
    if variant == "after":
        return dali.build_pipeline(listed, order.tolist(), regions[order], size, batch, threads, prefetch,
                                   torch.device("cpu"))
    whole = dali.regions_of([wh], size, whole=True)[0]  # the plain path's region in the whole image

    @pipeline_def(batch_size=batch, num_threads=threads, prefetch_queue_depth=prefetch, device_id=None)
    def pipe():
        if variant == "before":
            names = fn.external_source(source=NameSource(files, order, batch), batch=True, dtype=types.UINT8)
            encoded = fn.io.file.read(names)
        else:
            encoded, _ = fn.readers.file(files=listed, random_shuffle=False)
        images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB, adjust_orientation=False)
        if variant == "decode-only":
            return images
        if variant in ("before", "reader"):
            start, end = graph_roi(fn.peek_image_shape(encoded, adjust_orientation=False), size)
        else:
            start, end = whole[4:6].tolist(), whole[6:8].tolist()
        return fn.resize(images, size=(size, size), roi_start=start, roi_end=end, antialias=True,
                         interp_type=types.INTERP_LINEAR, dtype=types.UINT8)

    p = pipe()
    p.build()
    return p


def run(variant: str, args, files, order, regions, wh, threads: int) -> tuple[float, float, dict[str, float]]:
    """(images/s, CPU us per image, CPU us per image by thread kind)."""
    pipe = build(variant, files, order, regions, wh, args.size, args.batch, threads, args.prefetch)
    for _ in range(5):
        pipe.run()
    before, t = thread_cpu(), time.perf_counter()
    for _ in range(args.batches):
        out = pipe.run()[0]
        if variant != "decode-only" and not args.no_handoff:
            dali.to_torch(out, torch.device("cpu"))
    seconds, after = time.perf_counter() - t, thread_cpu()
    n = args.batches * args.batch
    by: dict[str, float] = {}
    for key, cpu in after.items():
        by[kind(key[1])] = by.get(kind(key[1]), 0.0) + (cpu - before.get(key, 0.0)) * 1e6 / n
    del pipe
    return n / seconds, sum(by.values()), by


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="image folder or CelebA download")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=120)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--no-handoff", action="store_true", help="leave out the copy into a torch tensor")
    args = p.parse_args()
    torch.set_num_threads(1)
    images = scan(args.data)
    files = [str(f) for f in images.files]
    sizes = images.sizes or header_sizes(images.files)
    if len(set(sizes)) != 1:
        sys.exit(f"{args.data}: images of {len(set(sizes))} sizes; the constant-region variants need one")
    regions = dali.regions_of(sizes, args.size, whole=False)
    epochs = -(-args.batches * args.batch // len(files)) + 1
    order = np.concatenate([epoch_batches(len(files), args.batch, 0, e).numpy().reshape(-1)
                            for e in range(epochs)])
    print(f"{len(files)} files of {sizes[0][0]}x{sizes[0][1]} -> {args.size}x{args.size}, "
          f"batch {args.batch}, {args.batches} timed batches, prefetch {args.prefetch}, "
          f"{args.rounds} rounds (medians)")
    for threads in args.threads:
        results: dict[str, list] = {v: [] for v in args.variants}
        for _ in range(args.rounds):
            for v in args.variants:
                results[v].append(run(v, args, files, order, regions, sizes[0], threads))
        print(f"\n{threads} thread(s)    img/s   CPU us/img   pool  executor  reader  python  "
              "(us/img by thread)")
        for v, rs in results.items():
            med = {k: statistics.median(r[2].get(k, 0.0) for r in rs)
                   for k in ("pool", "executor", "reader", "python")}
            print(f"  {v:<12} {statistics.median(r[0] for r in rs):>7,.0f} "
                  f"{statistics.median(r[1] for r in rs):>10.0f}"
                  f"   {med['pool']:>5.0f} {med['executor']:>8.0f} {med['reader']:>7.0f} "
                  f"{med['python']:>7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
