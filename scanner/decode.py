"""Decode stage: image bytes -> uint8 RGB SxS views, per batch, by the model's `ViewSpec`.

A `ViewSpec` (from the model card, `--views` overriding the count) is the one definition of how an image of any
size becomes model input, used by scan, enroll, eval, the Ray engine, bench and training validation alike:
- `resize: native` (models since 0.3.0): pixels stay as the camera or generator wrote them; only an image whose
  shorter side is under S is scaled up to S. A 4,000 x 3,000 photo is *cropped*, not shrunk 12x: shrinking
  erases the pixel-level traces the model was trained on (native-pixel crops).
- `resize: shorter_side` (older models): the shorter side is scaled to S.
- then up to `views` crops of S x S at fixed relative positions (`VIEW_POSITIONS`: the centre first, then the
  four quarter points, then the edge midpoints). An image that is not at least 1.5 S on a side after the resize
  rule gets the centre view alone (its crops would mostly repeat the same pixels), so a kit-sized image costs one
  embedding whatever `views` says. The embedder averages a file's view embeddings (`Embedder.embed_batch`).
- `mirror: true` (a card option; no shipped model uses it): each view is embedded a second time flipped left to
  right and the two embeddings are averaged with the others, at twice the embedding cost. Measured on three seeds
  of the default's recipe it helped on some proxies and hurt detection AUC on others (docs/benchmarks.md). The
  decoder never produces the mirrored copy; the embedder flips the pixels it has.

DALI decodes and resizes (`mixed`: nvJPEG on the GPU; its CPU pipeline where there is none). On the CPU a large
JPEG (`PARTIAL_DECODE_AREA` times the input or more, not EXIF-rotated) is decoded only inside the window that
holds its views (`ViewSpec.window`): libjpeg-turbo skips the rest, and the pixels inside are the ones a whole
decode gives (tested against Pillow for every chroma subsampling and progressive files); a 12 MP photo's five views
cost about half a whole decode. Pillow serves what DALI cannot take: formats it has no decoder for (GIF, ...),
files whose end is missing (`looks_whole`), and, one item at a time, every item of a batch that DALI failed on,
so one hostile file costs its own row an `error`, never the batch. After such a failure DALI is not run again in
that process (`DaliImageDecoder` says why); the isolated decoder's child then hands over to a fresh one.

A header sniff (Pillow reads headers only, no pixels) runs first for every item: it rejects non-images and
decompression bombs (width x height over `max_pixels`) before any decoder allocates memory for them.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from imgscan_core.errors import UsageError


def _register_phone_formats() -> None:
    """HEIC/HEIF (what phones post) through pillow-heif; AVIF is in Pillow itself (>= 11.3). Both then pass the
    same header sniff and pixel limits as every format, and decode with Pillow (DALI has no decoder for them)."""
    try:
        import pillow_heif
    except ImportError:  # an install without it: .heic files get "not an image" rows, as before
        return
    pillow_heif.register_heif_opener()


_register_phone_formats()

DEFAULT_MAX_PIXELS = 100_000_000

# Pillow format names that DALI's decoders take. Everything else goes to Pillow.
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "JPEG2000"})

RESIZE_MODES = ("native", "shorter_side")
# Relative positions (x, y) of the crop window's top-left corner within the free space (W - S, H - S).
VIEW_POSITIONS = ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75), (0.75, 0.25), (0.25, 0.75),
                  (0.5, 0.25), (0.5, 0.75), (0.25, 0.5), (0.75, 0.5))
MAX_VIEWS = len(VIEW_POSITIONS)


@dataclass(frozen=True)
class ViewSpec:
    """How an image becomes model input: see the module docstring."""

    size: int
    resize: str = "native"
    views: int = 1
    mirror: bool = False

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r}: expected one of {', '.join(RESIZE_MODES)}")
        if not 1 <= self.views <= MAX_VIEWS:
            raise ValueError(f"views {self.views}: expected 1..{MAX_VIEWS}")
        if self.size < 1:
            raise ValueError(f"size {self.size}: must be positive")

    @property
    def positions(self) -> tuple[tuple[float, float], ...]:
        return VIEW_POSITIONS[: self.views]

    def scaled_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize rule, before cropping."""
        short = min(width, height)
        if self.resize == "native" and short >= self.size:
            return width, height
        scale = self.size / short
        return max(self.size, round(width * scale)), max(self.size, round(height * scale))

    def count_for(self, width: int, height: int) -> int:
        """Views an image of this (decoded) size gets: all of them once it is 1.5 S on a side after resizing."""
        new_w, new_h = self.scaled_size(width, height)
        return self.views if 2 * max(new_w, new_h) >= 3 * self.size else 1

    def origins(self, width: int, height: int) -> list[tuple[int, int]]:
        """(left, top) of each view an image of this decoded size gets, in the image after the resize rule."""
        new_w, new_h = self.scaled_size(width, height)
        return [(_crop_origin(px, new_w - self.size), _crop_origin(py, new_h - self.size))
                for px, py in self.positions[: self.count_for(width, height)]]

    def window(self, width: int, height: int) -> "Window | None":
        """The smallest window holding every view, where decoding that window alone gives the same views (no
        resize: native pixels); None where the whole image is needed or the window is nearly all of it."""
        if self.scaled_size(width, height) != (width, height):
            return None
        origins = self.origins(width, height)
        left, top = min(x for x, _ in origins), min(y for _, y in origins)
        right, bottom = max(x for x, _ in origins) + self.size, max(y for _, y in origins) + self.size
        if (right - left) * (bottom - top) >= 0.9 * width * height:
            return None
        # each view's relative position in the window (as DALI's crop places it: pos * (extent - S), rounded)
        positions = tuple(((x - left) / max(1, right - left - self.size), (y - top) / max(1, bottom - top - self.size))
                          for x, y in origins)
        return Window(left, top, right - left, bottom - top, positions)

    def to_card(self) -> dict:
        card = {"resize": self.resize, "crop": "views", "views": self.views, "interpolation": "bilinear_antialias"}
        if self.mirror:  # absent means False: cards written before mirroring existed read the same
            card["mirror"] = True
        return card

    @classmethod
    def from_card(cls, size: int, preprocessing: dict | None, views: int | None = None) -> "ViewSpec":
        pre = preprocessing or {}
        resize = pre.get("resize", "shorter_side")
        mirror = pre.get("mirror", False)
        if not isinstance(mirror, bool):
            raise ValueError(f"mirror {mirror!r}: expected true or false")
        return cls(size=size, resize=resize, views=int(views if views is not None else pre.get("views", 1)),
                   mirror=mirror)

    def describe(self) -> str:
        """For logs and reports: '5 views, mirrored'."""
        return f"{self.views} view{'s' if self.views != 1 else ''}" + (", mirrored" if self.mirror else "")


def view_spec_for(card, views: int | None = None) -> ViewSpec:
    """The model card's ViewSpec, `--views` overriding its count; UsageError naming whichever is unusable."""
    try:
        spec = ViewSpec.from_card(card.input_size, card.preprocessing)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"model {card.model_id}: unusable preprocessing in the card ({exc})") from None
    if views is None:
        return spec
    try:
        return dataclasses.replace(spec, views=views)
    except ValueError:
        raise UsageError(f"--views {views}: expected 1..{MAX_VIEWS}") from None


@dataclass(frozen=True)
class Window:
    """A part of an image to decode instead of all of it, and where each view lies inside it."""

    left: int
    top: int
    width: int
    height: int
    positions: tuple[tuple[float, float], ...]  # per view, relative (x, y) in the window


@dataclass
class DecodedBatch:
    """Decoded images of one batch: consecutive rows of `pixels` per item whose error is None, in order."""

    pixels: "object"  # uint8 [sum(view_counts), S, S, 3] (NHWC, as decoders produce it): numpy on CPU, torch on CUDA
    sizes: list[tuple[int, int] | None]  # (width, height) as decoded, after EXIF rotation, per item
    errors: list[str | None]  # per item
    view_counts: list[int] | None = None  # rows of `pixels` per item whose error is None; None: one each
    # per item, when asked for: the file's provenance entries (scanner.provenance), None for an item with no bytes
    provenance: list[list[dict] | None] | None = None

    def view_starts(self) -> np.ndarray | None:
        """The first row of `pixels` of each decoded item; None when every item has one row."""
        counts = self.view_counts
        if counts is None or len(counts) == self.pixels.shape[0]:
            return None
        return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


@dataclass
class Sniffed:
    format: str | None
    error: str | None
    size: tuple[int, int] | None = None  # (width, height) as stored, before EXIF orientation
    orientation: int = 1  # EXIF orientation, read only for JPEGs large enough to be decoded in part
    # False when the file's end is visibly missing or damaged (`looks_whole`): such files go to Pillow, never DALI
    whole: bool = True


# A JPEG this many times the input's area or more is decoded in part (the views' window) when it is not rotated.
PARTIAL_DECODE_AREA = 4
_JPEG_FORMATS = ("JPEG", "MPO")
_EXIF_ORIENTATION = 0x0112


def _large_for_a_window(width: int, height: int, spec: ViewSpec) -> bool:
    return width * height >= PARTIAL_DECODE_AREA * spec.size ** 2


def sniff(data: bytes, max_pixels: int, spec: ViewSpec | None = None) -> Sniffed:
    """Identify the format from the header and refuse decompression bombs, without decoding pixels: images over
    `max_pixels` as stored, or (with `spec`) once the resize rule has scaled them (a 1 x 20,000 PNG of 164 bytes
    would become 256 x 5,120,000 pixels)."""
    if not data:
        return Sniffed(None, "decode: empty file")
    size, scan_at = _jpeg_walk(data)
    if size is not None and spec is not None and not _large_for_a_window(*size, spec):
        whole = _jpeg_ends(data, scan_at)
        return _checked(Sniffed("JPEG", None, size, whole=whole), max_pixels, spec)  # no EXIF needed at this size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit below decides
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
                orientation = 1
                if spec is not None and fmt in _JPEG_FORMATS and _large_for_a_window(w, h, spec):
                    orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Image.UnidentifiedImageError:
        return Sniffed(None, "decode: not an image (unrecognised format)")
    except Image.DecompressionBombError:
        return Sniffed(None, f"decode: decompression bomb refused (over {max_pixels} pixels)")
    except Exception as exc:  # Pillow raises many types on hostile headers; all mean "not an image we take"
        return Sniffed(None, f"decode: not a recognised image ({_short(exc)})")
    return _checked(Sniffed(fmt, None, (w, h), orientation, looks_whole(data, fmt)), max_pixels, spec)


def _checked(sniffed: Sniffed, max_pixels: int, spec: ViewSpec | None) -> Sniffed:
    """The sniffed image refused when it has no pixels or too many, as stored or once scaled."""
    fmt, (w, h) = sniffed.format, sniffed.size
    if w <= 0 or h <= 0:
        return Sniffed(fmt, "decode: image has zero width or height")
    if w * h > max_pixels:
        return Sniffed(fmt, f"decode: decompression bomb refused ({w}x{h} is over {max_pixels} pixels)")
    if spec is not None:
        sw, sh = spec.scaled_size(w, h)
        if sw * sh > max_pixels:
            return Sniffed(fmt, f"decode: extreme aspect ratio refused ({w}x{h} would be {sw}x{sh} after scaling, "
                                f"over {max_pixels} pixels)")
    return sniffed


# JPEG frame headers (SOF0-SOF15 but DHT, JPG and DAC, which share the range), and markers without a length.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first frame header, the one libjpeg decodes, walking the markers before it;
    None when it is not a JPEG or the walk fails (Pillow's parse then decides). Pillow's own header parse, in
    Python, cost a twelfth of the whole decode stage of a 256-px JPEG (docs/benchmarks.md, "Decode stage")."""
    return _jpeg_walk(data)[0]


def jpeg_scan_offset(data: bytes) -> int | None:
    """Where a JPEG's first scan data starts (everything before it is markers and segments: APPn metadata, tables,
    the frame header); None when it is not a JPEG or the walk fails."""
    return _jpeg_walk(data)[1]


def _jpeg_walk(data: bytes) -> tuple[tuple[int, int] | None, int | None]:
    """A JPEG's markers walked up to its first scan: ((width, height) of the first frame header, offset of the
    first scan's data); either None where the walk does not get there."""
    if data[:3] != b"\xff\xd8\xff":
        return None, None
    pos, n, size = 2, len(data), None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return size, None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker == 0xD9:  # the end before any scan
            return size, None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return size, None
        if marker == 0xDA:
            return size, (pos + 2 + length if size is not None else None)
        if marker in _SOF_MARKERS and size is None:
            if pos + 9 > n:
                return None, None
            size = int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
        pos += 2 + length
    return size, None


def _jpeg_ends(data: bytes, scan_at: int | None) -> bool:
    """An end-of-image marker after the first scan's start (one in an EXIF thumbnail, before it, does not count)."""
    return scan_at is not None and data.rfind(b"\xff\xd9", scan_at) >= 0


def looks_whole(data: bytes, fmt: str | None) -> bool:
    """Whether a JPEG, PNG or WebP file has its end: a JPEG's end-of-image marker after its first scan, a PNG's
    chunks intact (lengths, CRCs) up to IEND, a WebP's RIFF length all there. Other formats: True. A cut-off
    download is the usual damaged file in a crawl; both decoders refuse it, but DALI is unusable in the process
    after any failure (`DaliImageDecoder`), so such files are sent to Pillow and never reach it."""
    if fmt in _JPEG_FORMATS:
        return _jpeg_ends(data, _jpeg_walk(data)[1])
    if fmt == "PNG":
        return _png_intact(data)
    if fmt == "WEBP":
        return data[:4] == b"RIFF" and len(data) >= 8 + int.from_bytes(data[4:8], "little")
    return True


def partial_window(sniffed: Sniffed, spec: ViewSpec) -> Window | None:
    """The window of a JPEG to decode instead of all of it (ViewSpec.window), None for the whole image: only
    JPEGs (libjpeg-turbo skips the rest without decoding it, with the same pixels inside), only unrotated ones
    (the window is placed on the image as shown), only large ones (below that, whole images cost as little)."""
    if sniffed.format not in _JPEG_FORMATS or sniffed.orientation != 1 or sniffed.size is None:
        return None
    if not _large_for_a_window(*sniffed.size, spec):
        return None
    return spec.window(*sniffed.size)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def png_chunk_spans(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """A PNG's chunks as (type, start, end) of each whole chunk (length, type, data and CRC) in `data`, up to IEND;
    None when it is not a PNG or a chunk's length runs past the end. Nothing is copied or decompressed."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    spans, pos, n = [], len(PNG_SIGNATURE), len(data)
    while pos + 12 <= n:
        kind, end = data[pos + 4:pos + 8], pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        if end > n:
            return None
        spans.append((kind, pos, end))
        pos = end
        if kind == b"IEND":
            break
    return spans


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """A PNG's chunks as (type, whole chunk bytes), up to IEND; None as `png_chunk_spans`."""
    spans = png_chunk_spans(data)
    return None if spans is None else [(kind, data[start:end]) for kind, start, end in spans]


def _png_intact(data: bytes) -> bool:
    """Every chunk up to IEND present with a matching CRC (zlib's crc32: a small fraction of inflating them)."""
    spans = png_chunk_spans(data)
    if not spans or spans[-1][0] != b"IEND":
        return False
    view = memoryview(data)
    return all(zlib.crc32(view[start + 4:end - 4]) == int.from_bytes(view[end - 4:end], "big")
               for _, start, end in spans)


def png_without_text(data: bytes) -> bytes | None:
    """A PNG's bytes with its text chunks (tEXt, zTXt, iTXt) left out; None when it is not a PNG, has none, or its
    chunk layout is broken. Text never changes pixels, and Pillow refuses a whole file whose text inflates past its
    MAX_TEXT_CHUNK: without this, a prompt padded to a zip bomb would keep the image from ever being judged."""
    chunks = png_chunks(data)
    if chunks is None or not any(kind in _PNG_TEXT_CHUNKS for kind, _ in chunks):
        return None
    return PNG_SIGNATURE + b"".join(chunk for kind, chunk in chunks if kind not in _PNG_TEXT_CHUNKS)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def pillow_decode(data: bytes, spec: ViewSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode the first frame, apply EXIF orientation, make 8-bit RGB, then `spec`'s resize rule and views,
    matching the DALI path (bilinear with antialiasing). Returns uint8 [views, S, S, 3] and (width, height).
    Raises on undecodable data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # animated GIF/WebP/APNG: first frame
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb8(im)
    width, height = rgb.size
    return view_crops(rgb, spec), (width, height)


def _to_rgb8(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: scale to 8 bits instead of letting convert() clip everything to white.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return im.convert("RGB")  # CMYK, palette, L, LA, RGBA (alpha dropped, as DALI's RGB output does)


def _crop_origin(pos: float, free: int) -> int:
    return int(pos * free + 0.5)  # rounded half up, as DALI places a crop window at crop_pos * (extent - crop)


def view_crops(im: Image.Image, spec: ViewSpec) -> np.ndarray:
    """A Pillow RGB image -> uint8 [views, S, S, 3] by `spec` (the rule the DALI pipeline applies too)."""
    size = spec.size
    origins = spec.origins(*im.size)
    new_w, new_h = spec.scaled_size(*im.size)
    if (new_w, new_h) != im.size:
        im = im.resize((new_w, new_h), Image.BILINEAR)
    out = np.empty((len(origins), size, size, 3), dtype=np.uint8)  # copies: a crop view would keep the image alive
    for v, (left, top) in enumerate(origins):
        out[v] = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return out


class DaliUnusable(RuntimeError):
    """DALI failed earlier in this process and is not run again in it (`DaliImageDecoder`)."""


_pipelines_kept_after_failure: list = []  # never destroyed: see DaliImageDecoder


def dali_failed_in_process() -> bool:
    """Whether a DALI pipeline of this process has failed; DALI is not run again in it after that."""
    return bool(_pipelines_kept_after_failure)


class DaliImageDecoder:
    """DALI pipelines fed raw bytes through external_source: `run` decodes whole images, `run_windows` (CPU) a
    window of each (large JPEGs: `partial_window`); the window pipeline is built the first time a batch needs it.

    A failed run invalidates its pipeline, and DALI 2.4 on the CPU is not safe to use again in that process:
    building a fresh pipeline after a failure, or destroying the failed one, crashed the process (SIGSEGV in
    DALI's own threads) in most runs of a test that decodes in a second thread while another works (the pattern
    of a scan's feeder). So after the first failure every run in the process raises `DaliUnusable` (its callers
    then decode with Pillow) and the failed pipeline is kept, not destroyed. The isolated decoder's child exits
    after such a batch and a fresh child takes the next one; files whose end is missing (`looks_whole`) never reach
    DALI, so an ordinary crawl seldom pays that restart."""

    def __init__(self, spec: ViewSpec, max_batch: int, device: str = "cpu", num_threads: int = 2):
        self.spec, self.max_batch, self.device, self.num_threads = spec, max_batch, device, num_threads
        self._pipes: dict[str, object] = {}

    def _pipeline_args(self) -> dict:
        return {"batch_size": self.max_batch, "num_threads": self.num_threads,
                "device_id": 0 if self.device == "cuda" else None, "prefetch_queue_depth": 1,
                "exec_async": False, "exec_pipelined": False}

    def _build_whole(self, upscale: bool = False):
        """Whole images. On the CPU with the native rule, `upscale` builds the pipeline for images whose shorter
        side is under S (scaled up to S); the other pipeline never resamples: resampling an image to its own size
        cost 2/3 of the decode stage at 256 px (docs/benchmarks.md, "Decode stage"). Items are routed by the size
        their header gave (`ImageDecoder.decode`)."""
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import math as dali_math
        from nvidia.dali import pipeline_def

        on_gpu = self.device == "cuda"
        spec = self.spec
        size = spec.size

        @pipeline_def(**self._pipeline_args())
        def pipeline():
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            images = fn.decoders.image(raw, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
            shapes = images.shape()  # decoded H, W, C (EXIF orientation applied), before resizing
            if spec.resize != "native":
                images = fn.resize(images, resize_shorter=size, antialias=True, interp_type=types.INTERP_LINEAR)
            elif on_gpu or upscale:
                # Only images whose shorter side is under S are scaled (up to S); for the others the target is
                # their own shorter side, which DALI's resampling reproduces pixel for pixel (tested).
                short = dali_math.min(shapes[0], shapes[1])
                target = fn.cast(dali_math.max(short, size), dtype=types.FLOAT)
                images = fn.resize(images, resize_shorter=target, antialias=True, interp_type=types.INTERP_LINEAR)
            if on_gpu:  # dense outputs for feed_ndarray; crops are cheap there
                crops = [fn.crop(images, crop=(size, size), crop_pos_x=px, crop_pos_y=py)
                         for px, py in spec.positions]
                return (shapes, *crops)
            # On the CPU only the views an image gets are cut: the others are 1 x 1 (ViewSpec.count_for).
            scaled = images.shape()
            all_views = fn.cast(dali_math.max(scaled[0], scaled[1]) * 2 >= 3 * size, dtype=types.INT32)
            extent = fn.cast(all_views * (size - 1) + 1, dtype=types.FLOAT)
            (cx, cy), *others = spec.positions
            crops = [fn.crop(images, crop=(size, size), crop_pos_x=cx, crop_pos_y=cy)]
            crops += [fn.crop(images, crop_h=extent, crop_w=extent, crop_pos_x=px, crop_pos_y=py) for px, py in others]
            return (shapes, *crops)

        return pipeline()

    def _build_windows(self):
        """CPU: decode each image's window alone (libjpeg-turbo skips what lies outside it) and cut its views at
        their places in the window. A window holds every view of a native-size image: no resize."""
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        size, views = self.spec.size, self.spec.views

        @pipeline_def(**self._pipeline_args())
        def pipeline():
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
            extent = fn.external_source(name="extent", dtype=types.FLOAT, ndim=1)
            positions = fn.external_source(name="positions", dtype=types.FLOAT, ndim=1)
            images = fn.decoders.image_slice(raw, anchor, extent, axis_names="WH", normalized_anchor=False,
                                             normalized_shape=False, device="cpu", output_type=types.RGB)
            crops = [fn.crop(images, crop=(size, size), crop_pos_x=positions[2 * v], crop_pos_y=positions[2 * v + 1])
                     for v in range(views)]
            return (images.shape(), *crops)

        return pipeline()

    def _pipe(self, kind: str):
        if kind not in self._pipes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                builders = {"whole": self._build_whole, "upscale": lambda: self._build_whole(upscale=True),
                            "window": self._build_windows}
                pipe = builders[kind]()
                pipe.build()
            self._pipes[kind] = pipe
        return self._pipes[kind]

    def build(self) -> None:
        """Build the whole-image pipeline now rather than on the first batch (the isolated child does, before
        saying ready)."""
        self._pipe("whole")

    def _run(self, kind: str, inputs: dict):
        if dali_failed_in_process():
            raise DaliUnusable("DALI failed earlier in this process")
        pipe = self._pipe(kind)
        try:
            for name, values in inputs.items():
                pipe.feed_input(name, values)
            return pipe.run()
        except Exception:
            _pipelines_kept_after_failure.extend(self._pipes.values())  # holds the failed one: DALI is now off
            raise

    def run(self, datas: list[bytes], upscale: bool = False):
        """Decode a list of encoded images whole (`upscale`, CPU: images whose shorter side is under S); returns
        (views per item, numpy int64 [n, 3] shapes). An item's views are a sequence of uint8 [S, S, 3] to be sliced
        to ViewSpec.count_for: numpy arrays on CPU, one torch CUDA tensor [views, S, S, 3] on the GPU. Raises if any
        item fails (the caller then decodes the items one by one elsewhere)."""
        kind = "upscale" if upscale and self.device != "cuda" else "whole"
        shapes, *views = self._run(kind, {"raw": [np.frombuffer(d, dtype=np.uint8) for d in datas]})
        shapes = np.asarray(shapes.as_array(), dtype=np.int64).reshape(len(datas), -1)
        if self.device == "cuda":
            import torch
            from nvidia.dali.plugin.pytorch import feed_ndarray

            outs = []
            for view in views:
                dense = view.as_tensor()
                out = torch.empty(dense.shape(), dtype=torch.uint8, device="cuda")
                feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
                outs.append(out)
            return list(torch.stack(outs, dim=1)), shapes
        return [[np.array(view[i]) for view in views] for i in range(len(datas))], shapes

    def run_windows(self, datas: list[bytes], windows: list[Window]) -> list:
        """CPU: each image's views from its window alone; per item a list of uint8 [S, S, 3] (as `run`)."""
        positions = []
        for window in windows:
            placed = [p for xy in window.positions for p in xy]
            positions.append(np.asarray(placed + [0.0] * (2 * self.spec.views - len(placed)), dtype=np.float32))
        _, *views = self._run("window", {
            "raw": [np.frombuffer(d, dtype=np.uint8) for d in datas],
            "anchor": [np.asarray((w.left, w.top), dtype=np.float32) for w in windows],
            "extent": [np.asarray((w.width, w.height), dtype=np.float32) for w in windows],
            "positions": positions,
        })
        return [[np.array(view[i]) for view in views] for i in range(len(datas))]


def provenance_of(datas: list[bytes | None]) -> list[list[dict] | None]:
    from scanner.provenance import read_provenance

    return [read_provenance(d) if d is not None else None for d in datas]


class ImageDecoder:
    """Decode one batch of read results: sniff, DALI for what it takes, Pillow for the rest."""

    def __init__(self, spec: ViewSpec, max_batch: int, device: str = "cpu",
                 max_pixels: int = DEFAULT_MAX_PIXELS, num_threads: int = 2):
        self.spec = spec
        self.size = spec.size
        self.device = device
        self.max_pixels = max_pixels
        self.dali = DaliImageDecoder(self.spec, max_batch, device, num_threads)

    def decode(self, datas: list[bytes | None], provenance: bool = False, pixels_out=None) -> DecodedBatch:
        """`provenance`: also read each file's provenance evidence from its bytes (before any are swapped).
        `pixels_out(rows)`: where the CPU pixels go (an array [rows, S, S, 3]; the isolated child's shared memory),
        instead of a new array."""
        provenance_entries = provenance_of(datas) if provenance else None
        datas = list(datas)  # an item may be swapped for its pixel-only bytes (png_without_text)
        n = len(datas)
        errors: list[str | None] = [None] * n
        sizes: list[tuple[int, int] | None] = [None] * n
        frames: list[object | None] = [None] * n  # per item: a tensor [S,S,3] once decoded
        for_dali, for_pillow = [], []
        sniffs: list[Sniffed | None] = [None] * n
        for i, data in enumerate(datas):
            if data is None:
                errors[i] = "decode: no data"
                continue
            sniffed = sniff(data, self.max_pixels, self.spec)
            if sniffed.error and (stripped := png_without_text(data)) is not None:
                retry = sniff(stripped, self.max_pixels, self.spec)
                if retry.error is None:  # only its text was in the way: judge the pixels
                    datas[i], sniffed = stripped, retry
            sniffs[i] = sniffed
            if sniffed.error:
                errors[i] = sniffed.error
            elif sniffed.format in DALI_FORMATS and sniffed.whole and not dali_failed_in_process():
                for_dali.append(i)
            else:
                for_pillow.append(i)
        windows = {i: w for i in for_dali if self.device != "cuda" and (w := partial_window(sniffs[i], self.spec))}
        whole = [i for i in for_dali if i not in windows]
        small = {i for i in whole if self.spec.resize == "native" and min(sniffs[i].size) < self.size}
        for group, upscale in (([i for i in whole if i not in small], False), ([i for i in whole if i in small], True)):
            if not group:
                continue
            try:
                pixels, shapes = self.dali.run([datas[i] for i in group], upscale=upscale)
                for row, i in enumerate(group):
                    sizes[i] = (int(shapes[row][1]), int(shapes[row][0]))
                    frames[i] = pixels[row][: self.spec.count_for(*sizes[i])]
            except Exception:
                for_pillow.extend(group)  # isolate the bad item(s): decode this batch one by one
        if windows:
            try:
                items = list(windows)
                for i, views in zip(items, self.dali.run_windows([datas[i] for i in items], list(windows.values()))):
                    sizes[i] = sniffs[i].size  # a windowed JPEG is unrotated: its size is the one its header gave
                    frames[i] = views[: self.spec.count_for(*sizes[i])]
            except Exception:
                for_pillow.extend(windows)
        for i in for_pillow:
            try:
                frames[i], sizes[i] = pillow_decode(datas[i], self.spec)
            except Exception as exc:
                errors[i] = f"decode: {_short(exc)}"
        ok = [frames[i] for i in range(n) if errors[i] is None]
        return DecodedBatch(pixels=self._stack(ok, pixels_out), sizes=sizes, errors=errors,
                            view_counts=[len(f) for f in ok], provenance=provenance_entries)

    def _stack(self, frames: list, pixels_out=None):
        """Per-item frames (each a sequence of [S, S, 3] views) -> [sum of views_i, S, S, 3], one copy."""
        if self.device == "cuda":
            import torch

            if not frames:
                return torch.empty((0, self.size, self.size, 3), dtype=torch.uint8, device="cuda")
            return torch.cat([torch.as_tensor(f).to("cuda") for f in frames])
        rows = sum(len(f) for f in frames)
        out = pixels_out(rows) if pixels_out else np.empty((rows, self.size, self.size, 3), dtype=np.uint8)
        row = 0
        for item in frames:
            for view in item:
                out[row] = view
                row += 1
        return out
