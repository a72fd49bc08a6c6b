"""What social media does to an image, applied to eval queries: downscale, then re-compress as JPEG.

`--degrade-queries jpeg75,scale0.75` judges degraded copies of the query images against a support index of
the *clean* images (users enroll the samples they collected; the crawl brings re-posted, shrunk copies).
The copies are written once to a temporary folder and embedded through scan's own stages.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError

_PART = re.compile(r"^(jpeg(?P<q>\d{1,3})|scale(?P<s>\d*\.?\d+))$")


@dataclass(frozen=True)
class Degradation:
    jpeg_quality: int | None = None
    scale: float | None = None

    @property
    def name(self) -> str:
        parts = []
        if self.scale is not None:
            parts.append(f"scale{self.scale:g}")
        if self.jpeg_quality is not None:
            parts.append(f"jpeg{self.jpeg_quality}")
        return "+".join(parts)

    def apply(self, data: bytes) -> bytes:
        """Image bytes -> degraded JPEG bytes (first frame, RGB, EXIF orientation applied)."""
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        if self.scale is not None and self.scale != 1.0:
            w, h = im.size
            im = im.resize((max(1, round(w * self.scale)), max(1, round(h * self.scale))), Image.BILINEAR,
                           reducing_gap=None)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=self.jpeg_quality if self.jpeg_quality is not None else 95)
        return buf.getvalue()


def parse_degradation(spec: str) -> Degradation:
    """'jpeg75,scale0.75' -> Degradation(75, 0.75); the scale is applied first, as a re-post would."""
    quality = scale = None
    for raw in (p.strip() for p in spec.split(",") if p.strip()):
        m = _PART.match(raw)
        if not m:
            raise UsageError(f"--degrade-queries {spec!r}: expected parts like jpeg75 and scale0.75, comma-separated")
        if m.group("q") is not None:
            quality = int(m.group("q"))
            if not 1 <= quality <= 100:
                raise UsageError(f"--degrade-queries: JPEG quality {quality} is outside 1..100")
        else:
            scale = float(m.group("s"))
            if not 0.05 <= scale <= 1.0:
                raise UsageError(f"--degrade-queries: scale {scale} is outside 0.05..1")
    if quality is None and scale is None:
        raise UsageError(f"--degrade-queries {spec!r}: nothing to apply")
    return Degradation(quality, scale)


def degraded_copy(ds, degradation: Degradation, workdir: Path):
    """Write a degraded copy of every image under workdir; return (dataset over the copies, ok mask)."""
    paths = np.empty(len(ds), dtype=object)
    ok = np.zeros(len(ds), dtype=bool)
    for i, src in enumerate(ds.paths):
        dst = workdir / f"{i:07d}.jpg"
        paths[i] = str(dst)
        try:
            dst.write_bytes(degradation.apply(Path(src).read_bytes()))
            ok[i] = True
        except Exception:  # an image Pillow cannot read is already an error row in the clean run
            pass
    return replace(ds, paths=paths), ok
