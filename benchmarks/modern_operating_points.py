"""The modern proxies at several `is_ai` thresholds: is a model's trouble a threshold or a ranking?

    python benchmarks/modern_operating_points.py --out /tmp/modern/ops_v050.json model        # the shipped default
    python benchmarks/modern_operating_points.py --out /tmp/modern/ops_c1.json frozen /tmp/modern/dino_feats.npz

`model` judges an imgscan model and its starter index (embeddings cached as benchmarks/modern_proxies.py caches
them); `frozen` the DINOv2-head candidate c1 of benchmarks/frozen_features.py (heads trained once, reused for every
threshold). Each threshold re-runs the whole protocol of modern_proxies.py with `is_ai = ai_score > t` instead of
the product's 0.5 (scanner/verdict.py), nothing else changed; `--ai-shares 0.5,0.2,0.1` instead re-calibrates
ai_score for a crawl with that share of generated images and keeps the product's rule: the operating point a user
gets from `imgscan index calibrate --ai-share`. A model whose held-out people photos and AI images
cannot both beat another model's at any threshold needs a better embedding, not another operating point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import modern_proxies as mp  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def at_threshold(threshold: float):
    """modern_proxies.judge with `is_ai = ai_score > threshold`."""
    judge = mp.judge

    def judged(*args, **kwargs):
        verdicts = judge(*args, **kwargs)
        verdicts.is_ai = verdicts.ai_score > threshold
        return verdicts
    return judged


def sweep(u, embedded_without, thresholds, seed: int = 0, families=None, sources=None, ai_shares=False) -> dict:
    """The protocol at each point of `thresholds`: an is_ai threshold, or (`ai_shares`) a starter-index prior
    with the product's own rule, is_ai = ai_score > 0.5 (`imgscan index calibrate --ai-share`)."""
    import dataclasses

    shipped_judge, out = mp.judge, {}
    try:
        for t in thresholds:
            if ai_shares:
                judged_by = lambda **held_out: dataclasses.replace(embedded_without(**held_out), ai_share=t)  # noqa: E731
            else:
                mp.judge, judged_by = at_threshold(t), embedded_without
            result = mp.run_proxies(u, judged_by, seed, families, sources)
            out[str(t)] = {"native": result["native"], "reposted": result["reposted"], "summary": mp.summary(result),
                           "families": {f: {"out_of_box": v["out_of_box"], "shots_50": v["shots_50"]}
                                        for f, v in result["families"].items()}}
            n = result["native"]
            print(f"{'ai_share' if ai_shares else 't'}={t}: AI caught {n['ai_caught']:.3f}, real kept {n['real_kept']:.3f}, people kept "
                  f"{n['people_kept']:.3f}, graphics kept {n['graphics_kept']:.3f}, balanced {n['balanced']:.3f}, "
                  f"re-posted balanced {result['reposted']['balanced']:.3f}", flush=True)
    finally:
        mp.judge = shipped_judge
    return out


def main() -> None:
    from imgscan_core.errors import run_script

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    ap.add_argument("--ai-shares", default="",
                    help="instead of thresholds: starter-index priors (e.g. 0.5,0.2,0.1), judged by the product's rule")
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model", help="an imgscan model and its starter index")
    m.add_argument("--model", type=Path, default=HERE.parent / "scanner" / "default_model")
    m.add_argument("--index", type=Path, default=HERE.parent / "scanner" / "default_index")
    m.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imgscan" / "modern-proxies")
    m.add_argument("--held-out-families", default="", help="as modern_proxies.py: judge only these families")
    m.add_argument("--held-out-sources", default="", help="as modern_proxies.py: judge only these real sources")
    f = sub.add_parser("frozen", help="benchmarks/frozen_features.py's candidate on cached features")
    f.add_argument("features", type=Path)
    f.add_argument("--epochs", type=int, default=40)
    f.add_argument("--groups", type=int, default=5)
    args = ap.parse_args()

    def work():
        u = mp.load_universe(mp.SHARED / "modern", mp.SHARED / "photos")
        if args.what == "model":
            embedded = mp.embed_model(u, args.model, args.index, args.cache)
            embedded_without = lambda **held_out: embedded  # noqa: E731 (one model whatever is held out)
        else:
            import frozen_features as ff

            embedded_without = ff.Candidate(argparse.Namespace(
                features=args.features, modern=mp.SHARED / "modern", photos=mp.SHARED / "photos",
                kit=mp.SHARED / "kit", tae_features=None, layers="all", epochs=args.epochs, groups=args.groups,
                seed=0, people_class=False))
        split = lambda s: tuple(x for x in s.split(",") if x) or None  # noqa: E731
        held = ((split(args.held_out_families), split(args.held_out_sources)) if args.what == "model" else (None, None))
        points = args.ai_shares or args.thresholds
        result = sweep(u, embedded_without, [float(t) for t in points.split(",")], 0, *held,
                       ai_shares=bool(args.ai_shares))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    run_script(work)


if __name__ == "__main__":
    main()
