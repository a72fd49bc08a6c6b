"""The embedder proxies: figures a user would recognise, measured the same way for every model.

    python benchmarks/embedder_proxies.py --model scanner/default_model --index scanner/default_index \
        --out runs/proxies/default

1. kit protocol: queries = kit fold 4, 150 shots, glid-3 and gaugan never enrolled -> mean detection accuracy
   over enrolled generators, closed-set macro-F1;
2. unseen real source: kit + photos, `camera:drewnoakes` (or `--held-source S`) never enrolled (pair with a
   model trained with `--holdout-sources` of the same source) -> share of its real photos called AI, and of
   the other photos sources' fold-4 photos; and the full-size originals in photos/native/real scanned with
   `imgscan scan` against INDEX -> share called AI, per origin;
3. unseen generators (glid-3 and gaugan, held out of training by every model compared here; `--unknown` names
   another leave-out fold's): detection accuracy and attribution F1 once enrolled (150 shots), open-set AUROC /
   OSCR when never enrolled, judging their fold-4 images and, steadier, their images of every fold
   (`--unknown-every-fold`: none of them was trained on);
4. 1-3 again on re-posted copies (0.75x, JPEG q75) of the queries (support enrolled clean).

Writes OUT/proxies.json and prints one JSON object. Every figure comes from `imgscan eval` (scanner.evaluation)
or `imgscan scan`, i.e. from the code users run; nothing here judges images by itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
UNKNOWN = "glid-3,gaugan"
HELD_SOURCE = "camera:drewnoakes"
DEGRADE = "jpeg75,scale0.75"


PRECISION = "fp32"  # --precision: every eval and scan of one run uses it


def held_source(result: dict) -> str:
    """The photos source a proxies result held out (results written before it was recorded held this one)."""
    return result.get("p2_unseen_source", {}).get("source", HELD_SOURCE)


def photos_manifest(photos: Path) -> dict[str, dict]:
    """The photos set's manifest rows by relative path (`photos_relative` of a predictions path)."""
    import csv

    with open(photos / "manifest.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def photos_relative(path: str) -> str | None:
    """A predictions row's path relative to the photos set, or None for an image from elsewhere (the kit)."""
    return path.split("/photos/")[-1] if "/photos/" in path else None


def _eval(data, out: Path, model: Path, cache: Path, runtime: str, **kw) -> dict:
    from rich.console import Console

    from scanner.evaluation.cli import run_eval

    quiet = Console(stderr=True, quiet=True)
    return run_eval(data, out, model=model, shots="150", query_folds="4", baselines=False, use_umap=False,
                    device="cpu", precision=PRECISION, runtime=runtime, cache=cache, console=quiet,
                    command="benchmarks/embedder_proxies.py", **kw)


def _main_metrics(doc: dict, method: str = "imgscan") -> dict:
    return doc["main"][method]["metrics"]


def _scan_share_ai(folder: Path, model: Path, index: Path, out: Path, runtime: str, views: int | None) -> dict:
    """`imgscan scan` FOLDER; share of rows called AI, per origin (SOURCES.csv beside the files, when present)."""
    import csv

    import pyarrow.parquet as pq

    cmd = [sys.executable, "-m", "scanner.cli", "scan", str(folder), "--out", str(out), "--model", str(model),
           "--index", str(index), "--device", "cpu", "--precision", PRECISION, "--runtime", runtime, "--overwrite"]
    if views:
        cmd += ["--views", str(views)]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = pq.read_table(out, columns=["path", "is_ai", "error"]).to_pylist()
    origin = {}
    sources = folder.parent / "SOURCES.csv"
    if sources.is_file():
        with open(sources, newline="") as f:
            origin = {r["file"]: r["origin"].split(":")[0] for r in csv.DictReader(f)}
    result: dict[str, dict] = {}
    for r in rows:
        key = origin.get(Path(r["path"]).name, "all")
        for k in (key, "all") if key != "all" else ("all",):
            slot = result.setdefault(k, {"n": 0, "called_ai": 0, "errors": 0})
            slot["n"] += 1
            slot["errors"] += r["error"] is not None
            slot["called_ai"] += bool(r["is_ai"])
    for slot in result.values():
        judged = slot["n"] - slot["errors"]
        slot["share_called_ai"] = round(slot["called_ai"] / judged, 4) if judged else None
    return result


def _photos_fold4(predictions: Path, photos: Path, degraded_method: str) -> dict:
    """Share called AI of the fold-4 real crops of every photos source, clean and re-posted. For a source the
    model trained on (folds 0-3), these are photos from cameras or shoots it never saw, of a collection it knows;
    for the held source, the same photos as a subset of P2, so that two models holding out different sources
    can be compared on one set."""
    import pyarrow.parquet as pq

    meta = photos_manifest(photos)
    names = {"imgscan": "imgscan", degraded_method: "reposted"}
    counts: dict[str, dict[str, list[int]]] = {name: {} for name in names.values()}
    for r in pq.read_table(predictions, columns=["method", "path", "role", "class", "is_ai"]).to_pylist():
        m = meta.get(photos_relative(r["path"]))
        if (r["method"] not in names or r["role"] != "query" or r["class"] != "real" or m is None
                or m["fold"] != "4" or r["is_ai"] is None):
            continue
        c = counts[names[r["method"]]].setdefault(m["source"], [0, 0])
        c[0] += 1
        c[1] += bool(r["is_ai"])
    return {name: {src: {"n_real": n, "real_called_ai": round(k / n, 4)} for src, (n, k) in sorted(per.items())}
            for name, per in counts.items()}


def _degraded_folder(folder: Path, dest: Path) -> Path:
    from scanner.evaluation.degrade import parse_degradation

    deg = parse_degradation(DEGRADE)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"):
            (dest / f.name).write_bytes(deg.apply(f.read_bytes()))
    if (folder.parent / "SOURCES.csv").is_file():
        (dest.parent / "SOURCES.csv").write_bytes((folder.parent / "SOURCES.csv").read_bytes())
    return dest


def run(model: Path, index: Path | None, out: Path, kit: Path, photos: Path, runtime: str, views: int | None,
        held_source: str = HELD_SOURCE, unknown: str = UNKNOWN) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "embeddings.npz"
    t0 = time.monotonic()
    kit_open = _eval(kit, out / "kit-unknown", model, cache, runtime, unknown=unknown, degrade_queries=DEGRADE,
                     views=views)
    kit_every_fold = _eval(kit, out / "kit-unknown-every-fold", model, cache, runtime, unknown=unknown,
                           degrade_queries=DEGRADE, views=views, unknown_every_fold=True)
    kit_enrolled = _eval(kit, out / "kit-enrolled", model, cache, runtime, views=views)
    unseen = _eval([kit, photos], out / "unseen-source", model, cache, runtime, unknown=unknown,
                   holdout_sources=held_source, degrade_queries=DEGRADE, views=views)
    deg = f"imgscan@scale0.75+{DEGRADE.split(',')[0]}"
    clean, reposted = _main_metrics(kit_open), _main_metrics(kit_open, deg)
    every, every_reposted = _main_metrics(kit_every_fold), _main_metrics(kit_every_fold, deg)
    enrolled = _main_metrics(kit_enrolled)
    held_gen = unknown.split(",")
    per_gen = enrolled["detection"]["per_generator"]
    att = enrolled["attribution"]["per_class"]
    result = {
        "model": str(model),
        "index": str(index) if index else None, "unknown": held_gen, "runtime": runtime, "precision": PRECISION, "views": views,
        # det_acc weighs the real queries heavily (about 270 per generator's handful): bal_acc beside it
        "p1_kit": {"det_acc": clean["detection"]["mean_accuracy"], "det_auc": clean["detection"]["mean_auc"],
                   "det_bal_acc": clean["detection"]["mean_balanced_accuracy"],
                   "closed_f1": clean["closed_set_attribution"]["macro_f1"],
                   "real_called_ai": clean["detection"]["real_called_ai"]},
        "p2_unseen_source": {"source": held_source,
                             "real_called_ai": _main_metrics(unseen)["holdout_sources"]["real_called_ai"],
                             "n_real": _main_metrics(unseen)["holdout_sources"]["per_source"][held_source]["n_real"]},
        "p3_unseen_generators": {
            "det_acc_enrolled": {g: per_gen[g]["accuracy"] for g in held_gen},
            "mean_det_acc_enrolled": sum(per_gen[g]["accuracy"] for g in held_gen) / len(held_gen),
            "f1_enrolled": {g: att[g]["f1"] for g in held_gen},
            "open_set_auroc": clean["open_set"]["auroc"], "oscr": clean["open_set"]["oscr"],
            "n_unknown": clean["open_set"]["n_unknown"],
            "every_fold": {"open_set_auroc": every["open_set"]["auroc"], "oscr": every["open_set"]["oscr"],
                           "n_unknown": every["open_set"]["n_unknown"],
                           "reposted_open_set_auroc": every_reposted["open_set"]["auroc"]},
        },
        "p4_reposted": {"det_acc": reposted["detection"]["mean_accuracy"],
                        "open_set_auroc": reposted["open_set"]["auroc"],
                        "unseen_real_called_ai": _main_metrics(unseen, deg)["holdout_sources"]["real_called_ai"]},
    }
    result["p2_photos_fold4"] = _photos_fold4(out / "unseen-source" / "predictions.parquet", photos, deg)
    native = photos / "native" / "real"
    if native.is_dir() and index is not None:
        result["p2_native_full_size"] = _scan_share_ai(native, model, index, out / "native.parquet", runtime, views)
        with tempfile.TemporaryDirectory() as tmp:
            copies = _degraded_folder(native, Path(tmp) / "real")
            result["p4_native_reposted"] = _scan_share_ai(copies, model, index, out / "native-reposted.parquet",
                                                          runtime, views)
    result["seconds"] = round(time.monotonic() - t0, 1)
    (out / "proxies.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--index", type=Path, help="starter index the native photos are scanned with (without: not scanned)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kit", type=Path, default=SHARED / "kit")
    ap.add_argument("--photos", type=Path, default=SHARED / "photos")
    ap.add_argument("--runtime", default="openvino", help="embedder runtime (openvino: fastest on CPU; fp32)")
    ap.add_argument("--views", type=int, default=None)
    ap.add_argument("--held-source", default=HELD_SOURCE, help="the photos source the model never trained on")
    ap.add_argument("--unknown", default=UNKNOWN, help="the generators the model never trained on (never enrolled in P3)")
    ap.add_argument("--precision", default="fp32", help="fp32, or int8 (the model's int8 IR, OpenVINO)")
    args = ap.parse_args()
    global PRECISION
    PRECISION = args.precision
    print(json.dumps(run(args.model, args.index, args.out, args.kit, args.photos, args.runtime, args.views,
                         args.held_source, args.unknown), indent=2))


if __name__ == "__main__":
    main()
