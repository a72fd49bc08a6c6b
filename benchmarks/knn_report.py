"""k-NN validation report for an exported model directory, or for the untrained ImageNet backbone as a baseline.

    python benchmarks/knn_report.py DATA --val-fold 4 --holdout glid-3,gaugan --model scanner/default_model
    python benchmarks/knn_report.py DATA --val-fold 4 --holdout glid-3,gaugan --imagenet-lite0   # baseline

Same protocol as the trainer's last-epoch validation: support = every image of the other folds (held-out
classes included: enrolled, never trained on), queries = the validation fold, cosine k-NN with k = 11, scan-style
preprocessing at the model's input size. Adds, per class, the share of validation images whose k-NN label is
not `real` ("flagged as AI"): for held-out generators that is the zero-shot detection rate.

The baseline embeds with the Lite0 ImageNet backbone's pooled 1280-d features (L2-normalised), i.e. what the
k-NN would see with no training at all.
"""

from __future__ import annotations

import argparse
import json

import torch


def main(argv: list[str] | None = None) -> dict:
    from train.data import load_samples, make_split
    from train.trainer import embed_images, knn_metrics, knn_predict, load_scan_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--val-fold", type=int, required=True)
    ap.add_argument("--holdout", default="")
    ap.add_argument("--k", type=int, default=11)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="model directory (embedder.pt + model_card.json)")
    group.add_argument("--imagenet-lite0", action="store_true", help="baseline: untrained Lite0 ImageNet features")
    ap.add_argument("--size", type=int, default=256, help="input size for the baseline (a model uses its card's)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    holdout = [h for h in args.holdout.split(",") if h]
    split = make_split(load_samples(args.data), args.val_fold, holdout)
    if args.model:
        from scanner.model import load_model

        card, module = load_model(args.model)
        size, what = card.input_size, card.model_id
    else:
        import timm
        from torch.nn import functional as F

        from train.lite0_weights import LITE0_MEAN, LITE0_STD, load_lite0_into

        net = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
        load_lite0_into(net)
        mean = torch.tensor(LITE0_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(LITE0_STD).view(1, 3, 1, 1) * 255

        class Baseline(torch.nn.Module):
            def forward(self, x):
                return F.normalize(net((x.float() - mean) / std), dim=1)

        module, size, what = Baseline().eval(), args.size, "tf_efficientnet_lite0 ImageNet features (untrained)"

    cpu = torch.device("cpu")
    support = embed_images(module, load_scan_images(split.support, size, 0), cpu)
    queries = embed_images(module, load_scan_images(split.val, size, 0), cpu)
    preds = knn_predict(support, [s.label for s in split.support], queries, args.k)
    truth = [s.label for s in split.val]
    report = {"model": what, "input_size": size, "n_support": len(split.support), **knn_metrics(preds, truth, holdout)}
    report["flagged_as_ai"] = {
        c: round(sum(p != "real" for p, t in zip(preds, truth) if t == c) / truth.count(c), 4) for c in sorted(set(truth))
    }
    print(json.dumps(report, indent=1, sort_keys=True))
    return report


if __name__ == "__main__":
    main()
