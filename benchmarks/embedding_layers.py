"""Open-set AUROC of a trained embedder's other layers: is the 128-d output the best place to run k-NN?

SupCon's authors discard the projection head and use the encoder's features downstream; imgscan runs k-NN on the
head's output. This measures, with the eval protocol's own split and judge (150 shots, query fold 4, the
never-enrolled classes' images of every fold), each of:
  backbone   the backbone's pooled features (1280-d for Lite0), L2-normalised;
  hidden     the head's hidden layer after its ReLU (512-d);
  final      the embedding itself (128-d; must match `imgscan eval` on the same model);
  tap        backbone and hidden, each L2-normalised, side by side;
and, for several models (seeds), the members side by side ("x3"), with and without an uncentred projection to
--dim fitted on the training images only (folds other than 4, classes not held out), as `imgscan ensemble --dim`
fits one.

    python benchmarks/embedding_layers.py ../shared/data/kit --unknown stable-diffusion,biggan \
        --model /tmp/f2new/model --model /tmp/f2s1/model --model /tmp/f2s2/model --cache-dir /tmp/layers

Prints one line per variant: open-set AUROC overall and per never-enrolled class, kit detection accuracy, real
queries called AI. Needs a model trained by `imgscan train` (train/model.py's Embedder: `backbone`, `head`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def layer_features(module, pixels) -> dict[str, np.ndarray]:
    """uint8 NCHW pixels -> {backbone, hidden, final} of a scripted train.model.Embedder (one-branch)."""
    import torch

    with torch.no_grad():
        x = (torch.as_tensor(pixels).float() - module.pixel_mean) / module.pixel_std
        feats = module.backbone(x)
        hidden = torch.relu(getattr(module.head, "0")(feats))
        final = torch.nn.functional.normalize(getattr(module.head, "2")(hidden), dim=1)
    return {"backbone": feats.numpy(), "hidden": hidden.numpy(), "final": final.numpy()}


def variants(layers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from scanner.evaluation.baselines import l2_normalise

    unit = {name: l2_normalise(layers[name]) for name in ("backbone", "hidden", "final")}
    return {**unit, "tap": l2_normalise(np.concatenate([unit["backbone"], unit["hidden"]], 1))}


def projected(x: np.ndarray, fit_rows: np.ndarray, dim: int) -> tuple[np.ndarray, float]:
    """x onto the directions `imgscan ensemble --dim` would keep, fitted on x[fit_rows], re-normalised; the share
    of their energy kept."""
    from scanner.evaluation.baselines import l2_normalise
    from train.ensemble import leading_directions

    directions, kept = leading_directions(x[fit_rows], dim)
    return l2_normalise(x @ directions), kept


def model_layers(model_dir: Path, paths: list[str], cache_dir: Path) -> dict[str, np.ndarray]:
    from scanner.detail import view_detail
    from scanner.model import load_model, read_card
    from train.data import centre_view_pixels

    weights = read_card(model_dir).weights_sha256  # checked against the file by load_model below
    if not weights:
        raise SystemExit(f"{model_dir}: its card records no weights sha256 (an ensemble?); one trained model is needed")
    cached = cache_dir / f"layers-{weights[:16]}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    card, module = load_model(model_dir)  # verified against the card's sha256 before it is run
    parts = []
    for i in range(0, len(paths), 64):
        pixels = centre_view_pixels(paths[i:i + 64], card)
        part = layer_features(module, pixels)
        part["detail"] = view_detail(np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)))  # the scan's floor input
        parts.append(part)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **out)
    return out


def main() -> None:
    import torch

    import xxhash

    from scanner.dataset import load_dataset
    from scanner.evaluation.baselines import l2_normalise
    from scanner.evaluation.evaluate import MAIN_METHOD, Features, Method, compute_metrics, drop_duplicates, run_protocol

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", type=Path, action="append", required=True, help="repeat for several seeds")
    ap.add_argument("--unknown", required=True, help="the classes the models held out of training")
    ap.add_argument("--cache-dir", type=Path, required=True, help="where each model's layers are kept (.npz)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unknown = args.unknown.split(",")
    ds = load_dataset(args.data)
    paths = [str(p) for p in ds.paths]
    fit_rows = (ds.folds != 4) & ~np.isin(ds.labels, unknown)

    def judge(name: str, x: np.ndarray) -> None:
        with tempfile.TemporaryDirectory() as work:
            r = run_protocol(ds, feats, [Method(MAIN_METHOD, x, "cosine", name)], [150], unknown, [4], 0, 11,
                             Path(work), unknown_every_fold=True)
        m = compute_metrics(ds, r.judged[(MAIN_METHOD, 150, 4)])
        o, d = m["open_set"], m["detection"]
        per = ", ".join(f"{c} {v['auroc']:.3f}" for c, v in o["per_unknown_class"].items())
        print(f"{name:34s} open-set AUROC {o['auroc']:.3f} ({per}; n {o['n_unknown']})  det acc "
              f"{d['mean_accuracy']:.3f}  det AUC {d['mean_auc']:.3f}  real called AI {d['real_called_ai']:.3f}",
              flush=True)

    members, feats = [], None
    for model in args.model:
        layers = model_layers(model, paths, args.cache_dir)
        if len(layers["final"]) != len(ds):
            raise SystemExit(f"{args.data}: not every image decodes; this script expects a data set like the kit")
        if feats is None:  # the pixel-detail floor of the eval, from the same views
            # the read stage's key (xxh3-128 of the bytes), as `imgscan eval` keys its images
            sha = np.array([xxhash.xxh3_128_hexdigest(Path(p).read_bytes()) for p in paths], dtype=object)
            feats = Features(ok=np.ones(len(ds), dtype=bool), sha=sha, errors={}, embeddings=layers["final"],
                             detail=layers["detail"])
            drop_duplicates(ds, feats)  # byte-identical files are one image, as in `imgscan eval`
        v = variants(layers)
        members.append(v)
        for name, x in v.items():
            judge(f"{model.parent.name}/{model.name}: {name} ({x.shape[1]}-d)", x)
    if len(members) > 1:
        for name in ("final", "tap"):
            side = l2_normalise(np.concatenate([m[name] for m in members], 1))
            judge(f"x{len(members)} {name} ({side.shape[1]}-d)", side)
            proj, kept = projected(side, fit_rows, args.dim)
            judge(f"x{len(members)} {name} -> {args.dim}-d ({kept:.4f} kept)", proj)


if __name__ == "__main__":
    main()
