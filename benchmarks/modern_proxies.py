"""The modern proxies: what users meet today, measured the same way for every model (issue 37).

    python benchmarks/modern_proxies.py --model scanner/default_model --index scanner/default_index \
        --out runs/modern/default

Data: ../shared/data/modern (generators of 2022-26, real photos of 19 collections, human-made graphics) and the
two camera sources of ../shared/data/photos, at native crops and re-posted (0.75x, JPEG q75).

1. Held-out family F (nano-banana, unknown-ai, sdxl, sd1, stylegan, flux1): the share of F's images called AI
   - out of the box: against the model's starter index (without F's classes, if it holds any);
   - with 20 / 50 shots of F enrolled (drawn from F's images of folds 0-1); queries: F's images of folds 2-4;
   - after the other families are enrolled: the starter index plus up to 150 images of every other modern family
     and of every real source (as `real`), F still unseen: a crowded index, as a user's becomes.
2. Held-out real source R (each collection of modern's real photos and graphics, and photos' two): the share of
   its images called AI, photos of people and human-made graphics counted apart
   - out of the box (the starter index without R's images);
   - after the other families are enrolled: the starter index plus up to 150 images of every modern family and
     of every other real source (as `real`).
3. Balanced accuracy out of the box, native and re-posted (0.75x, JPEG q75; the support set stays clean): the mean
   of "AI caught" pooled over the held-out families' queries and "kept real" pooled over the held-out sources'
   photos and graphics, each judged as in 1 and 2 (so a model that trains on modern data is only ever judged on
   what it held out).

A model that trained on some of these images is not held out from them: pass `--trained-on` to record what it
saw (the figures are then optimistic for those families and sources). Embeddings come from scan's own read /
decode / embed stages (`scanner.evaluation.evaluate.embed_dataset`, cached by file hash); verdicts from scan's
rule (`scanner.verdict.decide`, pixel-detail floor included) over exact cosine neighbours, with the index's
calibration (open-set threshold, ai_score) fitted leave-one-out on each support set, as enrollment does.

A model trained on part of the set (the same recipe trained twice, each run holding out different families and
sources) is judged on what each run held out: `--held-out-families` / `--held-out-sources` per run, then
`--combine RUN_A RUN_B --out BOTH` merges the runs into one table, pooled figures recomputed. `--against BASE_RUN`
lists every figure where the run (or the combined runs) does worse than a baseline run, e.g. the shipped model's,
and judges the crowded index once more at the baseline's share of real images called AI there (each model's
calibration puts it at its own operating point; this compares the embeddings at one).

Writes OUT/modern_proxies.json and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from imgscan_core.labels import REAL_LABEL  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
FAMILIES = ("nano-banana", "unknown-ai", "sdxl", "sd1", "stylegan", "flux1")
# Collections of photos of people (modern/README.md): a detector that learned "a retouched face is AI" shows here.
PEOPLE_SOURCES = frozenset({"open-mmlab+mmpose", "google+mediapipe", "deepinsight+insightface",
                            "ageitgey+face_recognition", "timesler+facenet-pytorch", "davisking+dlib",
                            "CMU-Perceptual-Computing-Lab+openpose", "Hzzone+pytorch-openpose", "ultralytics+assets"})
REPOST = "jpeg75,scale0.75"
SHOTS = (20, 50)
SHOT_FOLDS = (0, 1)
ENROLL_PER_CLASS = 150
K = 11


@dataclass
class Universe:
    """Every image the proxies judge: modern + photos, one row each, with what the proxies group by."""

    paths: np.ndarray
    labels: np.ndarray  # generator label, or `real`
    is_ai: np.ndarray
    family: np.ndarray  # modern's family; `real` / `graphic` on the not-AI side; photos: `real`
    source: np.ndarray
    fold: np.ndarray
    group: np.ndarray

    @property
    def graphic(self) -> np.ndarray:
        return self.family == "graphic"

    @property
    def people(self) -> np.ndarray:
        return ~self.is_ai & ~self.graphic & np.isin(self.source, list(PEOPLE_SOURCES))

    def __len__(self) -> int:
        return len(self.paths)


def load_universe(modern: Path, photos: Path) -> Universe:
    rows = []
    for root, has_family in ((modern, True), (photos, False)):
        with open(root / "manifest.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows.append((str(root / r["path"]), r["label"], r["is_ai"] == "1",
                             r["family"] if has_family else ("real" if r["is_ai"] == "0" else r["label"]),
                             r["source"], int(r["fold"]), r["group"]))
    cols = list(zip(*rows))
    return Universe(*(np.array(c, dtype=object) for c in cols[:2]), np.array(cols[2], dtype=bool),
                    *(np.array(c, dtype=object) for c in cols[3:5]), np.array(cols[5], dtype=np.int64),
                    np.array(cols[6], dtype=object))


# ---- verdicts over an in-memory support set -------------------------------------------------------------------

def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(part, order, axis=1)


def judge(support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, detail: np.ndarray | None,
          k: int = K, ai_share: float = 0.5):
    """Scan's verdicts for `queries` against a support set: exact cosine neighbours, and the calibration an
    enrollment would fit (leave-one-out on the support set, for the starter index's share of AI images)."""
    from indexes.manifest import AiScoreCalibration, OpenSetCalibration, prior_for
    from scanner.verdict import VerdictRule, calibrate, decide

    support_labels = np.asarray(support_labels, dtype=object)
    self_sims = support @ support.T
    np.fill_diagonal(self_sims, -np.inf)
    loo_idx, loo_sims = _top_k(self_sims, k)
    ai_cal, open_set = calibrate(support_labels[loo_idx], loo_sims, support_labels, OpenSetCalibration(k=k),
                                 AiScoreCalibration(prior=prior_for(ai_share)))
    idx, sims = _top_k(queries @ support.T, k)
    return decide(support_labels[idx], sims, VerdictRule(open_set.threshold, ai_cal), detail)


def share(mask: np.ndarray, is_ai: np.ndarray) -> dict:
    n = int(mask.sum())
    return {"n": n, "called_ai": round(float(is_ai[mask].mean()), 4) if n else None}


# ---- the proxies -----------------------------------------------------------------------------------------------

@dataclass
class Embedded:
    """One model's view of the universe: clean and re-posted embeddings (rows of the universe; NaN rows did not
    decode), the pixel detail of each, and its starter support set."""

    clean: np.ndarray
    reposted: np.ndarray
    detail: np.ndarray
    detail_reposted: np.ndarray
    starter: np.ndarray
    starter_labels: np.ndarray
    starter_sources: np.ndarray  # the universe source of each starter item, "" where it is not from the universe
    ai_share: float = 0.5  # the starter index's calibration prior (`imgscan index calibrate --ai-share`)


def _sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if rows.size <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def family_proxy(u: Universe, e: Embedded, family: str, seed: int = 0) -> dict:
    ok = ~np.isnan(e.clean[:, 0])
    mine = (u.family == family) & ok
    keep = ~np.isin(e.starter_labels, np.unique(u.labels[u.family == family]))
    base, base_labels = e.starter[keep], e.starter_labels[keep]
    queries = np.flatnonzero(mine & ~np.isin(u.fold, SHOT_FOLDS))
    out = {"queries": int(queries.size)}
    v = judge(base, base_labels, e.clean[queries], e.detail[queries], ai_share=e.ai_share)
    out["out_of_box"] = round(float(v.is_ai.mean()), 4)
    rq = queries[~np.isnan(e.reposted[queries, 0])]
    v = judge(base, base_labels, e.reposted[rq], e.detail_reposted[rq], ai_share=e.ai_share)
    out["reposted_queries"], out["out_of_box_reposted"] = int(rq.size), round(float(v.is_ai.mean()), 4)
    v = judge(*_with_others_enrolled(u, e, base, base_labels, seed, held_family=family), e.clean[queries],
              e.detail[queries], ai_share=e.ai_share)
    out["others_enrolled"] = round(float(v.is_ai.mean()), 4)
    out["others_enrolled_evidence"] = _accusable_evidence(v, e.detail[queries])
    pool = np.flatnonzero(mine & np.isin(u.fold, SHOT_FOLDS))
    for shots in SHOTS:
        chosen = _sample(pool, shots, seed)
        v = judge(np.concatenate([base, e.clean[chosen]]), np.concatenate([base_labels, u.labels[chosen]]),
                  e.clean[queries], e.detail[queries], ai_share=e.ai_share)
        out[f"shots_{shots}"] = round(float(v.is_ai.mean()), 4)
        out[f"shots_{shots}_enrolled"] = int(chosen.size)
    return out


def _with_others_enrolled(u: Universe, e: Embedded, base: np.ndarray, base_labels: np.ndarray, seed: int,
                          held_source: str | None = None, held_family: str | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """A support set and its labels: `base` plus up to ENROLL_PER_CLASS images of every other modern family and
    every other real source (as `real`)."""
    ok = ~np.isnan(e.clean[:, 0])
    picked = []
    for fam in np.unique(u.family[u.is_ai]):
        if fam != held_family:
            picked.append(_sample(np.flatnonzero(ok & (u.family == fam) & (u.source != held_source)),
                                  ENROLL_PER_CLASS, seed))
    for src in np.unique(u.source[~u.is_ai]):
        if src != held_source:
            picked.append(_sample(np.flatnonzero(ok & ~u.is_ai & (u.source == src)), ENROLL_PER_CLASS, seed))
    rows = np.concatenate(picked)
    return (np.concatenate([base, e.clean[rows]]),
            np.concatenate([base_labels, np.where(u.is_ai[rows], u.labels[rows], REAL_LABEL)]))


def source_proxy(u: Universe, e: Embedded, source: str, seed: int = 0) -> dict:
    ok = ~np.isnan(e.clean[:, 0])
    queries = np.flatnonzero(ok & ~u.is_ai & (u.source == source))
    keep = e.starter_sources != source
    base, base_labels = e.starter[keep], e.starter_labels[keep]
    out = {"people": bool(source in PEOPLE_SOURCES)}
    for setting, (sup, labs) in (("out_of_box", (base, base_labels)),
                                 ("others_enrolled", _with_others_enrolled(u, e, base, base_labels, seed,
                                                                           held_source=source))):
        v = judge(sup, labs, e.clean[queries], e.detail[queries], ai_share=e.ai_share)
        out[setting] = {"photos": share(~u.graphic[queries], v.is_ai), "graphics": share(u.graphic[queries], v.is_ai)}
        if setting == "others_enrolled":
            out["others_enrolled_evidence"] = _accusable_evidence(v, e.detail[queries])
    rq = queries[~np.isnan(e.reposted[queries, 0])]
    v = judge(base, base_labels, e.reposted[rq], e.detail_reposted[rq], ai_share=e.ai_share)
    out["out_of_box_reposted"] = {"photos": share(~u.graphic[rq], v.is_ai), "graphics": share(u.graphic[rq], v.is_ai)}
    return out


def _accusable_evidence(v, detail: np.ndarray | None) -> list[float]:
    """Each query's ai_evidence, the statistic every index's calibration maps to ai_score, with the images the
    pixel-detail floor never accuses set to the lowest value (-1): one scale across the settings' indexes, so
    that a crowded index's verdicts can be re-thresholded at another model's share of real photos called AI."""
    from scanner.detail import DEFAULT_MIN_DETAIL

    ev = np.asarray(v.ai_evidence, dtype=np.float64)
    if detail is not None:
        ev = np.where(np.asarray(detail) < DEFAULT_MIN_DETAIL, -1.0, ev)
    return [round(float(x), 5) for x in ev]


def crowded_at_base_share(candidate: dict, base: dict) -> dict | None:
    """The crowded index (everything else enrolled) compared at one operating point: the baseline's share of
    held-out real photos and graphics called AI there, pooled over the sources the candidate judged; the
    candidate's held-out families caught at the evidence threshold where its own real images are called AI at
    most that often. The crowded figures of `worse_than` compare each model at its own calibration, which a
    strict prior moves far from the baseline's; this says whether the embedding or the operating point loses.
    None where either run predates the stored evidence."""
    fams = [f for f in candidate["families"] if f in base["families"]]
    srcs = [s for s in candidate["sources"] if s in base["sources"]]
    if not fams or not srcs or any("others_enrolled_evidence" not in candidate["families"][f] for f in fams) \
            or any("others_enrolled_evidence" not in candidate["sources"][s] for s in srcs):
        return None
    cells = [base["sources"][s]["others_enrolled"][kind] for s in srcs for kind in ("photos", "graphics")]
    n_real = sum(c["n"] for c in cells)
    base_share = sum(c["called_ai"] * c["n"] for c in cells if c["n"]) / n_real if n_real else 0.0
    n_ai = sum(base["families"][f]["queries"] for f in fams)
    base_caught = sum(base["families"][f]["others_enrolled"] * base["families"][f]["queries"] for f in fams) / n_ai
    real = np.concatenate([candidate["sources"][s]["others_enrolled_evidence"] for s in srcs])
    ai = np.concatenate([candidate["families"][f]["others_enrolled_evidence"] for f in fams])
    # the lowest threshold (among the values themselves) at which no more than base_share of real is above it
    candidates = np.unique(np.concatenate([real, [1.0]]))
    above = (real[None, :] > candidates[:, None]).mean(axis=1)
    threshold = float(candidates[np.argmax(above <= base_share + 1e-12)])
    return {"base_real_called_ai": round(base_share, 4), "base_caught": round(base_caught, 4),
            "real_called_ai": round(float((real > threshold).mean()), 4),
            "caught": round(float((ai > threshold).mean()), 4), "evidence_threshold": round(threshold, 5),
            "real_images": int(real.size), "ai_images": int(ai.size)}


def pooled(families: dict, sources: dict, reposted: bool) -> dict:
    """Balanced accuracy pooled from the held-out proxies: AI caught over the families' queries, kept real over
    the sources' photos and graphics (people and graphics also apart)."""
    fam_key, n_key = ("out_of_box_reposted", "reposted_queries") if reposted else ("out_of_box", "queries")
    src_key = "out_of_box_reposted" if reposted else "out_of_box"
    n_ai = sum(f[n_key] for f in families.values())
    caught = sum(f[fam_key] * f[n_key] for f in families.values()) / n_ai

    def kept(pick) -> float:
        cells = [s[src_key][kind] for name, s in sources.items() for kind in ("photos", "graphics")
                 if pick(name, s, kind) and s[src_key][kind]["n"]]
        n = sum(c["n"] for c in cells)
        return 1 - sum(c["called_ai"] * c["n"] for c in cells) / n if n else float("nan")

    real_kept = kept(lambda name, s, kind: True)
    return {"ai_caught": round(caught, 4), "real_kept": round(real_kept, 4),
            "balanced": round((caught + real_kept) / 2, 4),
            "people_kept": round(kept(lambda name, s, kind: s["people"] and kind == "photos"), 4),
            "graphics_kept": round(kept(lambda name, s, kind: kind == "graphics"), 4)}


def real_sources(u: Universe) -> list[str]:
    return sorted(set(u.source[~u.is_ai].tolist()))


def run_proxies(u: Universe, embedded_without, seed: int = 0, families: tuple[str, ...] | None = None,
                sources: tuple[str, ...] | None = None) -> dict:
    """`embedded_without(family=None, sources=())`: the Embedded of a model that held out that family or those
    sources (one imgscan model: the same Embedded whatever is asked). `families` / `sources`: the ones to judge
    (default every family and every real source); a model trained on part of the set is judged on what it held
    out only."""
    fam = {f: family_proxy(u, embedded_without(family=f), f, seed) for f in (families or FAMILIES)}
    src = {s: source_proxy(u, embedded_without(sources=(s,)), s, seed) for s in (sources or real_sources(u))}
    return with_pooled({"families": fam, "sources": src})


def with_pooled(result: dict) -> dict:
    fam, src = result["families"], result["sources"]
    return {**result, "native": pooled(fam, src, reposted=False), "reposted": pooled(fam, src, reposted=True)}


def combine(results: list[dict]) -> dict:
    """One table from runs that each held out part of the set (the same recipe trained several times): every
    family and source judged by the run that held it out; pooled figures recomputed over all of them."""
    merged = {"families": {}, "sources": {}, "runs": []}
    for r in results:
        for kind in ("families", "sources"):
            twice = set(merged[kind]) & set(r[kind])
            if twice:
                raise ValueError(f"judged by two runs: {', '.join(sorted(twice))}")
            merged[kind].update(r[kind])
        merged["runs"].append({k: r.get(k) for k in ("model", "index", "trained_on")})
    merged = with_pooled(merged)
    merged["summary"] = summary(merged)
    return merged


def summary(result: dict) -> dict:
    """The acceptance view: worst family caught, worst source's share called AI, balanced accuracies."""
    fam, src = result["families"], result["sources"]

    def worst(setting: str, kind: str):
        vals = [(s[setting][kind]["called_ai"], name) for name, s in src.items() if s[setting][kind]["called_ai"] is not None
                and s[setting][kind]["n"] >= 10]
        return max(vals) if vals else None

    return {"family_out_of_box_min": min(f["out_of_box"] for f in fam.values()),
            "family_50_shots_min": min(f["shots_50"] for f in fam.values()),
            "family_others_enrolled_min": min((f["others_enrolled"] for f in fam.values() if "others_enrolled" in f),
                                              default=None),
            "source_photos_worst": worst("out_of_box", "photos"), "source_graphics_worst": worst("out_of_box", "graphics"),
            "source_photos_worst_enrolled": worst("others_enrolled", "photos"),
            "source_graphics_worst_enrolled": worst("others_enrolled", "graphics"),
            "balanced_native": result["native"]["balanced"], "balanced_reposted": result["reposted"]["balanced"]}


FAMILY_FIGURES = ("out_of_box", "out_of_box_reposted", "others_enrolled", "shots_20", "shots_50")
SOURCE_SETTINGS = ("out_of_box", "others_enrolled", "out_of_box_reposted")
POOLED_FIGURES = ("ai_caught", "real_kept", "people_kept", "graphics_kept", "balanced")


def worse_than(candidate: dict, base: dict) -> list[dict]:
    """The issue's shipping rule, "beats the baseline on every modern proxy", checked: every figure both runs
    judged where the candidate does worse (a family caught less, a source's photos or graphics called AI more
    often, a pooled figure lower), the baseline's pooled figures taken over the parts the candidate judged. Rows
    carry n, since one photo of a 20-photo source is 5 points."""
    rows = []
    for name, f in candidate["families"].items():
        b = base["families"].get(name)
        for key in FAMILY_FIGURES if b else ():
            if key in f and key in b and f[key] < b[key]:  # runs made before a figure existed lack it
                rows.append(_row(f"family {name} {key}", f[key], b[key], f["queries"]))
    for name, s in candidate["sources"].items():
        b = base["sources"].get(name)
        for setting in SOURCE_SETTINGS if b else ():
            for kind in ("photos", "graphics"):
                c, o = s[setting][kind], b[setting][kind]
                if c["n"] and o["n"] and c["called_ai"] > o["called_ai"]:
                    rows.append(_row(f"source {name} {kind} {setting} (called AI)", c["called_ai"], o["called_ai"],
                                     c["n"]))
    # the baseline pooled over what the candidate judged, so that a run on one half compares like with like
    shared_parts = with_pooled({kind: {k: v for k, v in base[kind].items() if k in candidate[kind]}
                                for kind in ("families", "sources")})
    for setting in ("native", "reposted"):
        for key in POOLED_FIGURES:
            c, o = candidate[setting][key], shared_parts[setting][key]
            if c < o:
                rows.append(_row(f"pooled {setting} {key}", c, o, None))
    return rows


def _row(proxy: str, candidate: float, base: float, n: int | None) -> dict:
    # `images`: how many images the gap is (both runs judge the same images), so that one photo of 22 reads as one
    images = None if n is None else round(abs(candidate - base) * n)
    return {"proxy": proxy, "candidate": candidate, "base": base, "n": n, "images": images}


def format_table(result: dict) -> str:
    lines = ["| held-out family | queries | out of the box | others enrolled | 20 shots | 50 shots |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, f in result["families"].items():
        crowded = f"{f['others_enrolled']:.3f}" if "others_enrolled" in f else "–"
        lines.append(f"| {name} | {f['queries']} | {f['out_of_box']:.3f} | {crowded} | {f['shots_20']:.3f} | "
                     f"{f['shots_50']:.3f} |")
    lines += ["", "| held-out real source | people | photos (n) called AI: out of the box / others enrolled | "
                  "graphics (n) called AI: out of the box / others enrolled |", "|---|:-:|---:|---:|"]

    def cell(s, kind):
        a, b = s["out_of_box"][kind], s["others_enrolled"][kind]
        return "–" if not a["n"] else f"({a['n']}) {a['called_ai']:.3f} / {b['called_ai']:.3f}"

    for name, s in result["sources"].items():
        lines.append(f"| {name} | {'yes' if s['people'] else ''} | {cell(s, 'photos')} | {cell(s, 'graphics')} |")
    n, r = result["native"], result["reposted"]
    lines += ["", "| out of the box | AI caught | real kept | people kept | graphics kept | balanced |",
              "|---|---:|---:|---:|---:|---:|",
              f"| native | {n['ai_caught']:.3f} | {n['real_kept']:.3f} | {n['people_kept']:.3f} | {n['graphics_kept']:.3f} | {n['balanced']:.3f} |",
              f"| re-posted | {r['ai_caught']:.3f} | {r['real_kept']:.3f} | {r['people_kept']:.3f} | {r['graphics_kept']:.3f} | {r['balanced']:.3f} |"]
    return "\n".join(lines)


# ---- an imgscan model --------------------------------------------------------------------------------------------

def embed_model(u: Universe, model: Path, index: Path, cache_dir: Path, runtime: str = "openvino",
                precision: str = "fp32", batch_size: int = 32) -> Embedded:
    """Embed the universe (clean and re-posted) with an imgscan model and read its starter index."""
    from indexes import SupportIndex
    from scanner.dataset import Dataset
    from scanner.embed import Embedder
    from scanner.evaluation.degrade import degraded_copy, parse_degradation
    from scanner.evaluation.evaluate import embed_dataset

    embedder = Embedder(model, device="cpu", precision=precision, runtime=runtime)
    ds = Dataset(root=SHARED, paths=u.paths, labels=u.labels, is_ai=u.is_ai, groups=u.group, folds=u.fold,
                 sources=u.source)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = embedder.card.weights_sha256[:12]
    clean = embed_dataset(ds, embedder, batch_size=batch_size, cache=cache_dir / f"clean-{tag}.npz")
    repost_dir = cache_dir / "reposted"
    repost_dir.mkdir(exist_ok=True)
    reposted_ds, _ = degraded_copy(ds, parse_degradation(REPOST), repost_dir)
    reposted = embed_dataset(reposted_ds, embedder, batch_size=batch_size, cache=cache_dir / f"reposted-{tag}.npz")
    support = SupportIndex.open(index)
    rows = np.arange(len(support.table))
    by_name = {Path(p).name: s for p, s in zip(u.paths, u.source)}
    starter_sources = np.array([by_name.get(Path(str(p)).name, "") for p in support.table.source_path], dtype=object)

    def masked(f):
        emb = f.embeddings.copy()
        emb[~f.ok] = np.nan
        return emb

    return Embedded(masked(clean), masked(reposted), clean.detail, reposted.detail, support.vectors(rows),
                    np.asarray(support.table.label, dtype=object), starter_sources, support.manifest.ai_score.ai_share)


def main() -> None:
    from imgscan_core.errors import UsageError, run_script

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--index", type=Path, help="the model's starter index (out of the box)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modern", type=Path, default=SHARED / "modern")
    ap.add_argument("--photos", type=Path, default=SHARED / "photos")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imgscan" / "modern-proxies")
    ap.add_argument("--runtime", default="openvino")
    ap.add_argument("--trained-on", default="", help="what the model trained on, recorded beside the figures")
    ap.add_argument("--held-out-families", default="",
                    help="comma-separated families the model never saw: judge only these (default: all six)")
    ap.add_argument("--held-out-sources", default="",
                    help="comma-separated real sources the model never saw: judge only these (default: all)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None, metavar="RUN",
                    help="instead of a model: merge the OUT folders of runs that held out different parts")
    ap.add_argument("--against", type=Path, default=None, metavar="BASE_RUN",
                    help="the OUT folder of a baseline run (e.g. the shipped model): list every family, source and "
                         "pooled figure where this run does worse (the issue's shipping rule)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731

    def work():
        started = time.time()
        if args.against and not (args.against / "modern_proxies.json").is_file():  # before minutes of embedding
            raise UsageError(f"--against: no modern_proxies.json in {args.against}")
        if args.combine:
            try:
                result = combine([json.loads((d / "modern_proxies.json").read_text()) for d in args.combine])
            except ValueError as exc:
                raise UsageError(f"--combine: {exc}") from exc
        else:
            if args.model is None or args.index is None:
                raise UsageError("--model and --index are needed (or --combine RUN...)")
            families = split(args.held_out_families) or None
            unknown = sorted(set(families or ()) - set(FAMILIES))
            if unknown:
                raise UsageError(f"--held-out-families: not one of {', '.join(FAMILIES)}: {', '.join(unknown)}")
            u = load_universe(args.modern, args.photos)
            sources = split(args.held_out_sources) or None
            unknown = sorted(set(sources or ()) - set(real_sources(u)))
            if unknown:
                raise UsageError(f"--held-out-sources: no real images from {', '.join(unknown)}")
            e = embed_model(u, args.model, args.index, args.cache, args.runtime)
            result = run_proxies(u, lambda **held_out: e, args.seed, families, sources)
            result["summary"] = summary(result)
            result["model"], result["index"], result["trained_on"] = str(args.model), str(args.index), args.trained_on
            result["ai_share"] = e.ai_share
        result["elapsed_s"] = round(time.time() - started, 1)
        if args.against:
            base = json.loads((args.against / "modern_proxies.json").read_text())
            result["worse_than_base"] = {"base": str(args.against), "rows": worse_than(result, base)}
            result["crowded_at_base_share"] = crowded_at_base_share(result, base)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "modern_proxies.json").write_text(json.dumps(result, indent=1))
        print(format_table(result))
        print(json.dumps(result["summary"]))
        if args.against:
            rows = result["worse_than_base"]["rows"]
            print(f"\nworse than {args.against} on {len(rows)} figure(s)" + (":" if rows else ": beats it on every proxy"))
            for r in rows:
                n = "" if r["n"] is None else f" ({r['images']} of {r['n']} images)"
                print(f"  {r['proxy']}: {r['candidate']:.3f} against {r['base']:.3f}{n}")
            m = result["crowded_at_base_share"]
            if m:
                print(f"crowded index at the baseline's share of real images called AI ({m['base_real_called_ai']:.3f}; "
                      f"here {m['real_called_ai']:.3f}): held-out families caught {m['caught']:.3f} against "
                      f"{m['base_caught']:.3f}")

    run_script(work)


if __name__ == "__main__":
    main()
