"""Decode stage: image bytes -> uint8 RGB SxS tensors (shorter side scaled to S, centre crop), per batch.

DALI decodes and resizes (`mixed`: nvJPEG on the GPU; its CPU pipeline where there is none). Pillow serves
only what DALI cannot take: formats it has no decoder for (GIF, ...) and, one item at a time, every item of
a batch that DALI failed on, so one hostile file costs its own row an `error`, never the batch.

A header sniff (Pillow reads headers only, no pixels) runs first for every item: it rejects non-images and
decompression bombs (width x height over `max_pixels`) before any decoder allocates memory for them.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 100_000_000

# Pillow format names that DALI's decoders take. Everything else goes to Pillow.
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "JPEG2000"})


@dataclass
class DecodedBatch:
    """Decoded images of one batch: rows of `pixels` are the items whose error is None, in order."""

    pixels: "object"  # uint8 [m, S, S, 3] (NHWC, as decoders produce it): numpy on CPU, a torch tensor on CUDA
    sizes: list[tuple[int, int] | None]  # (width, height) as decoded, after EXIF rotation, per item
    errors: list[str | None]  # per item


@dataclass
class Sniffed:
    format: str | None
    error: str | None


def sniff(data: bytes, max_pixels: int) -> Sniffed:
    """Identify the format from the header and refuse decompression bombs, without decoding pixels."""
    if not data:
        return Sniffed(None, "decode: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit below decides
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
    except Image.UnidentifiedImageError:
        return Sniffed(None, "decode: not an image (unrecognised format)")
    except Image.DecompressionBombError:
        return Sniffed(None, f"decode: decompression bomb refused (over {max_pixels} pixels)")
    except Exception as exc:  # Pillow raises many types on hostile headers; all mean "not an image we take"
        return Sniffed(None, f"decode: not a recognised image ({_short(exc)})")
    if w <= 0 or h <= 0:
        return Sniffed(fmt, "decode: image has zero width or height")
    if w * h > max_pixels:
        return Sniffed(fmt, f"decode: decompression bomb refused ({w}x{h} is over {max_pixels} pixels)")
    return Sniffed(fmt, None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def pillow_decode(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode the first frame, apply EXIF orientation, make 8-bit RGB, scale the shorter side to `size` and
    centre-crop, matching the DALI path (bilinear with antialiasing). Raises on undecodable data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # animated GIF/WebP/APNG: first frame
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb8(im)
    width, height = rgb.size
    return resize_center_crop(rgb, size), (width, height)


def _to_rgb8(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: scale to 8 bits instead of letting convert() clip everything to white.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return im.convert("RGB")  # CMYK, palette, L, LA, RGBA (alpha dropped, as DALI's RGB output does)


def resize_center_crop(im: Image.Image, size: int) -> np.ndarray:
    w, h = im.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.array(im.crop((left, top, left + size, top + size)), dtype=np.uint8)  # a copy: the crop view would keep the whole image alive


class DaliImageDecoder:
    """A DALI pipeline fed raw bytes through external_source. DALI invalidates a pipeline after any decode
    error, so the pipeline is rebuilt lazily after a failure."""

    def __init__(self, size: int, max_batch: int, device: str = "cpu", num_threads: int = 2):
        self.size, self.max_batch, self.device, self.num_threads = size, max_batch, device, num_threads
        self._pipe = None

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        on_gpu = self.device == "cuda"

        @pipeline_def(
            batch_size=self.max_batch,
            num_threads=self.num_threads,
            device_id=0 if on_gpu else None,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        def pipeline():
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            images = fn.decoders.image(raw, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
            shapes = images.shape()  # decoded H, W, C (EXIF orientation applied), before resizing
            images = fn.resize(images, resize_shorter=self.size, antialias=True, interp_type=types.INTERP_LINEAR)
            images = fn.crop(images, crop=(self.size, self.size))
            return images, shapes

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = pipeline()
            pipe.build()
        return pipe

    def run(self, datas: list[bytes]):
        """Decode a list of encoded images; returns (uint8 [n,S,S,3], numpy int64 [n,3] shapes): a numpy array
        on CPU, a torch CUDA tensor on the GPU. Raises if any item fails (the caller then decodes the items one
        by one elsewhere)."""
        if self._pipe is None:
            self._pipe = self._build()
        try:
            self._pipe.feed_input("raw", [np.frombuffer(d, dtype=np.uint8) for d in datas])
            images, shapes = self._pipe.run()
        except Exception:
            self._pipe = None
            raise
        shapes = np.asarray(shapes.as_array(), dtype=np.int64).reshape(len(datas), -1)
        if self.device == "cuda":
            import torch
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dense = images.as_tensor()
            out = torch.empty(dense.shape(), dtype=torch.uint8, device="cuda")
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
            return out, shapes
        return images.as_array(), shapes


class ImageDecoder:
    """Decode one batch of read results: sniff, DALI for what it takes, Pillow for the rest."""

    def __init__(self, size: int, max_batch: int, device: str = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS,
                 num_threads: int = 2):
        self.size = size
        self.device = device
        self.max_pixels = max_pixels
        self.dali = DaliImageDecoder(size, max_batch, device, num_threads)

    def decode(self, datas: list[bytes | None]) -> DecodedBatch:
        n = len(datas)
        errors: list[str | None] = [None] * n
        sizes: list[tuple[int, int] | None] = [None] * n
        frames: list[object | None] = [None] * n  # per item: a tensor [S,S,3] once decoded
        for_dali, for_pillow = [], []
        for i, data in enumerate(datas):
            if data is None:
                errors[i] = "decode: no data"
                continue
            sniffed = sniff(data, self.max_pixels)
            if sniffed.error:
                errors[i] = sniffed.error
            elif sniffed.format in DALI_FORMATS:
                for_dali.append(i)
            else:
                for_pillow.append(i)
        if for_dali:
            try:
                pixels, shapes = self.dali.run([datas[i] for i in for_dali])
                for row, i in enumerate(for_dali):
                    frames[i] = pixels[row]
                    sizes[i] = (int(shapes[row][1]), int(shapes[row][0]))
            except Exception:
                for_pillow.extend(for_dali)  # isolate the bad item(s): decode this batch one by one
        for i in for_pillow:
            try:
                frames[i], sizes[i] = pillow_decode(datas[i], self.size)
            except Exception as exc:
                errors[i] = f"decode: {_short(exc)}"
        ok = [frames[i] for i in range(n) if errors[i] is None]
        return DecodedBatch(pixels=self._stack(ok), sizes=sizes, errors=errors)

    def _stack(self, frames: list):
        if self.device == "cuda":
            import torch

            if not frames:
                return torch.empty((0, self.size, self.size, 3), dtype=torch.uint8, device="cuda")
            return torch.stack([torch.as_tensor(f).to("cuda") for f in frames])
        if not frames:
            return np.empty((0, self.size, self.size, 3), dtype=np.uint8)
        return np.stack(frames)
