"""Throughput of the isolated decoder (scanner/decode_isolated.py) on real files, alone: what the per-image
timeout protocol costs.

    python benchmarks/isolated_decode.py [--images N] [--batch 64] [--one-per-round-trip]

decodes N kit JPEGs (256 px) in batches, and the full-size originals of photos/native/real with the default
model's views (5, native pixels), best of 3, one DALI thread in the child as in a scan. `--one-per-round-trip`
sends every image alone (the fallback path a batch takes when it overruns one image's timeout).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scanner.decode import ViewSpec
from scanner.decode_isolated import IsolatedImageDecoder

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def images_per_second(datas: list[bytes], spec: ViewSpec, batch: int, single: bool) -> float:
    decoder = IsolatedImageDecoder(spec, batch)
    try:
        decoder.decode(datas[:2])  # child started and warm
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for i in range(0, len(datas), batch):
                chunk = datas[i:i + batch]
                if single:
                    for d in chunk:
                        decoder.decode([d])
                else:
                    decoder.decode(chunk)
            best = min(best, time.perf_counter() - t)
    finally:
        decoder.close()
    return len(datas) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--one-per-round-trip", action="store_true")
    args = ap.parse_args()
    kit = sorted((SHARED / "kit" / "images").glob("*/*.jpg"))[:args.images]
    native = sorted(p for p in (SHARED / "photos" / "native" / "real").iterdir() if p.is_file())
    for name, files, spec in ((f"kit 256 px x {len(kit)}", kit, ViewSpec(256)),
                              (f"native originals x {len(native)}, 5 views", native,
                               ViewSpec(256, resize="native", views=5))):
        ips = images_per_second([f.read_bytes() for f in files], spec, args.batch, args.one_per_round_trip)
        print(f"{name}: {ips:.1f} img/s")


if __name__ == "__main__":
    main()
