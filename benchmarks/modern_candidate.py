"""Train a candidate embedder on one half of the modern protocol and judge it on the other half, in one
resumable command: the recipe of the candidates in docs/benchmarks.md (A3 / B3), rebuilt from ../shared.

    python benchmarks/modern_candidate.py --half B --work /tmp/v3/B3 --threads 2
    python benchmarks/modern_proxies.py --combine /tmp/v3/A3/proxies /tmp/v3/B3/proxies --out /tmp/v3/A3B3

The modern proxies hold out one family and one real source at a time; one training per held-out part is out of
reach on a CPU, so a candidate is trained twice, each time without one half of the families and real sources
(HALVES: everything of theirs is out of training and of the starter index), and `modern_proxies.py --combine`
judges every part by the run that never saw it. Stages, in order, each a command of this repository logged to
WORK/recipe.log; a stage whose output is complete is skipped, so a killed run continues where it stopped
(training with `--resume`):

1. `view`, `view-train`: `tools/family_manifest.py` views of the modern set without the half (the training view
   lists the people sources it keeps --people-repeat times: a model that sees many AI portraits and few real ones
   learns "a retouched face is AI");
2. `tae-people`, `tae-rest`: `tools/tae_pairs.py`: the kept people crops, and --rest-limit other real crops
   (modern and photos), through the SD, SDXL and FLUX.1 tiny autoencoders: content-matched AI images, and each
   original and its decoders' images re-posted alike (`--no-repost-ai`: the real copies only, as A3, B3, A4 were);
3. `train`: `imgscan train` (Lite0 fine-tuned at 128 px, soft-supcon, real anchors weighted --real-weight);
   with --members N, N trainings that differ only in their seed (`train-seed1` ... into WORK/model_seedS), then
   `ensemble`: `imgscan ensemble` of them into WORK/ensemble_xN, the model the later stages judge (index_xN,
   proxies_xN). On 2 cores one seed moved the operating point more than any recipe change; the ensemble averages
   those accidents away (docs/benchmarks.md, twentieth session);
4. `index`: `tools/starter_index.py` (150 per class, 450 `real`) at the prior --ai-share; with --index-held-real,
   `real` up to 150 from every source, the held-out half's included (`view-held-real`): the proxies drop the
   judged source's own items, so this measures real support from collections the embedder never trained on;
5. `proxies`: `benchmarks/modern_proxies.py` on the held-out half.

Derived images and models stay under WORK, outside the repository. `--half all` holds nothing out (the
shipping recipe); its proxies stage is skipped, as nothing is left to judge.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.modern_proxies import PEOPLE_SOURCES, SHARED  # noqa: E402

# Families and real sources each half holds out (together: all six families, every real source of modern and
# photos). Chosen so that each half holds out people photos, graphics and at least one LDM family.
HALVES = {
    "A": (("nano-banana", "sdxl", "stylegan"),
          ("deepinsight+insightface", "google+mediapipe", "ageitgey+face_recognition", "ultralytics+assets",
           "photoprism+photoprism", "LycheeOrg+Lychee", "hmwc123+AAQR-master", "debian-mate-backgrounds",
           "debian-gnome-backgrounds", "camera:drewnoakes")),
    "B": (("unknown-ai", "sd1", "flux1"),
          ("open-mmlab+mmpose", "davisking+dlib", "timesler+facenet-pytorch", "CMU-Perceptual-Computing-Lab+openpose",
           "Hzzone+pytorch-openpose", "MikeKovarik+exifr", "csjunxu+PolyU-Real-World-Noisy-Images-Dataset",
           "alicevision+dataset_buddha", "alicevision+dataset_monstree", "NVlabs+instant-ngp",
           "debian-sway-backgrounds", "dreambooth", "Stability-AI+stablediffusion", "openMVG+SfM_quality_evaluation")),
    "all": ((), ()),
}
DECODERS = "sd,sdxl,flux1"


def real_sources_of(data: Path) -> set[str]:
    """The sources of a data set's not-AI images (its manifest)."""
    import csv

    with open(data / "manifest.csv", newline="") as f:
        return {r["source"] for r in csv.DictReader(f) if r["is_ai"] == "0"}


def train_work_dir(model: Path) -> Path:
    """Where a training keeps its checkpoint (passed as --work-dir, so that a re-run finds it to resume)."""
    return model / "train_work"


def member_dirs(work: Path, seed: int, members: int) -> list[tuple[int, Path]]:
    """(seed, model folder) of each training: the first is WORK/model, as a single-member run writes it."""
    return [(seed + i, work / ("model" if i == 0 else f"model_seed{seed + i}")) for i in range(members)]


def stages(args) -> list[tuple[str, Path, list[str]]]:
    """(name, the output whose presence means done, command) for each stage, in order."""
    families, held_sources = HALVES[args.half]
    w, py = args.work, sys.executable
    kit, photos, modern = args.shared / "kit", args.shared / "photos", args.shared / "modern"
    kept_people = sorted(PEOPLE_SOURCES - set(held_sources))
    others = sorted(real_sources_of(modern) - set(kept_people))
    held = ",".join(held_sources)
    exclude = ["--exclude-families", ",".join(families)] if families else []
    exclude += ["--exclude-sources", held] if held else []
    threads = ["--threads", str(args.threads)]
    repost = ["--no-repost-ai"] if args.no_repost_ai else []
    photos_sources = real_sources_of(photos)
    photo_holdout = [s for s in held_sources if s in photos_sources]
    out = [
        ("view", w / "modern" / "manifest.csv",
         [py, ROOT / "tools/family_manifest.py", modern, "--out", w / "modern", *exclude]),
        ("view-train", w / "modern_train" / "manifest.csv",
         [py, ROOT / "tools/family_manifest.py", modern, "--out", w / "modern_train", *exclude,
          "--repeat", ",".join(f"{s}={args.people_repeat}" for s in kept_people)]),
        ("tae-people", w / "tae_people" / "pairs.json",
         [py, ROOT / "tools/tae_pairs.py", modern, "--out", w / "tae_people", "--exclude-fold", "4",
          "--exclude-sources", ",".join(others), "--decoders", DECODERS, *threads, *repost]),
        ("tae-rest", w / "tae_rest" / "pairs.json",
         [py, ROOT / "tools/tae_pairs.py", modern, photos, "--out", w / "tae_rest", "--exclude-fold", "4",
          "--exclude-sources", ",".join([*held_sources, *kept_people]), "--decoders", DECODERS,
          "--limit", str(args.rest_limit), *threads, "--seed", "3", *repost]),
    ]
    members = member_dirs(w, args.seed, args.members)
    for i, (seed, model) in enumerate(members):
        out.append(("train" if i == 0 else f"train-seed{seed}", model / "model_card.json",
                    [py, "-m", "train", "train", kit, photos, w / "modern_train", w / "tae_people", w / "tae_rest",
                     "--out", model, "--work-dir", train_work_dir(model),
                     *(["--holdout-sources", ",".join(photo_holdout)] if photo_holdout else []),
                     "--loss", "soft-supcon", "--real-weight", str(args.real_weight), "--val-fold", "4",
                     "--holdout", "glid-3,gaugan", "--epochs", str(args.epochs), "--batches-per-epoch", "143",
                     "--batch-size", "32", "--images-per-class", "4", "--real-per-batch", "8", "--image-size", "128",
                     "--export-size", "256", "--scan-views", "5", "--freeze-blocks", "2", "--eval-every", "100",
                     *(["--aug-camera", str(args.aug_camera)] if args.aug_camera else []),
                     *threads, "--workers", "1", "--seed", str(seed), "--device", args.device]))
    model, suffix = w / "model", ""
    if args.members > 1:
        suffix = f"_x{args.members}"
        model = w / f"ensemble{suffix}"
        out.append(("ensemble", model / "model_card.json",
                    [py, "-m", "train", "ensemble", model, *(m for _, m in members)]))
    held_real_support = bool(args.index_held_real and held_sources)
    if held_real_support:
        # Real collections the embedder never trained on, as support only; the proxies drop the judged
        # source's own items, so each source is still judged by a support that never held it.
        out.append(("view-held-real", w / "held_real" / "manifest.csv",
                    [py, ROOT / "tools/family_manifest.py", modern, "--out", w / "held_real", "--real-only",
                     "--only-sources", held]))
        index_data, real_side = [kit, photos, w / "modern", w / "held_real"], [
            "--real-per-source", "150", "--real-per-class", "5000"]
    else:
        index_data = [kit, photos, w / "modern"]
        real_side = ["--real-per-class", "450", *(["--exclude-sources", ",".join(photo_holdout)] if photo_holdout else [])]
    # each starter-index setting its own folders, so that a work folder can hold both
    index, proxies = (w / "index_held_real", w / "proxies_held_real") if held_real_support else (w / "index", w / "proxies")
    index, proxies = index.with_name(index.name + suffix), proxies.with_name(proxies.name + suffix)
    out.append(("index", index / "manifest.json",
                [py, ROOT / "tools/starter_index.py", *index_data, "--model", model, "--out", index,
                 "--per-class", "150", *real_side, "--exclude-fold", "4", "--ai-share", str(args.ai_share)]))
    if families:
        out.append(("proxies", proxies / "modern_proxies.json",
                    [py, HERE / "modern_proxies.py", "--model", model, "--index", index, "--out",
                     proxies, "--held-out-families", ",".join(families), "--held-out-sources", held,
                     "--trained-on", f"modern_candidate.py --half {args.half}" + (
                         f" --seed {args.seed} --members {args.members}" if args.members > 1 else "") + (
                         f" --aug-camera {args.aug_camera:g}" if args.aug_camera else "")]))
    return [(name, done, [str(c) for c in cmd]) for name, done, cmd in out]


def main() -> None:
    from imgscan_core.errors import UsageError, run_script

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--half", choices=sorted(HALVES), required=True, help="which half to hold out (all: none)")
    ap.add_argument("--work", type=Path, required=True, help="folder for views, derived images, model, index")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the folder holding kit/, photos/, modern/")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--people-repeat", type=int, default=4)
    ap.add_argument("--rest-limit", type=int, default=500, help="other real crops through the autoencoders")
    ap.add_argument("--real-weight", type=float, default=3.0)
    ap.add_argument("--aug-camera", type=float, default=0.0,
                    help="`imgscan train --aug-camera P` (upscale 1-2x and sensor noise, every class alike); a trained "
                         "model counts as done, so give a recipe change its own --work folder")
    ap.add_argument("--ai-share", type=float, default=0.1, help="the starter index's prior (index calibrate)")
    ap.add_argument("--index-held-real", action="store_true",
                    help="put the held-out half's real photos in the starter index too (up to 150 per source), "
                         "with every source's up to 150: real support the embedder never trained on")
    ap.add_argument("--no-repost-ai", action="store_true",
                    help="TAE sets with re-posted real copies only (how A3, B3 and A4 were made)")
    ap.add_argument("--seed", type=int, default=0, help="the (first) training's seed")
    ap.add_argument("--members", type=int, default=1,
                    help="train N models, seeds --seed ... --seed + N - 1, and judge their `imgscan ensemble`")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dry-run", action="store_true", help="print the stages' commands and what is done")
    args = ap.parse_args()

    def work():
        if args.members < 1:
            raise UsageError(f"--members {args.members}: at least 1")
        for name in ("kit", "photos", "modern"):
            if not (args.shared / name / "manifest.csv").is_file():
                raise UsageError(f"--shared {args.shared}: no {name}/manifest.csv there")
        args.work.mkdir(parents=True, exist_ok=True)
        log = args.work / "recipe.log"
        for name, done, cmd in stages(args):
            line = shlex.join(cmd)
            if done.exists():
                print(f"[{name}] done ({done})")
                continue
            if name.startswith("train") and (Path(cmd[cmd.index("--work-dir") + 1]) / "checkpoint.pt").exists():
                cmd.append("--resume")
                line = shlex.join(cmd)
            print(f"[{name}] {line}", flush=True)
            if args.dry_run:
                continue
            started = time.time()
            with open(log, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{name}] {line}\n")
                f.flush()
                rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{name}] rc={rc} {time.time() - started:.0f} s\n")
            if rc != 0 or not done.exists():
                raise UsageError(f"stage {name} failed (rc {rc}); its output is in {log}; re-run to continue")
            print(f"[{name}] {time.time() - started:.0f} s", flush=True)

    run_script(work)


if __name__ == "__main__":
    main()
