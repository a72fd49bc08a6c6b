"""Hostile and unusual inputs, made on the spot. Each entry: file name -> expected outcome.

"ok": a verdict row (no error); "error:<substring>": a row whose error contains the substring.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import BLUE, RED, coloured, encode


def _exif_rotated() -> bytes:
    # Stored 60x30 (landscape) with EXIF orientation 6 (rotate 90): decoded it is 30 wide, 60 high.
    img = coloured(RED, size=(60, 30), seed=7)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif)


def _animated(fmt: str) -> bytes:
    frames = [coloured(c, size=(40, 40), seed=i) for i, c in enumerate((RED, BLUE, RED))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _png16() -> bytes:
    arr = (np.random.default_rng(3).random((40, 48)) * 65535).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def _bomb() -> bytes:
    # A real 1-bit PNG whose header claims 12000 x 12000 = 144 MP: a few KB on disk, 432 MB decoded as RGB.
    return encode(Image.new("1", (12000, 12000)), "PNG", optimize=True)


def make_hostile_files(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    good_jpeg = encode(coloured(RED, seed=11), "JPEG")
    files: dict[str, tuple[bytes, str]] = {
        "zero_byte.jpg": (b"", "error:empty file"),
        "text_named.jpg": (b"this is a text file, not a JPEG\n" * 10, "error:not an image"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "error:decode"),
        "bomb.png": (_bomb(), "error:decompression bomb"),
        "cmyk.jpg": (encode(coloured(RED, seed=12).convert("CMYK"), "JPEG"), "ok"),
        "sixteen_bit.png": (_png16(), "ok"),
        "grayscale.jpg": (encode(coloured(RED, seed=13).convert("L"), "JPEG"), "ok"),
        "alpha.png": (encode(coloured(BLUE, seed=14).convert("RGBA"), "PNG"), "ok"),
        "exif_rotated.jpg": (_exif_rotated(), "ok"),
        "animated.gif": (_animated("GIF"), "ok"),
        "animated.webp": (_animated("WEBP"), "ok"),
        "good.jpg": (good_jpeg, "ok"),
    }
    out = {}
    for name, (data, expect) in files.items():
        (root / name).write_bytes(data)
        out[name] = expect
    # Unreadable even for root: /proc/self/mem stats as a regular file but reading offset 0 fails (EIO).
    os.symlink("/proc/self/mem", root / "unreadable.jpg")
    out["unreadable.jpg"] = "error:read"
    os.symlink(root / "does-not-exist.jpg", root / "broken_link.jpg")
    out["broken_link.jpg"] = "error:broken symlink"
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    out["loop_a.jpg"] = "error:symlink loop"
    out["loop_b.jpg"] = "error:symlink loop"
    os.mkfifo(root / "fifo.jpg")  # opening it for reading would block: it must be refused, not opened
    out["fifo.jpg"] = "error:not a regular file"
    # A directory symlink loop must not make the walk recurse forever.
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "back_to_root")
    non_utf8 = os.fsencode(str(root)) + b"/caf\xe9_latin1.jpg"
    with open(non_utf8, "wb") as f:
        f.write(encode(coloured(BLUE, seed=15), "JPEG"))
    out["caf\\xe9_latin1.jpg"] = "ok"
    return out
