"""PNG figures of an evaluation and of a scan report (matplotlib, Agg backend: no display needed).

Each function writes one PNG and returns its path. matplotlib is imported lazily so that the rest of imgscan
does not need it (it comes with the `eval` extra: pip install -e ".[eval]").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError
from scanner.evaluation import metrics as M


def pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise UsageError('plots need matplotlib: pip install "imgscan[eval]" (or -e ".[eval]" in a checkout)') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# Kelly's colours of maximum contrast (without white and black): 20 classes stay distinguishable, where
# tab20 pairs a dark and a light shade of each hue.
KELLY = ["#0067A5", "#F38400", "#008856", "#BE0032", "#875692", "#F3C300", "#848482", "#A1CAF1", "#882D17",
         "#8DB600", "#E68FAC", "#2B3D26", "#C2B280", "#604E97", "#F99379", "#DCD300", "#B3446C", "#654522",
         "#E25822", "#F6A600"]


def _colours(n: int):
    if n <= len(KELLY):
        return KELLY[:n]
    plt = pyplot()
    cmap = plt.get_cmap("tab20")
    return KELLY + [cmap(i % cmap.N) for i in range(n - len(KELLY))]


def confusion_png(rows: list[str], cols: list[str], matrix, path: Path, title: str) -> Path:
    plt = pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(cols), 1.0 + 0.5 * len(rows)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            if m[r, c]:
                ax.text(c, r, str(int(m[r, c])), ha="center", va="center", fontsize=6.5,
                        color="white" if norm[r, c] > 0.55 else "black")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, label="share of the row")
    return save_figure(fig, path)


def roc_png(per_generator: dict[str, tuple[np.ndarray, np.ndarray]], pooled: dict[str, tuple[np.ndarray, np.ndarray]],
            path: Path, title: str) -> Path:
    """Left: real vs each generator (main method). Right: real vs all generated, one curve per method.
    Values are (y_true, score) pairs."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, curves, sub in ((axes[0], per_generator, "real vs each generator"), (axes[1], pooled, "real vs all generated, per method")):
        cols = _colours(len(curves))
        for (name, (y, s)), col in zip(curves.items(), cols):
            if y.all() or (~y).all():
                continue
            fpr, tpr, _ = M.roc_curve(y, s)
            ax.plot(fpr, tpr, color=col, lw=1.4, label=f"{name} (AUC {M.auroc(y, s):.3f})")
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlabel("false-positive rate (real called AI)")
        ax.set_ylabel("true-positive rate (generated called AI)")
        ax.set_title(sub, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def oscr_png(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """curves: method -> (known_correct, known_scores, unknown_scores), scores higher = more known."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for (name, (correct, ks, us)), col in zip(curves.items(), _colours(len(curves))):
        fpr, ccr, _ = M.oscr_curve(correct, ks, us)
        if fpr.size:
            ax.plot(fpr, ccr, color=col, lw=1.5, label=f"{name} (OSCR {M.trapezoid(fpr, ccr):.3f})")
    ax.set_xlabel("false-positive rate (unknown queries accepted)")
    ax.set_ylabel("correct classification rate (known queries)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def shots_png(sweep: dict[str, list[dict]], path: Path, title: str) -> Path:
    """sweep: method -> rows {shots, <metric>: {mean, std}}; three panels."""
    plt = pyplot()
    panels = [("closed_macro_f1", "attribution macro F1 (closed set)"), ("mean_det_auc", "mean detection AUC"),
              ("oscr", "OSCR")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    for ax, (key, label) in zip(axes, panels):
        for (name, rows), col in zip(sweep.items(), _colours(len(sweep))):
            xs = [r["shots"] for r in rows]
            ys = np.array([np.nan if r[key]["mean"] is None else r[key]["mean"] for r in rows], dtype=float)
            es = np.array([0.0 if r[key]["std"] is None else r[key]["std"] for r in rows], dtype=float)
            if np.all(np.isnan(ys)):
                continue
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, color=col, lw=1.4, label=name)
        ax.set_xlabel("shots (support images per class, capped at half a class)", fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def project_2d(x: np.ndarray, seed: int = 0, use_umap: bool = True) -> tuple[np.ndarray, str]:
    """2-D layout of unit vectors: UMAP with the cosine metric when umap-learn is installed, else PCA (the
    documented fallback; said in the figure's title)."""
    if use_umap and x.shape[0] >= 5:
        try:
            import umap
        except ModuleNotFoundError:
            pass
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=min(15, x.shape[0] - 1),
                                    min_dist=0.1, random_state=seed, n_jobs=1)
                return reducer.fit_transform(x), "UMAP (cosine)"
    xc = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:2].T, "PCA (umap-learn not installed)" if use_umap else "PCA"


def embedding_map_png(xy: np.ndarray, labels: np.ndarray, roles: np.ndarray, path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 7))
    classes = sorted(set(labels.tolist()))
    for c, col in zip(classes, _colours(len(classes))):
        q = (labels == c) & (roles == "query")
        s = (labels == c) & (roles == "support")
        unknown = c.endswith("(unknown)")
        if s.any():
            ax.scatter(xy[s, 0], xy[s, 1], s=16, color=col, marker="^", edgecolors="none", alpha=0.45)
        ax.scatter(xy[q, 0], xy[q, 1], s=30 if unknown else 9, color=col, marker="X" if unknown else "o",
                   alpha=0.9, linewidths=0.4 if unknown else 0, edgecolors="black" if unknown else "none", label=c)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.6, loc="center left", bbox_to_anchor=(1.0, 0.5), title="class (queries)")
    ax.set_title(title + "\n(pale triangles: support images; dots: queries; crosses: queries of never-enrolled classes)",
                 fontsize=9)
    return save_figure(fig, path)


def histogram_png(values: np.ndarray, path: Path, title: str, xlabel: str, threshold: float | None = None,
                  bins: int = 40, value_range: tuple[float, float] | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    ax.hist(v, bins=bins, range=value_range, color="#4477aa", edgecolor="white", linewidth=0.4)
    if threshold is not None:
        ax.axvline(threshold, color="#cc3311", ls="--", lw=1.2, label=f"threshold {threshold:.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def reliability_png(bins: list[dict], path: Path, title: str) -> Path:
    """Reliability diagram: observed rate against mean predicted probability per bin, counts below."""
    plt = pyplot()
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5.2, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="#999999", ls="--", lw=1, label="perfect calibration")
    used = [b for b in bins if b["n"]]
    ax.plot([b["mean_predicted"] for b in used], [b["observed"] for b in used], "o-", color="#4477aa",
            label="ai_score")
    ax.set_ylabel("observed share AI")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=9)
    axn.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["n"] for b in bins], width=0.09, color="#4477aa")
    axn.set_xlabel("ai_score (predicted probability of AI)")
    axn.set_ylabel("queries")
    axn.set_xlim(0, 1)
    return save_figure(fig, path)


def bar_png(counts: dict[str, int], path: Path, title: str) -> Path:
    plt = pyplot()
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.28 * max(len(items), 1)))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#4477aa")
    ax.set_xlabel("images")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
