"""What the model card says of the training data's licences: one text per known data set, and the chain from a
derived set (decoder pairs, a filtered view of a set) back to the sets it was made from.

A known set is recognised by its README's title. A tool that writes a derived set calls `record_derivation`, which
leaves OUT/derived_from.json naming its inputs; the set then carries its inputs' licences. Anything else gets a
warning that names it, so that a model card never claims a licence nobody recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

DERIVED_FROM_FILE = "derived_from.json"

KIT_LICENCE = (
    "Trained on the imgscan development kit, whose originals are research / non-commercial: ImageNet sample "
    "photos (ImageNet terms of access), BSDS500 photos, ForenSynths/CNNDetection samples (CC BY-NC-SA 4.0), "
    "text-to-image renders from dcsan/imagen (no licence stated). The images are not shipped; these weights are "
    "derived from them, so treat the model as research / non-commercial unless you retrain on data you may use."
)

PHOTOS_LICENCE = (
    "Real camera photos (the photos set): drewnoakes/metadata-extractor-images sample photos (\"free to use these "
    "media files however you wish\") and google/dreambooth dataset photos (CC BY 4.0, photos by its authors and "
    "from Unsplash). The images are not shipped; these weights are derived from them."
)

MODERN_LICENCE = (
    "The modern set (generators of 2022-26, real photos of 19 collections, human-made graphics; crops taken from "
    "public repositories), licences as each source states them: CC0 (amiantos/AI-Horde-Styles), MIT "
    "(SupaGruen/StableDiffusion-CheatSheet, leejet/stable-diffusion.cpp, LycheeOrg/Lychee, MikeKovarik/exifr, "
    "ageitgey/face_recognition, timesler/facenet-pytorch), Boost 1.0 (davisking/dlib), Apache-2.0 "
    "(Kwai-Kolors/Kolors, google/mediapipe, open-mmlab/mmpose code with COCO / MPII / CrowdPose / OCHuman test "
    "photos; Inf-imagine/Sentry for research use; XLabs-AI/x-flux code, FLUX.1-dev outputs non-commercial), CC BY 4.0 "
    "(muset-ai/awesome-nano-banana-pro, alicevision/dataset_buddha), MIT code with Open RAIL++-M weights "
    "(Stability-AI/stablediffusion), per model NVIDIA non-commercial / CC BY-NC-SA / public domain "
    "(justinpinkney/awesome-pretrained-stylegan2), non-commercial (PolyU Real-World Noisy Images), non-commercial "
    "research (deepinsight/insightface data, CMU openpose), EPFL CVLab data (openMVG SfM_quality_evaluation), "
    "AGPL-3.0 (photoprism, ultralytics/assets), GPL-2+ and each package's copyright (Debian mate / gnome / sway "
    "backgrounds), see repository (alicevision/dataset_monstree, NVlabs/instant-ngp), none stated "
    "(songguoxs/gpt4o-image-prompts re-posts from X, hmwc123/AAQR-master, Hzzone/pytorch-openpose). The images are "
    "not shipped; these weights are derived from them, so treat the model as research / non-commercial."
)

# README title -> licence text
KNOWN_SETS = (
    ("Real / AI-generated image kit", KIT_LICENCE),
    ("Real camera photos", PHOTOS_LICENCE),
    ("Modern generators and more real cameras", MODERN_LICENCE),
)


def record_derivation(out: Path, inputs: list[Path], tool: str) -> None:
    """OUT/derived_from.json: the data sets OUT was made from (absolute paths), so a model trained on OUT names
    their licences."""
    record = {"tool": tool, "data": [str(Path(p).resolve()) for p in inputs]}
    (Path(out) / DERIVED_FROM_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def data_licences(data: Path, _seen: frozenset = frozenset()) -> list[str]:
    """The licence texts of a training DATA (a folder, or a manifest CSV inside one), in order, without repeats."""
    root = Path(data).resolve()
    root = root.parent if root.is_file() else root
    readme = root / "README.md"
    title = readme.read_text(encoding="utf-8", errors="replace").lstrip().split("\n", 1)[0] if readme.is_file() else ""
    for known, licence in KNOWN_SETS:
        if known in title:
            return [licence]
    derived = root / DERIVED_FROM_FILE
    if derived.is_file() and root not in _seen:
        try:
            inputs = json.loads(derived.read_text(encoding="utf-8"))["data"]
        except (ValueError, KeyError, TypeError):
            inputs = []
        texts = [t for p in inputs for t in data_licences(Path(p), _seen | {root})]
        if texts:
            return list(dict.fromkeys(texts))
    return [f"{data}: derived from training data whose licence was not recorded: check it before distributing "
            "these weights."]
