"""Procedural cartoon faces in the CelebA layout: the built-in dataset, so no download is needed.

Every image is drawn from its own RNG, ``numpy.random.default_rng([seed, index])``, so any image
can be made independently and the output is byte-identical whatever the number of processes.
Geometry follows CelebA's aligned crops (178x218, eyes near y=112, mouth near y=152) so the
usual resize + center-crop to 64x64 frames the face the way it frames real CelebA.
"""
from __future__ import annotations

import math
import os
import pathlib
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw

from .folder import cache_dir

VERSION = 1  # bump when the drawing changes, so caches rebuild

W, H = 178, 218  # CelebA aligned-crop size
S = 2  # supersampling factor: draw at 2x, then reduce, for antialiased edges
PAD = 32  # margin around the canvas so rotating it never exposes an empty corner
CX, CY = 89, 118  # face centre in the output image (CelebA eye line ~ y=112)
# A subset of CelebA's attribute names (in CelebA's order): only what the generator varies.
ATTRIBUTES = ("Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Gray_Hair", "Male",
              "Mouth_Slightly_Open", "Mustache", "Pale_Skin", "Rosy_Cheeks", "Smiling",
              "Wearing_Lipstick")
SKIN = {"pale": (250, 226, 212), "light": (240, 196, 168), "medium": (222, 170, 128),
        "tan": (196, 138, 98), "brown": (148, 98, 68), "dark": (98, 64, 46)}
SKIN_P = (0.15, 0.3, 0.25, 0.15, 0.1, 0.05)
HAIR = {"black": (28, 22, 22), "brown": (96, 60, 34), "blond": (222, 186, 112),
        "gray": (170, 166, 164), "auburn": (140, 56, 30)}
HAIR_P = (0.3, 0.3, 0.2, 0.1, 0.1)
IRIS = ((92, 56, 30), (60, 40, 25), (70, 110, 160), (80, 120, 80))


# Not mutated (docs/mutation.md): the drawing's shapes and colours are the demo's look, not logic a test
# could pin without restating them. test_synthetic.py checks what users rely on: determinism, the
# attributes and the layout.
# pragma: no mutate start
def _shade(c, k: float) -> tuple[int, ...]:
    return tuple(int(min(255, max(0, v * k))) for v in c)


def _mix(c1, c2, t: float) -> tuple[int, ...]:
    return tuple(int(a + (b - a) * t) for a, b in zip(c1, c2, strict=True))


def _jitter(rng: np.random.Generator, c, amount: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(np.asarray(c) + rng.integers(-amount, amount + 1, 3), 0, 255))


def draw_face(index: int, seed: int = 0) -> tuple[Image.Image, dict[str, bool]]:
    """One face (178x218 RGB) and its attributes, determined by ``(seed, index)`` alone."""
    rng = np.random.default_rng([seed, index])
    u = rng.uniform
    male = bool(u() < 0.5)
    skin_name = list(SKIN)[rng.choice(len(SKIN), p=SKIN_P)]
    hair_name = list(HAIR)[rng.choice(len(HAIR), p=HAIR_P)]
    skin, hair = _jitter(rng, SKIN[skin_name], 8), _shade(HAIR[hair_name], u(0.85, 1.15))
    long_hair = bool(u() < (0.15 if male else 0.8))
    bangs, glasses, blush = bool(u() < 0.3), bool(u() < 0.25), bool(u() < (0.1 if male else 0.35))
    smiling = bool(u() < 0.5)
    mouth_open = bool(u() < (0.6 if smiling else 0.25))
    mustache = bool(male and u() < 0.25)
    lipstick = bool(not male and u() < 0.5)
    attrs = {"Bangs": bangs, "Black_Hair": hair_name == "black", "Blond_Hair": hair_name == "blond",
             "Brown_Hair": hair_name == "brown", "Eyeglasses": glasses, "Gray_Hair": hair_name == "gray",
             "Male": male, "Mouth_Slightly_Open": mouth_open, "Mustache": mustache,
             "Pale_Skin": skin_name == "pale", "Rosy_Cheeks": blush, "Smiling": smiling,
             "Wearing_Lipstick": lipstick}

    # Background: a soft gradient between 4 muted corner colours. Blowing 2x2 up to 1/8 size
    # bilinearly, then NEAREST to full size, is far cheaper than one big bilinear resize.
    cw, ch = (W + 2 * PAD) * S, (H + 2 * PAD) * S
    corners = Image.new("RGB", (2, 2))
    base = _mix(rng.integers(0, 256, 3), (128, 128, 128), u(0.3, 0.8))
    corners.putdata([_jitter(rng, base, 40) for _ in range(4)])
    img = corners.resize((cw // 8, ch // 8), Image.Resampling.BILINEAR)
    img = img.resize((cw, ch), Image.Resampling.NEAREST)
    d = ImageDraw.Draw(img, "RGBA")  # RGBA mode blends translucent fills (tinted lenses, blush)

    # All geometry below is in 1x output units; these helpers scale to the 2x padded canvas.
    cx, cy = CX + PAD, CY + PAD
    a, b = 44 * u(0.92, 1.06), 58 * u(0.93, 1.05)  # face half-width / half-height

    def pt(x, y):
        return (x * S, y * S)

    def box(x0, y0, x1, y1):
        return [x0 * S, y0 * S, x1 * S, y1 * S]

    def ell(x, y, rx, ry, **kw):
        d.ellipse(box(x - rx, y - ry, x + rx, y + ry), **kw)

    def outline(t, grow=0.0, lift=0.0):
        # Egg-shaped head: full width above the eye line, jaw narrowing towards the chin.
        f = 1 - 0.28 * max(0.0, -math.cos(t)) ** 2
        return (cx + (1 + grow) * a * f * math.sin(t),
                cy - (1 + grow) * b * math.cos(t) - lift * b * max(0.0, math.cos(t)) ** 2)

    # Shoulders and neck stay in the padded canvas, so the tilt below turns the whole bust.
    cloth = tuple(int(v) for v in rng.integers(25, 230, 3))
    d.ellipse(box(cx - 2.3 * a, cy + 1.42 * b, cx + 2.3 * a, cy + 3.4 * b), fill=cloth)
    d.rectangle(box(cx - 0.42 * a, cy + 0.5 * b, cx + 0.42 * a, cy + 1.6 * b), fill=_shade(skin, 0.82))
    ell(cx, cy + 1.45 * b, 0.42 * a, 0.14 * b, fill=_shade(skin, 0.82))
    if long_hair:  # the mass of hair behind the head, falling to the shoulders
        d.rounded_rectangle(box(cx - 1.22 * a, cy - 0.9 * b, cx + 1.22 * a, cy + u(0.8, 1.6) * b),
                            radius=int(0.7 * a * S), fill=_shade(hair, 0.85))
    else:
        for side in (-1, 1):
            ell(cx + side * 0.97 * a, cy + 0.02 * b, 0.14 * a, 0.2 * b, fill=_shade(skin, 0.9))
    face = [pt(*outline(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    d.polygon(face, fill=skin, outline=_shade(skin, 0.8), width=S)
    ey, ex = cy - 0.1 * b, 0.44 * a  # eye line and half inter-ocular distance
    if blush:
        for side in (-1, 1):
            ell(cx + side * 0.5 * a, cy + 0.28 * b, 0.2 * a, 0.1 * b, fill=(230, 80, 90, 60))

    # Nose: a soft shadow down one side, the tip and nostrils.
    dark_skin = _shade(skin, 0.72)
    ny = cy + 0.3 * b
    d.line([pt(cx + 0.08 * a, ey + 0.1 * b), pt(cx + 0.12 * a, ny - 0.02 * b)],
           fill=dark_skin + (120,), width=S)
    d.arc(box(cx - 0.16 * a, ny - 0.08 * b, cx + 0.16 * a, ny + 0.04 * b), 20, 160,
          fill=dark_skin, width=S)
    for side in (-1, 1):
        ell(cx + side * 0.07 * a, ny, 0.04 * a, 0.022 * b, fill=_shade(skin, 0.5))

    # Mouth: neutral or smiling, closed or open (teeth showing when an open smile).
    lip = (175, 35, 60) if lipstick else _mix(skin, (185, 85, 85), 0.45)
    my, mw = cy + 0.58 * b, 0.3 * a * (1.15 if smiling else 1.0) * u(0.9, 1.1)
    if smiling and mouth_open:
        mb = box(cx - mw, my - 0.1 * b, cx + mw, my + 0.14 * b)
        d.chord(mb, 0, 180, fill=(95, 28, 36), outline=lip, width=2 * S)
        teeth = box(cx - 0.85 * mw, my - 0.06 * b, cx + 0.85 * mw, my + 0.06 * b)
        d.chord(teeth, 0, 180, fill=(245, 242, 232))
    elif smiling:
        sb = box(cx - mw, my - 0.14 * b, cx + mw, my + 0.06 * b)
        d.arc(sb, 15, 165, fill=lip, width=int(0.06 * b * S))
        d.arc(sb, 15, 165, fill=_shade(lip, 0.55), width=S)
    else:
        ell(cx, my, mw, (0.075 if mouth_open else 0.05) * b, fill=lip)
        if mouth_open:
            ell(cx, my, 0.6 * mw, 0.035 * b, fill=(80, 25, 32))
        else:
            d.line([pt(cx - mw, my), pt(cx, my + 0.01 * b), pt(cx + mw, my)],
                   fill=_shade(lip, 0.55), width=S)
    if mustache:
        d.chord(box(cx - 1.05 * mw, my - 0.2 * b, cx + 1.05 * mw, my - 0.02 * b), 180, 360,
                fill=_shade(hair, 0.9))

    # Eyes: whites, iris, pupil, catch-light, upper lid; then brows.
    erx, ery = 0.2 * a, 0.085 * b * u(0.8, 1.15)
    iris, gaze = IRIS[rng.integers(len(IRIS))], u(-0.25, 0.25) * erx
    brow = _shade(hair, 0.75 if hair_name in ("blond", "gray") else 0.9)
    lift = u(0.17, 0.25) * b
    for side in (-1, 1):
        x = cx + side * ex
        ell(x, ey, erx, ery, fill=(250, 248, 244))
        ell(x + gaze, ey, 0.9 * ery, 0.9 * ery, fill=iris)
        ell(x + gaze, ey, 0.42 * ery, 0.42 * ery, fill=(12, 10, 10))
        ell(x + gaze - 0.3 * ery, ey - 0.3 * ery, 0.18 * ery, 0.18 * ery, fill=(255, 255, 255))
        lid = (3 if male else 4) * S // 2  # heavier lids read as lashes
        d.arc(box(x - erx, ey - ery, x + erx, ey + ery), 180, 360, fill=(40, 28, 26), width=lid)
        inner, outer = x - side * 0.2 * a, x + side * 0.3 * a
        arch = [pt(inner, ey - lift + 0.02 * b), pt(x + side * 0.03 * a, ey - lift - 0.05 * b),
                pt(outer, ey - lift + 0.03 * b)]
        d.line(arch, fill=brow, width=int((0.07 if male else 0.045) * b * S), joint="curve")

    # Front hair: one polygon from the outer hair outline over the crown back along the hairline.
    t_side = 1.3 if male else 1.65
    top = [pt(*outline(t, grow=0.07, lift=0.05 if male else 0.13))
           for t in np.linspace(-t_side, t_side, 24)]
    xs = np.linspace(0.92, -0.92, 15)
    if bangs:  # a jagged fringe just above the brows, sometimes swept to one side
        sweep = u(-0.08, 0.08)
        line = [(cx + x * a, ey - lift - u(0.06, 0.14) * b + sweep * x * b + (0.03 * b if i % 2 else 0))
                for i, x in enumerate(xs)]
    else:  # a curved hairline, higher in the middle, at a random height
        hl = u(0.5, 0.66)
        line = [(cx + x * a, cy - hl * b + 0.25 * b * x * x) for x in xs]
    d.polygon(top + [pt(*p) for p in line], fill=hair)

    if glasses:
        frame = _jitter(rng, (30, 30, 30), 25) if u() < 0.7 else _jitter(rng, (150, 60, 40), 60)
        tint = (20, 20, 30, 190) if u() < 0.25 else None  # some are sunglasses
        gw, gh = 0.3 * a, 0.16 * b
        for side in (-1, 1):
            x = cx + side * ex
            d.rounded_rectangle(box(x - gw, ey - gh, x + gw, ey + gh), radius=int(0.4 * gh * S),
                                fill=tint, outline=frame, width=int(1.5 * S))
            arm = [pt(x + side * gw, ey - 0.5 * gh), pt(cx + side * a, ey - 0.6 * gh)]
            d.line(arm, fill=frame, width=S)
        bridge = [pt(cx - ex + gw, ey - 0.3 * gh), pt(cx + ex - gw, ey - 0.3 * gh)]
        d.line(bridge, fill=frame, width=int(1.5 * S))

    # Antialias by box-filtering the 2x canvas down, then pose: one affine map does tilt, scale and
    # offset about the face centre, sampling the padded canvas into 178x218. (Bilinear at 1x is
    # much cheaper than bicubic at 2x and looks the same after the reduce; BENCHMARKS.md.)
    img = img.reduce(S)
    theta, scale = math.radians(u(-7, 7)), u(0.94, 1.08)
    fx, fy = CX + u(-5, 5), CY + u(-4, 4)
    ca, sa = math.cos(theta) / scale, math.sin(theta) / scale
    coeffs = (ca, -sa, cx - ca * fx + sa * fy, sa, ca, cy - sa * fx - ca * fy)
    img = img.transform((W, H), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    # A little sensor-like noise so the images are not perfectly flat (uniform integer noise,
    # std ~2.6: much cheaper than float gaussian noise and just as good here).
    noisy = np.asarray(img, np.int16) + rng.integers(-4, 5, (H, W, 3), dtype=np.int16)
    img = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    return img, attrs
# pragma: no mutate end


def _write_range(root: str, start: int, stop: int, seed: int) -> list[dict[str, bool]]:
    """Draw and save images ``start..stop-1`` (0-based) into root/img_align_celeba."""
    out = []
    for i in range(start, stop):
        img, attrs = draw_face(i, seed)
        img.save(os.path.join(root, "img_align_celeba", f"{i + 1:06d}.jpg"), "JPEG", quality=90)
        out.append(attrs)
    return out


def make_faces(root: str | os.PathLike, n: int = 4000, seed: int = 0,
               workers: int | None = None) -> pathlib.Path:
    """Write n synthetic faces in the CelebA layout into root (created). Returns root as a Path.

    Writes ``img_align_celeba/000001.jpg...``, ``list_eval_partition.txt`` (first 80% train,
    next 10% valid, last 10% test) and ``list_attr_celeba.txt``. ``workers`` processes are used
    (default ``min(os.cpu_count(), 8)``, in-process when n < 200); ``workers=1`` forces in-process.
    The files are identical whatever the worker count.
    """
    root = pathlib.Path(root)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = 1 if n < 200 else min(os.cpu_count() or 1, 8)
    if workers <= 1:
        attrs = _write_range(str(root), 0, n, seed)
    else:
        step = max(1, math.ceil(n / (workers * 8)))  # several chunks per worker to balance load
        starts = list(range(0, n, step))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunks = pool.map(_write_range, [str(root)] * len(starts), starts,
                              [min(s + step, n) for s in starts], [seed] * len(starts))
            attrs = [a for chunk in chunks for a in chunk]
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    split = [0 if i < n * 8 // 10 else 1 if i < n * 9 // 10 else 2 for i in range(n)]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{m} {s}\n" for m, s in zip(names, split, strict=True)))
    # CelebA style: "000001.jpg -1  1 ..." (values right-aligned in 2 columns).
    rows = [m + " " + " ".join(f"{1 if a[k] else -1:2d}" for k in ATTRIBUTES)
            for m, a in zip(names, attrs, strict=True)]
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(rows) + "\n")
    return root


def default_root(n: int = 4000, seed: int = 0) -> pathlib.Path:
    """The built-in dataset, generated once into the cache folder and reused.

    Cache folder: $FASTDCGAN_CACHE if set, else $XDG_CACHE_HOME/fastdcgan, else ~/.cache/fastdcgan;
    dataset folder: <cache>/synthetic-faces-v{VERSION}-n{n}-s{seed}.
    Built atomically: generate into a temporary sibling folder, then os.rename into place, so an
    interrupted build never leaves a folder that looks complete (and a concurrent builder that loses
    the rename race just removes its temp folder and uses the winner's).
    """
    final = cache_dir() / f"synthetic-faces-v{VERSION}-n{n}-s{seed}"
    if final.is_dir():  # only a finished build is ever renamed to this name
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Tidy temp folders of builds that died long ago (a live concurrent build touches its image
    # folder every few ms). Races with another cleaner are harmless, hence the broad except.
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            touched = max(p.stat().st_mtime for p in (stale, stale / "img_align_celeba") if p.exists())
            if time.time() - touched > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        except (OSError, ValueError):
            pass
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # 15 s for the default 4000 measured on a busy 2-core machine; say so before the silent wait.
    print(f"making {n} synthetic faces in {final} (once, ~{max(1, round(n * 15 / 4000))} s)", flush=True)
    try:
        make_faces(tmp, n=n, seed=seed)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a real failure, not a lost race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return final
