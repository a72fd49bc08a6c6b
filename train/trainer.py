"""The training loop: P x K batches, contrastive (or CE) loss, per-epoch k-NN validation, checkpoints, export.

Files (WORK = --work-dir, default OUT/train_work):
  WORK/checkpoint.pt     state dicts after the last finished epoch (tensors/primitives only: loaded with
                         torch.load(weights_only=True)); --resume continues from it
  WORK/train_log.jsonl   one JSON object per epoch: epoch, loss, k-NN (k=11) accuracy on the validation fold, time
  OUT/embedder.pt + OUT/model_card.json   the exported model (scanner/model.py contract); the log is copied to
                         OUT/train_log.jsonl as well (small, and it is the evidence behind the card's figures)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_path
from imgscan_core.labels import REAL_LABEL
from scanner.decode import ViewSpec
from scanner.embed import resolve_device
from scanner.model import ModelCard, load_model, save_model_dir
from train.data import (
    AugmentConfig,
    ScanImages,
    TrainImages,
    collate_train,
    load_samples,
    make_split,
)
from train.data_licence import data_licences
from train.ema import WeightAverage
from train.losses import build_loss, relation_distillation
from train.model import EMBEDDING_DIM, build_embedder, has_fixed_input_size, script_embedder
from train.sampling import PKBatchSampler, content_matched_reals

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_FORMAT = 1
# Settings that must not change between a checkpoint and --resume (the number of epochs may grow).
RESUME_MUST_MATCH = ("data", "holdout_sources", "real_per_batch", "paired_real", "aug_camera", "backbone", "input_filter", "residual_branch", "loss", "image_size", "holdout", "val_fold", "batch_size",
                     "images_per_class", "freeze_blocks", "embedding_dim", "temperature", "seed", "ema", "min_crop_detail",
                     "distil_from", "distil_weight", "soft_alpha", "real_weight")


@dataclass
class TrainConfig:
    data: list[str]  # one or more DATA (class folders, a folder with manifest.csv, or a manifest CSV)
    out: str
    backbone: str = "tf_efficientnet_lite0"
    input_filter: str = "none"  # "npr": the backbone sees neighbouring-pixel residuals, not the image (train.model)
    residual_branch: int = 0  # width of the residual branch beside the backbone (two-branch model); 0: none
    holdout: list[str] = field(default_factory=list)
    holdout_sources: list[str] = field(default_factory=list)  # manifest `source` values never trained on
    epochs: int = 10
    batch_size: int = 32
    images_per_class: int = 4
    image_size: int = 128
    export_size: int = 256
    scan_views: int = 1  # views the card asks scans for (scanner.decode.ViewSpec; large images only)
    scan_mirror: bool = False  # the card asks scans to average each view with its mirror image (ViewSpec.mirror)
    loss: str = "supcon"
    temperature: float = 0.1
    soft_alpha: float | None = None  # soft-supcon: positive weight between two generators (None: the loss's)
    real_weight: float | None = None  # soft-supcon: weight of real anchors (None: the loss's)
    init_weights: str | None = None
    pretrained: bool = False
    val_fold: int | None = None
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    lr: float = 3e-4
    head_lr_mult: float = 5.0
    weight_decay: float = 1e-4
    freeze_blocks: int = 0
    workers: int | None = None
    augment: bool = True
    real_per_batch: int = 0  # real photos in every batch (0: real is one class among the P drawn); sampling
    paired_real: int = 0  # real photos of the same collection joining a drawn generated class (train.sampling)
    aug_camera: float = 0.0  # probability of each camera-like augmentation (upscale, sensor noise); train.data
    min_crop_detail: float = 0.0  # redraw training crops flatter than this pixel detail (train.data.augment); 0: off
    ema: float = 0.0  # decay of the weight average that is validated and exported (train.ema); 0: the last weights
    distil_from: str | None = None  # a teacher model directory (e.g. an ensemble): train.losses.relation_distillation
    distil_weight: float = 1.0  # its weight beside the main loss
    knn_k: int = 11
    embedding_dim: int = EMBEDDING_DIM
    work_dir: str | None = None
    name: str | None = None
    model_version: str | None = None
    batches_per_epoch: int | None = None  # default: about one pass over the training images
    eval_every: int = 1  # k-NN validation every N epochs (always after the last one)
    support_per_class: int | None = None  # cap on support images per class in intermediate validations
    command: str = ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    cpu = _cpu_model()
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        desc = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host: {desc}"
    return desc


# ----------------------------------------------------------------------------------------------- evaluation

def knn_predict(support: torch.Tensor, support_labels: list[str], queries: torch.Tensor, k: int) -> list[str]:
    """The closed-set label `scan` would give each query (scanner.verdict.decide over its k most cosine-similar
    support embeddings), so that the card's knn_acc measures the rule users run."""
    import numpy as np

    from scanner.verdict import decide

    k = min(k, support.shape[0])
    top_sim, top_idx = (queries @ support.T).topk(k, dim=1)
    labels = np.asarray(support_labels, dtype=object)[top_idx.cpu().numpy()]
    return decide(labels, top_sim.float().cpu().numpy()).closed_set_label.tolist()


@torch.no_grad()
def embed_images(model, images: torch.Tensor, device: torch.device, batch: int = 16) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.head[-1].out_features)


def load_scan_images(samples, size: int, workers: int) -> torch.Tensor:
    ds = ScanImages(samples, size)
    if not len(ds):
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
    return torch.cat(list(loader))


def knn_metrics(preds: list[str], truth: list[str], holdout: list[str]) -> dict:
    def acc(pairs):
        pairs = list(pairs)
        return round(sum(p == t for p, t in pairs) / len(pairs), 4) if pairs else None

    pairs = list(zip(preds, truth))
    per_class = {c: acc((p, t) for p, t in pairs if t == c) for c in sorted(set(truth))}
    return {
        "knn_acc": acc(pairs),
        "knn_acc_trained_classes": acc((p, t) for p, t in pairs if t not in holdout),
        "knn_acc_holdout_classes": acc((p, t) for p, t in pairs if t in holdout),
        # Detection view: is the image real or AI-made (any generator)?
        "real_vs_ai_acc": acc(((p == "real"), (t == "real")) for p, t in pairs),
        "per_class_acc": per_class,
        "n_val": len(pairs),
    }


# --------------------------------------------------------------------------------------------------- training

def _cap_per_class(labels: list[str], cap: int | None, seed: int) -> list[int]:
    """Indices of at most `cap` items per label (a fixed random subset), all of them when cap is None."""
    if cap is None:
        return list(range(len(labels)))
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    keep = [i for idx in by_label.values() for i in (idx if len(idx) <= cap else rng.sample(idx, cap))]
    return sorted(keep)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=True,
    )


def check_config(cfg: TrainConfig) -> None:
    """Refuse unusable settings before any work, each in one line."""
    if cfg.loss not in ("supcon", "soft-supcon", "ce"):
        raise UsageError(f"--loss {cfg.loss}: choose supcon, soft-supcon or ce")
    for name, value, low in (("--epochs", cfg.epochs, 1), ("--batch-size", cfg.batch_size, 2),
                             ("--image-size", cfg.image_size, 16), ("--export-size", cfg.export_size, 16),
                             ("--images-per-class", cfg.images_per_class, 2)):
        if value < low:
            raise UsageError(f"{name} must be at least {low} (got {value})")
    if (cfg.batch_size - cfg.real_per_batch) % cfg.images_per_class:
        raise UsageError(f"--batch-size {cfg.batch_size} minus --real-per-batch {cfg.real_per_batch} must be a "
                         f"multiple of --images-per-class {cfg.images_per_class}")
    if cfg.real_per_batch and not 2 <= cfg.real_per_batch <= cfg.batch_size - 2 * cfg.images_per_class:
        raise UsageError(f"--real-per-batch {cfg.real_per_batch}: 0, or 2 to --batch-size minus two classes' "
                         f"images ({cfg.batch_size - 2 * cfg.images_per_class})")
    try:
        ViewSpec(cfg.export_size, "native", cfg.scan_views)
    except ValueError as exc:
        raise UsageError(f"--scan-views {cfg.scan_views}: {exc}") from None
    if has_fixed_input_size(cfg.backbone) and cfg.image_size != cfg.export_size:
        raise UsageError(f"--backbone {cfg.backbone}: a ViT's position embedding fixes its input size; give "
                         f"--image-size equal to --export-size (got {cfg.image_size} and {cfg.export_size})")


@dataclass
class Run:
    """Everything one training run updates, and what a checkpoint saves of it."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: PKBatchSampler
    loader: torch.utils.data.DataLoader
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype on CUDA; None on CPU
    ema: WeightAverage | None = None
    teacher: torch.nn.Module | None = None  # --distil-from: a frozen TorchScript embedder
    teacher_id: str = ""
    distil_weight: float = 0.0
    distil_temperature: float = 0.1
    history: list = field(default_factory=list)
    start_epoch: int = 0
    prior_seconds: float = 0.0

    def final_model(self) -> torch.nn.Module:
        """The weights that are validated and exported: the moving average with --ema, else the last ones."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, epoch: int, settings: dict, seconds: float) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "settings": settings, "history": self.history,
            "model": self.model.state_dict(), "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "py_rng": random.getstate(), "torch_rng": torch.get_rng_state(),
            "seconds": seconds, **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }


def build_run(cfg: TrainConfig, split, device: torch.device, workers: int):
    """Model, loss, optimiser, schedule and loader, in the order that fixes the random state (seeded first)."""
    real_label = split.classes.index(REAL_LABEL) if REAL_LABEL in split.classes else None
    _seed_everything(cfg.seed)
    model, init = build_embedder(cfg.backbone, cfg.init_weights, cfg.pretrained, cfg.embedding_dim,
                                 cfg.input_filter, img_size=cfg.export_size, residual_width=cfg.residual_branch)
    model.freeze_stages(cfg.freeze_blocks)
    loss_fn = build_loss(cfg.loss, num_classes=len(split.classes), embedding_dim=cfg.embedding_dim,
                         real_label=real_label, temperature=cfg.temperature, soft_alpha=cfg.soft_alpha,
                         real_weight=cfg.real_weight)
    model.to(device)
    loss_fn.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # measured faster for depthwise convs on CPU
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    # The residual branch starts from random weights, like the head: it learns at the head's rate.
    head_params = list(model.head.parameters()) + list(model.residual.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": backbone_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr * cfg.head_lr_mult}],
        weight_decay=cfg.weight_decay,
    )
    train_ds = TrainImages(split.train, split.classes, cfg.image_size, augment_config(cfg))
    sampler = PKBatchSampler(train_ds.labels, (cfg.batch_size - cfg.real_per_batch) // cfg.images_per_class,
                             cfg.images_per_class, cfg.batches_per_epoch, seed=cfg.seed,
                             fixed_class=train_ds.class_to_idx.get(REAL_LABEL), fixed_images=cfg.real_per_batch,
                             paired=content_matched_reals(split.train, train_ds.class_to_idx) if cfg.paired_real else None,
                             paired_images=cfg.paired_real)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=collate_train, persistent_workers=workers > 0)
    total_steps = cfg.epochs * len(sampler)
    warmup = min(len(sampler), max(1, total_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))
    use_amp = device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    run = Run(model, loss_fn, optimizer, scheduler, scaler, sampler, loader, device, amp_dtype, ema)
    if cfg.distil_from:
        run.teacher, run.teacher_id = load_teacher(cfg, split, device)
        run.distil_weight, run.distil_temperature = cfg.distil_weight, cfg.temperature
    return run, init


def load_teacher(cfg: TrainConfig, split, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The --distil-from model, frozen. A teacher that trained on what this run holds out (classes, sources, the
    validation fold) would leak it into the student: refused."""
    card, teacher = load_model(cfg.distil_from, device=str(device))
    held = card.training
    leaks = []
    if held.get("val_fold_held_out") != cfg.val_fold:
        leaks.append(f"validation fold {held.get('val_fold_held_out')} (this run: {cfg.val_fold})")
    missing = sorted(set(split.holdout) - set(held.get("holdout_classes") or []))
    if missing:
        leaks.append(f"classes {', '.join(missing)}")
    missing = sorted(set(cfg.holdout_sources) - set(held.get("holdout_sources") or []))
    if missing:
        leaks.append(f"sources {', '.join(missing)}")
    if leaks:
        raise UsageError(f"--distil-from {cfg.distil_from}: the teacher ({card.model_id}) did not hold out what this "
                         f"run holds out: {'; '.join(leaks)}")
    try:
        with torch.no_grad():
            teacher(torch.zeros(2, 3, cfg.image_size, cfg.image_size, device=device))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"--distil-from {cfg.distil_from}: the teacher fails on {cfg.image_size}px training crops "
                         f"({first})") from None
    return teacher, card.model_id


def resume_run(run: Run, ckpt_path: Path, settings: dict, log) -> None:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{ckpt_path}: unknown checkpoint format {ckpt.get('format')}")
    # A setting the checkpoint does not name did not exist when it was written: it ran with the default.
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(TrainConfig)}
    changed = [k for k in RESUME_MUST_MATCH if ckpt["settings"].get(k, defaults.get(k)) != settings.get(k)]
    if changed:
        raise UsageError(f"--resume: settings differ from the checkpoint's: {', '.join(changed)}")
    run.model.load_state_dict(ckpt["model"])
    run.loss_fn.load_state_dict(ckpt["loss"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["ema"])
    random.setstate(ckpt["py_rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.start_epoch, run.history, run.prior_seconds = ckpt["epoch"], list(ckpt["history"]), float(ckpt["seconds"])
    log(f"resumed from {ckpt_path} after epoch {run.start_epoch}")


def train_epoch(run: Run, epoch: int, epochs: int, show_progress: bool) -> dict:
    run.sampler.set_epoch(epoch)
    run.model.train()
    run.loss_fn.train()
    device, loss_sum, n_batches = run.device, 0.0, 0
    with _progress(show_progress) as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=len(run.sampler), info="")
        for images, labels in run.loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if device.type == "cpu":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=run.amp_dtype or torch.float16, enabled=run.amp_dtype is not None):
                emb = run.model(images)
            loss = run.loss_fn(emb.float(), labels)
            if run.teacher is not None:
                with torch.no_grad():
                    target = run.teacher(images)
                loss = loss + run.distil_weight * relation_distillation(emb.float(), target, run.distil_temperature)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            if run.ema is not None:
                run.ema.update(run.model)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            loss_sum += loss.item()
            n_batches += 1
            progress.update(task, advance=1, info=f"loss {loss_sum / n_batches:.4f}")
    return {"epoch": epoch + 1, "loss": round(loss_sum / max(1, n_batches), 5)}


@dataclass
class Validation:
    """The validation fold against the support set, decoded once (scan-style, at the export size)."""

    support_images: torch.Tensor
    support_labels: list[str]
    val_images: torch.Tensor
    val_labels: list[str]
    holdout: list[str]
    # Intermediate validations may use a per-class-capped support set: embedding thousands of images at scan
    # size every epoch costs more than the epoch on a CPU. The final validation uses all of it.
    small_support: list[int]

    def run(self, run: Run, k: int, final: bool) -> dict:
        t_eval = time.time()
        idx = list(range(len(self.support_labels))) if final else self.small_support
        model = run.final_model()
        sup = embed_images(model, self.support_images[idx], run.device)
        qry = embed_images(model, self.val_images, run.device)
        preds = knn_predict(sup, [self.support_labels[i] for i in idx], qry, k)
        record = knn_metrics(preds, self.val_labels, self.holdout)
        record["n_support"] = len(idx)
        record["eval_seconds"] = round(time.time() - t_eval, 1)
        return record


def augment_config(cfg: "TrainConfig") -> AugmentConfig:
    return AugmentConfig(enabled=cfg.augment, p_upscale=cfg.aug_camera, p_noise=cfg.aug_camera,
                         min_crop_detail=cfg.min_crop_detail)


def train(cfg: TrainConfig, show_progress: bool = True, log=print) -> ModelCard:
    """Run training end to end and export OUT; returns the written model card."""
    t_start = time.time()
    check_config(cfg)
    device = torch.device(resolve_device(cfg.device))
    out = Path(cfg.out)
    work = Path(cfg.work_dir) if cfg.work_dir else out / "train_work"
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = work / CHECKPOINT_FILE, work / LOG_FILE
    if ckpt_path.exists() and not cfg.resume:
        raise UsageError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out/--work-dir")
    if cfg.resume and not ckpt_path.exists():
        raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
    workers = cfg.workers if cfg.workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    if isinstance(cfg.data, (str, os.PathLike)):
        cfg.data = [str(cfg.data)]
    split = make_split(load_samples(cfg.data), cfg.val_fold, cfg.holdout, cfg.holdout_sources)
    if cfg.real_per_batch and REAL_LABEL not in split.classes:
        raise UsageError(f"--real-per-batch {cfg.real_per_batch}: the training data has no `{REAL_LABEL}` class")
    run, init = build_run(cfg, split, device, workers)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("command",)}
    if cfg.resume:
        resume_run(run, ckpt_path, settings, log)
    log(f"train: {len(split.train)} images, {len(split.classes)} classes ({', '.join(split.classes)}); "
        f"val fold {cfg.val_fold}: {len(split.val)} images; holdout: {', '.join(split.holdout) or 'none'}; "
        f"device {device}, {len(run.sampler)} batches of {cfg.batch_size} per epoch, init {init.kind}")
    if cfg.paired_real:
        paired = ", ".join(f"{split.classes[c]} ({len(v)})" for c, v in sorted(run.sampler.paired.items()))
        log(f"--paired-real {cfg.paired_real}: real photos of their own collection join {paired or 'no class: no generated class shares a source with real photos'}")
    validation = None
    if split.val:
        support_labels = [s.label for s in split.support]
        validation = Validation(load_scan_images(split.support, cfg.export_size, workers), support_labels,
                                load_scan_images(split.val, cfg.export_size, workers), [s.label for s in split.val],
                                split.holdout, _cap_per_class(support_labels, cfg.support_per_class, cfg.seed))
    t_run = time.time()
    for epoch in range(run.start_epoch, cfg.epochs):
        t_epoch = time.time()
        record = train_epoch(run, epoch, cfg.epochs, show_progress)
        record["train_seconds"] = round(time.time() - t_epoch, 1)
        last_epoch = epoch + 1 == cfg.epochs
        if validation is not None and (last_epoch or (epoch + 1) % max(1, cfg.eval_every) == 0):
            record.update(validation.run(run, cfg.knn_k, final=last_epoch))
        record["seconds"] = round(time.time() - t_epoch, 1)
        record["lr"] = run.optimizer.param_groups[0]["lr"]
        run.history.append(record)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        log(" ".join(f"{k}={v}" for k, v in record.items() if k != "per_class_acc"))
        _atomic_torch_save(run.checkpoint(epoch + 1, settings, run.prior_seconds + (time.time() - t_run)), ckpt_path)
    wall = run.prior_seconds + (time.time() - t_run)
    val_images = validation.val_images if validation is not None else None
    return export(cfg, run.final_model(), init, split, run.history, wall, time.time() - t_start, device, val_images, out,
                  log_path, log,
                  teacher_id=run.teacher_id)


def _describe_data(cfg: TrainConfig, split) -> tuple[str, str]:
    counts = Counter(s.label for s in split.train)
    sources = Counter(s.source for s in split.train if s.source)
    what = (f"{', '.join(cfg.data)}: {len(split.train)} training images in {len(counts)} classes "
            f"({', '.join(f'{c} {n}' for c, n in sorted(counts.items()))})")
    if sources:
        what += f"; sources: {', '.join(f'{c} {n}' for c, n in sorted(sources.items()))}"
    if cfg.holdout_sources:
        what += f"; sources held out (never trained on): {', '.join(cfg.holdout_sources)}"
    licence = " ".join(dict.fromkeys(t for d in cfg.data for t in data_licences(Path(d))))
    return what, licence


def export(cfg, model, init, split, history, wall, total, device, val_images, out: Path, log_path: Path, log,
           teacher_id: str = "") -> ModelCard:
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script deprecation notice
        scripted = script_embedder(model)
    # The scripted module must compute what the eager one does: compare on real validation images if any.
    if val_images is not None and len(val_images):
        check = val_images[:16]
    else:
        check = torch.randint(0, 256, (8, 3, cfg.export_size, cfg.export_size), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        eager, script = model(check), scripted(check)
    max_diff = float((eager - script).abs().max())
    if not max_diff < 1e-4:
        raise RuntimeError(f"TorchScript export differs from the eager model by {max_diff:.2e}")
    what, licence = _describe_data(cfg, split)
    last = history[-1] if history else {}
    card = ModelCard(
        name=cfg.name or f"imgscan-{cfg.backbone.replace('_', '-')}-{cfg.loss}",
        version=cfg.model_version or time.strftime("%Y.%m.%d", time.gmtime()),
        input_size=cfg.export_size,
        embedding_dim=cfg.embedding_dim,
        preprocessing=ViewSpec(cfg.export_size, "native", cfg.scan_views, cfg.scan_mirror).to_card(),  # checked in train()
        normalization={"mean": list(init.mean), "std": list(init.std)},
        backbone=(f"{cfg.backbone} (timm), init: {init.detail}"
                  + (", input: NPR residual x - up2(down2(x)) (train.model.npr_residual)" if cfg.input_filter == "npr" else "")
                  + (f", plus a residual branch of width {cfg.residual_branch} over the NPR residual (train.model.ResidualBranch)"
                     if cfg.residual_branch else "")),
        loss=cfg.loss + (f" (temperature {cfg.temperature})" if cfg.loss != "ce" else " (cosine classifier, scale 16)")
        + (f", alpha {cfg.soft_alpha}" if cfg.loss == "soft-supcon" and cfg.soft_alpha is not None else "")
        + (f", real anchors x{cfg.real_weight}" if cfg.loss == "soft-supcon" and cfg.real_weight is not None else ""),
        training_data=what,
        licence=licence,
        training={
            "command": cfg.command,
            "settings": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "command"},
            "val_fold_held_out": cfg.val_fold,
            "holdout_classes": split.holdout,
            "holdout_sources": list(cfg.holdout_sources),
            "classes_trained": split.classes,
            "augmentations": dataclasses.asdict(augment_config(cfg)),
            "epochs_log": [{k: v for k, v in r.items() if k != "per_class_acc"} for r in history],
            "final_val": last,
            "train_wall_seconds": round(wall, 1),
            "total_wall_seconds": round(total, 1),
            "hardware": hardware_description(device),
            **({"teacher": teacher_id} if teacher_id else {}),
            "export_check": {"compared": "TorchScript vs eager embeddings", "images": int(check.shape[0]),
                             "max_abs_diff": max_diff},
        },
        notes=(f"Trained on {cfg.image_size}px random crops, exported for {cfg.export_size}px scan input. "
               f"k-NN (k={cfg.knn_k}) validation: support = training folds of all classes (held-out classes "
               f"enrolled, never trained on), queries = fold {cfg.val_fold}."
               + (f" Exported weights: moving average of the weights over the steps (decay {cfg.ema}, "
                  "train.ema), not the last step's." if cfg.ema else "")
               + (f" Distilled from {teacher_id} (in-batch neighbour distributions, weight {cfg.distil_weight}, "
                  "train.losses.relation_distillation) beside the main loss." if teacher_id else "")),
    )
    card = save_model_dir(scripted, card, out)
    if log_path.exists() and log_path.parent.resolve() != out.resolve():
        shutil.copyfile(log_path, out / LOG_FILE)
    # Read it back through the scanner's own loader: what we wrote is what `imgscan scan` will get.
    _, loaded = load_model(out)
    with torch.no_grad():
        reloaded_diff = float((loaded(check) - eager).abs().max())
    if not reloaded_diff < 1e-4:
        raise RuntimeError(f"reloaded model differs from the trained one by {reloaded_diff:.2e}")
    log(f"exported {out} ({card.model_id}); TorchScript vs eager max |diff| {max_diff:.2e}")
    return card
