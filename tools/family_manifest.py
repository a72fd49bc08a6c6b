"""A training view of a data set by generator family, outside the repository.

    python tools/family_manifest.py ../shared/data/modern --out /tmp/train/modern \
        --exclude-families nano-banana,sdxl,stylegan --exclude-sources deepinsight+insightface,google+mediapipe

The modern set labels each image with its generator as precisely as its source says (74 labels, many with a
handful of images); a contrastive embedder learns families, not fine-tunes, so this writes OUT/manifest.csv with
`label` = the row's `family` for generated images (families under --min-class images pooled as
`modern-other`) and `real` for photos and human-made graphics (both are not AI), and links OUT/images to the
data set's images so that the manifest's relative paths stay valid. Rows of excluded families or sources are
left out entirely (never trained on, never enrolled), so a model trained on the view is held out from them. A
source written `tae-sd:owner+repo` or `reposted:owner+repo` (copies made by tools/tae_pairs.py) counts as `owner+repo`. A
manifest without a `family` column (the TAE set) keeps its labels. `--repeat SOURCE=N` lists the rows of a
source N times, so that a sampler drawing rows uniformly shows them N times as often (for training views only:
a starter index wants each image once). `--only-sources` and `--real-only` make a support-only view: the not-AI
images of chosen collections. No image is copied.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from imgscan_core.labels import REAL_LABEL  # noqa: E402
from train.data_licence import record_derivation  # noqa: E402

OTHER = "modern-other"
NOT_AI_FAMILIES = frozenset({"real", "graphic"})


def original_source(source: str) -> str:
    """The collection a derived copy came from (`tae-sd:camera:drewnoakes` -> `camera:drewnoakes`)."""
    prefix, _, rest = source.partition(":")
    return rest if rest and (prefix.startswith("tae-") or prefix == "reposted") else source


def family_rows(rows: list[dict], exclude_families: set[str], exclude_sources: set[str], min_class: int,
                only_sources: set[str] | None = None, real_only: bool = False) -> list[dict]:
    kept = [r for r in rows if r.get("family", "") not in exclude_families
            and original_source(r["source"]) not in exclude_sources
            and (only_sources is None or original_source(r["source"]) in only_sources)
            and not (real_only and r["is_ai"] == "1")]
    if not kept or "family" not in kept[0]:
        return kept
    sizes = Counter(r["family"] for r in kept if r["family"] not in NOT_AI_FAMILIES)
    out = []
    for r in kept:
        fam = r["family"]
        label = REAL_LABEL if fam in NOT_AI_FAMILIES else (fam if sizes[fam] >= min_class else OTHER)
        out.append({**r, "label": label})
    return out


def repeated(rows: list[dict], times: dict[str, int]) -> list[dict]:
    return [r for r in rows for _ in range(times.get(original_source(r["source"]), 1))]


def main() -> None:
    from imgscan_core.errors import UsageError, run_script

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="a data set folder holding manifest.csv and images/")
    ap.add_argument("--out", type=Path, required=True, help="folder for the view (outside the repository)")
    ap.add_argument("--exclude-families", default="", help="comma-separated families left out")
    ap.add_argument("--exclude-sources", default="", help="comma-separated sources left out")
    ap.add_argument("--min-class", type=int, default=20, help="smaller families are pooled as `modern-other`")
    ap.add_argument("--repeat", default="", help="comma-separated SOURCE=N: list that source's rows N times")
    ap.add_argument("--only-sources", default="", help="comma-separated sources: keep only their rows")
    ap.add_argument("--real-only", action="store_true", help="leave generated images out (a support-only view)")
    args = ap.parse_args()

    def work():
        src = args.data.resolve()
        with open(src / "manifest.csv", newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        split = lambda s: {x for x in s.split(",") if x}  # noqa: E731
        out_rows = family_rows(rows, split(args.exclude_families), split(args.exclude_sources), args.min_class,
                               split(args.only_sources) or None, args.real_only)
        try:
            repeat = {k: int(n) for k, _, n in (x.partition("=") for x in split(args.repeat))}
        except ValueError as exc:
            raise UsageError(f"--repeat {args.repeat}: expected SOURCE=N,...") from exc
        out_rows = repeated(out_rows, repeat)
        if not out_rows:
            raise UsageError(f"{src}: nothing left after the exclusions")
        args.out.mkdir(parents=True, exist_ok=True)
        link = args.out / "images"
        if not link.exists():
            link.symlink_to(src / "images", target_is_directory=True)
        with open(args.out / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(out_rows)
        record_derivation(args.out, [src], "tools/family_manifest.py")
        print(f"{args.out / 'manifest.csv'}: {len(out_rows)} of {len(rows)} rows; "
              + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r['label'] for r in out_rows).items())))

    run_script(work)


if __name__ == "__main__":
    main()
