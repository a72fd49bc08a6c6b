"""`imgscan explain IMAGE --out FILE.png`: which regions of an image move its embedding most.

The image is prepared exactly as `scan` prepares it (shorter side to the model's input size, centre crop).
Many perturbed views are embedded:
- square occlusions, filled with the image's mean colour, sliding with half-patch stride at up to three
  scales (1/4, 1/6 and 1/8 of the side; finer scales are dropped when --views is too small for them);
- random coarse masks (an 8x8 grid, each cell hidden with probability 1/4, as in RISE / LIME-style
  sampling) for the rest of the --views budget.
A view's score is 1 - cosine(embedding of the view, embedding of the image). A pixel's importance is the mean
of two maps: the mean score of the occlusion views that hid it, and (random masks) the mean score of the views
that hid it minus that of the views that left it visible. High where hiding the region moves the embedding,
i.e. the evidence the k-NN vote rests on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError


def occlusion_masks(size: int, budget: int) -> list[np.ndarray]:
    """Boolean [size, size] masks (True = hidden), coarse scale first, within `budget` views."""
    masks: list[np.ndarray] = []
    for div in (4, 6, 8):
        patch = max(2, round(size / div))
        stride = max(1, patch // 2)
        starts = list(range(0, size - patch + 1, stride))
        if starts[-1] != size - patch:
            starts.append(size - patch)
        scale = []
        for y in starts:
            for x in starts:
                m = np.zeros((size, size), dtype=bool)
                m[y:y + patch, x:x + patch] = True
                scale.append(m)
        if len(masks) + len(scale) > budget and masks:
            break
        masks.extend(scale[: budget - len(masks)])
    return masks


def random_masks(size: int, n: int, rng: np.random.Generator, cells: int = 8, p_hide: float = 0.25) -> list[np.ndarray]:
    """Coarse random masks: a cells x cells grid, each cell hidden with probability p_hide, shifted by a random
    offset (as RISE does) so that cell borders do not stay in the same place across views."""
    out = []
    reps = -(-size // cells)
    for _ in range(n):
        grid = rng.random((cells + 1, cells + 1)) < p_hide
        big = np.kron(grid, np.ones((reps, reps), dtype=bool)).astype(bool)
        dy, dx = rng.integers(0, reps, 2)
        m = big[dy:dy + size, dx:dx + size]
        if not m.any():
            m = m.copy()
            y, x = rng.integers(0, size - reps + 1, 2)
            m[y:y + reps, x:x + reps] = True
        out.append(m)
    return out


def importance_map(pixels: np.ndarray, embed, views: int = 400, seed: int = 0, batch: int = 32) -> tuple[np.ndarray, int]:
    """pixels: uint8 [S, S, 3]; embed: uint8 [n, S, S, 3] -> unit vectors [n, d]. Returns (map [S, S], views).

    Occlusion part: a pixel's mean score over the occlusion views that hid it (0 where hiding changes
    nothing). Random-mask part: mean score of the random views that hid the pixel minus the mean of those
    that left it visible (random masks hide other regions too; the difference removes that baseline). With
    both, the map is their mean."""
    size = pixels.shape[0]
    rng = np.random.default_rng(seed)
    occ = occlusion_masks(size, views)
    rnd = random_masks(size, max(0, views - len(occ)), rng)
    base = embed(pixels[None])[0]
    fill = pixels.reshape(-1, 3).mean(axis=0).astype(np.uint8)

    def scores(masks: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(masks), batch):
            chunk = masks[start:start + batch]
            views_px = np.repeat(pixels[None], len(chunk), axis=0)
            for i, m in enumerate(chunk):
                views_px[i][m] = fill
            out.append(1.0 - embed(views_px) @ base)
        return np.concatenate(out) if out else np.zeros(0)

    def hidden_mean(masks, s):
        acc = np.zeros((size, size)); cnt = np.zeros((size, size))
        for m, v in zip(masks, s):
            acc += m * v
            cnt += m
        return acc, cnt

    parts = []
    if occ:
        acc, cnt = hidden_mean(occ, scores(occ))
        parts.append(np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0))
    if rnd:
        s = scores(rnd)
        acc, cnt = hidden_mean(rnd, s)
        vis = len(rnd) - cnt
        h = np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0)
        v = np.divide(s.sum() - acc, vis, out=np.zeros_like(acc), where=vis > 0)
        parts.append(np.where((cnt > 0) & (vis > 0), h - v, 0.0))
    return np.mean(parts, axis=0).astype(np.float32), len(occ) + len(rnd)


FAST_VIEWS = 64  # --fast: the coarse occlusion scale (49 patches) and 15 random masks


def explain_images(images: list[Path], out: Path, model_dir: Path, index: Path | None = None, views: int = 400,
                   device: str = "auto", seed: int = 0, console=None, fast: bool = False) -> list[dict]:
    """Explain several images with one loaded model and index. One image: `out` is the PNG; several: `out` is a
    folder (made if missing) receiving IMAGE-STEM-explained.png each. The verdict comes from --index, else from
    the index `scan` would use by default."""
    from scanner.embed import Embedder, resolve_device
    from scanner.evaluation.plots import pyplot
    from scanner.paths import index_dir_for_reading

    pyplot()  # no matplotlib: say so before loading anything
    if len(images) > 1 or out.is_dir():
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: with several images, --out is a folder")
        out.mkdir(parents=True, exist_ok=True)
        targets = [out / f"{Path(i).stem}-explained.png" for i in images]
    else:
        targets = [out]
    embedder = Embedder(model_dir, device=resolve_device(device))
    support = None
    try:
        from indexes import SupportIndex

        support = SupportIndex.open(index_dir_for_reading(index, embedder.card.weights_sha256))
        support.check_model(embedder.model_id, embedder.card.weights_sha256, embedder.dim)
    except UsageError as exc:
        if index is not None:
            raise
        if console is not None:
            console.print(f"no verdict in the pictures: {exc}", highlight=False)
        support = None
    return [run_explain(image, target, model_dir, views=FAST_VIEWS if fast else views, device=device, seed=seed,
                        console=console, embedder=embedder, support=support)
            for image, target in zip(images, targets)]


def run_explain(image: Path, out: Path, model_dir: Path, index: Path | None = None, views: int = 400,
                device: str = "auto", seed: int = 0, console=None, embedder=None, support=None) -> dict:
    import torch

    from scanner.decode import ViewSpec, pillow_decode, sniff
    from scanner.embed import Embedder, resolve_device
    from scanner.evaluation.plots import pyplot, save_figure

    pyplot()  # no matplotlib: say so before embedding hundreds of views
    try:
        data = Path(image).read_bytes()
    except OSError as exc:
        raise UsageError(f"{image}: cannot read ({exc.strerror or exc})") from None
    sniffed = sniff(data, 100_000_000)
    if sniffed.error:
        raise UsageError(f"{image}: {sniffed.error}")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the output is a PNG file (name it *.png)")
    if not out.parent.expanduser().is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    if embedder is None:
        embedder = Embedder(model_dir, device=resolve_device(device))
    try:
        # One view (the centre) by the model's resize rule: the map shows what moves that view's embedding.
        crops, (w, h) = pillow_decode(data, ViewSpec(embedder.size, embedder.view_spec.resize, 1))
        pixels = crops[0]
    except Exception as exc:
        raise UsageError(f"{image}: cannot decode ({exc})") from None

    def embed(batch: np.ndarray) -> np.ndarray:
        return embedder.embed_views(torch.from_numpy(np.ascontiguousarray(batch)))

    verdict = None
    if support is None and index is not None:
        from indexes import SupportIndex

        support = SupportIndex.open(index)
        support.check_model(embedder.model_id, embedder.card.weights_sha256, embedder.dim)
    if support is not None:
        from scanner.detail import view_detail
        from scanner.verdict import VerdictRule, decide

        nb = support.search(embed(pixels[None]), 11)
        detail = view_detail(pixels[None])
        v = decide(nb.labels, nb.sims, VerdictRule.of(support), detail)
        verdict = {"label": str(v.label[0]), "closed_set_label": str(v.closed_set_label[0]),
                   "ai_score": float(v.ai_score[0]), "open_set_score": float(v.open_set_score[0]),
                   "detail": float(detail[0])}
    heat, n_views = importance_map(pixels, embed, views=views, seed=seed)

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.8))
    axes[0].imshow(pixels)
    axes[0].set_title(f"input as the model sees it ({embedder.size}x{embedder.size})", fontsize=9)
    lim = float(np.max(np.abs(heat))) or 1.0
    im = axes[1].imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1].set_title("importance: embedding change (1 - cosine)\nwhen the region is hidden", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    axes[2].imshow(pixels)
    pos = np.clip(heat / lim, 0, 1)
    axes[2].imshow(pos, cmap="jet", alpha=0.75 * pos ** 1.5, vmin=0, vmax=1)
    axes[2].set_title("regions that move the embedding most", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    title = f"{Path(image).name} ({w}x{h}) - {embedder.model_id} - {n_views} views"
    if verdict:
        title += (f"\nverdict: {verdict['label']} (closest class {verdict['closed_set_label']}), "
                  f"ai_score {verdict['ai_score']:.3f}, open_set_score {verdict['open_set_score']:.3f}, "
                  f"pixel detail {verdict['detail']:.1f}")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out)
    result = {"image": str(image), "out": str(out), "views": n_views, "model": embedder.model_id, "verdict": verdict,
              "max_importance": lim}
    if console is not None:
        console.print(f"wrote {out} ({n_views} views)" + (f"; verdict {verdict['label']} (ai_score "
                      f"{verdict['ai_score']:.3f})" if verdict else ""), highlight=False)
    return result
