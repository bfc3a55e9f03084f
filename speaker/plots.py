"""Figures for verification and training, written as PNG files.

Every function draws on its own ``matplotlib.figure.Figure`` attached to an Agg canvas (no pyplot, so no
global backend switch and no figure registry to leak into), saves it and returns the path it wrote.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from speaker.metrics import _eer_from_roc, roc

__all__ = [
    "det_plot",
    "det_plot_many",
    "embedding_projection",
    "probit",
    "read_training_csv",
    "roc_plot",
    "score_histogram",
    "score_histograms",
    "training_curve",
]

# DET axes clip rates to [eps, 1 - eps] so 0 and 1 (which map to -/+inf) stay on the plot.
_DET_EPS = 1e-5
_DET_TICKS = (0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


def _figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4), **kw):
    """A new Figure on its own Agg canvas and its axes; imported here so importing this module is cheap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, path) -> str:
    """Write the PNG through a temporary file renamed over `path`, so a full disk or a stop leaves no half
    picture; an OSError names `path` (the bare ENOSPC of a write names no file)."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(e.errno, f"cannot write the figure: {e.strerror}", path) from None
    return path


def probit(p, eps: float = _DET_EPS) -> np.ndarray:
    """Normal deviate of a rate: ``norm.ppf(clip(p, eps, 1 - eps))`` (the DET axis transform)."""
    from scipy.stats import norm

    return norm.ppf(np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps))


def _curve(labels, scores):
    """ROC points without sklearn's collinear intermediates (same polyline, so the same EER) and the EER."""
    fpr, fnr, thr = roc(labels, scores, drop_intermediate=True)
    return fpr, fnr, _eer_from_roc(fpr, fnr, thr)[0]


def thin(x, y, cells: int = 2000) -> np.ndarray:
    """Indices of the points of a monotone curve worth drawing: the first point in each new cell of a
    ``cells`` x ``cells`` grid over the plotted (already axis-transformed) coordinates, plus the last.

    11.9 M all-pairs scores leave ~10^5-10^6 ROC points, far more than pixels; this keeps the drawn shape.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size <= 2 * cells:
        return np.arange(x.size)

    def cell(v):
        lo, hi = np.nanmin(v), np.nanmax(v)
        return np.floor((v - lo) / ((hi - lo) or 1.0) * cells)

    cx, cy = cell(x), cell(y)
    keep = np.r_[True, (cx[1:] != cx[:-1]) | (cy[1:] != cy[:-1])]
    keep[-1] = True
    return np.flatnonzero(keep)


def score_histogram(labels, scores, path, bins: int = 100, title: str | None = None) -> str:
    """Overlaid density histograms of target (label 1) and non-target (label 0) scores."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    fig, ax = _figure(figsize=(6, 4))
    edges = np.histogram_bin_edges(scores, bins=bins)  # shared bins so the two shapes compare
    ax.hist(scores[~labels], bins=edges, density=True, alpha=0.6, label=f"non-target ({(~labels).sum():,})")
    ax.hist(scores[labels], bins=edges, density=True, alpha=0.6, label=f"target ({labels.sum():,})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def roc_plot(labels, scores, path, title: str | None = None) -> str:
    """ROC curve, true-positive rate against false-positive rate on a log axis, EER point marked."""
    fpr, fnr, eer = _curve(labels, scores)
    fig, ax = _figure(figsize=(5, 4.5))
    positive = fpr > 0  # a log axis cannot show fpr == 0
    x, y = fpr[positive], 1.0 - fnr[positive]
    idx = thin(np.log10(x), y)
    ax.plot(x[idx], y[idx], lw=1.5)
    ax.plot([eer], [1.0 - eer], "o", label=f"EER {100 * eer:.2f} %")
    ax.set_xscale("log")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _det_axes(ax) -> None:
    """Normal-deviate axes with rate ticks in %, the fpr == fnr diagonal, limits at the clipping eps."""
    lim = probit([_DET_EPS, 1 - _DET_EPS])
    ax.plot(lim, lim, "k:", lw=0.8)
    ticks = probit(_DET_TICKS)
    labels_txt = [f"{100 * t:g}" for t in _DET_TICKS]
    ax.set_xticks(ticks, labels_txt)
    ax.set_yticks(ticks, labels_txt)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("false-alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(True, alpha=0.3)


def det_plot(labels, scores, path, title: str | None = None) -> str:
    """DET curve: miss rate against false-alarm rate, both on normal-deviate (probit) axes."""
    fpr, fnr, eer = _curve(labels, scores)
    fig, ax = _figure(figsize=(5, 5))
    x, y = probit(fpr), probit(fnr)
    idx = thin(x, y)
    ax.plot(x[idx], y[idx], lw=1.5)
    ax.plot(probit([eer]), probit([eer]), "o", label=f"EER {100 * eer:.2f} %")
    _det_axes(ax)
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def det_plot_many(curves, path, title: str | None = None) -> str:
    """DET curves of several systems or lists on one normal-deviate plot.

    ``curves``: sequence of ``(name, labels, scores)``; each is drawn with its EER point, the legend
    reads ``name (EER x.xx %)``.
    """
    if not curves:
        raise ValueError("det_plot_many needs at least one curve")
    fig, ax = _figure(figsize=(6, 6))
    for k, (name, labels, scores) in enumerate(curves):
        fpr, fnr, eer = _curve(labels, scores)
        x, y = probit(fpr), probit(fnr)
        idx = thin(x, y)
        color = f"C{k % 10}"
        ax.plot(x[idx], y[idx], lw=1.4, color=color, label=f"{name} (EER {100 * eer:.2f} %)")
        ax.plot(probit([eer]), probit([eer]), "o", color=color, ms=4)
    _det_axes(ax)
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def score_histograms(panels, path, bins: int = 100, title: str | None = None) -> str:
    """Target / non-target score histograms, one panel per ``(name, labels, scores)`` (e.g. per list)."""
    if not panels:
        raise ValueError("score_histograms needs at least one panel")
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = _figure(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, labels, scores) in zip(axes.flat, panels):
        labels = np.asarray(labels).astype(bool)
        scores = np.asarray(scores, dtype=np.float64)
        edges = np.histogram_bin_edges(scores, bins=bins)
        ax.hist(scores[~labels], bins=edges, density=True, alpha=0.6, label=f"non-target ({(~labels).sum():,})")
        ax.hist(scores[labels], bins=edges, density=True, alpha=0.6, label=f"target ({labels.sum():,})")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def embedding_projection(embeddings, speakers, path, method: str = "pca", seed: int = 0,
                         title: str | None = None) -> str:
    """2-D projection of L2-normalised embeddings (N, D), one colour per speaker: PCA or t-SNE
    (scikit-learn; t-SNE's perplexity is capped below N). Legend only up to 20 speakers."""
    from matplotlib import colormaps
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from speaker.scoring import l2_normalize

    x = l2_normalize(embeddings)
    spk = np.asarray(speakers)
    if spk.shape != (x.shape[0],):
        raise ValueError(f"speakers must be ({x.shape[0]},) to match embeddings {x.shape}")
    if x.shape[0] < 3:
        raise ValueError(f"a projection needs at least 3 embeddings, got {x.shape[0]}")
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        perplexity = float(min(30.0, (x.shape[0] - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    names = np.unique(spk)
    fig, ax = _figure(figsize=(6.5, 5.5))
    cmap = "tab20" if names.size <= 20 else "hsv"
    colors = colormaps[cmap](np.linspace(0, 1, max(names.size, 2), endpoint=False))
    for k, name in enumerate(names):
        sel = spk == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=colors[k % len(colors)],
                   label=str(name) if names.size <= 20 else None)
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    if names.size <= 20:
        ax.legend(fontsize="x-small", markerscale=1.5, ncol=2, loc="best")
    ax.set_title(title or f"{method.upper()} of {x.shape[0]:,} embeddings, {names.size} speakers")
    return _save(fig, path)


_CURVE_COLUMNS = ("iteration", "loss", "lr", "val_top1", "val_top5")


def read_training_csv(csv_path) -> dict[str, np.ndarray]:
    """Columns of a training log CSV as float arrays, blank cells as NaN (not measured that iteration).

    Needs the header ``iteration,loss,lr,val_top1,val_top5`` (extra columns are kept too).
    """
    csv_path = os.fspath(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _CURVE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; header is {reader.fieldnames}")
        cols: dict[str, list[float]] = {c: [] for c in reader.fieldnames}
        for row in reader:
            for c in cols:
                cell = (row.get(c) or "").strip()
                try:
                    cols[c].append(float(cell) if cell else math.nan)
                except ValueError:
                    raise ValueError(
                        f"{csv_path}:{reader.line_num}: column {c!r} is not a number: {cell!r}"
                    ) from None
    return {c: np.asarray(v, dtype=np.float64) for c, v in cols.items()}


def training_curve(csv_path, path, title: str | None = None) -> str:
    """Loss and learning rate (top panel) and validation top-1/top-5 (bottom panel) against iteration."""
    cols = read_training_csv(csv_path)
    it = cols["iteration"]
    fig, (ax_loss, ax_acc) = _figure(2, 1, figsize=(7, 6), sharex=True)
    has = ~np.isnan(cols["loss"])
    ax_loss.plot(it[has], cols["loss"][has], lw=1, label="loss")
    ax_loss.set_ylabel("training loss")
    has_lr = ~np.isnan(cols["lr"])
    if has_lr.any():
        ax_lr = ax_loss.twinx()
        ax_lr.plot(it[has_lr], cols["lr"][has_lr], "C3--", lw=1, label="learning rate")
        ax_lr.set_ylabel("learning rate")
        if (cols["lr"][has_lr] > 0).all():
            ax_lr.set_yscale("log")
    for name, style in (("val_top1", "o-"), ("val_top5", "s-")):
        has = ~np.isnan(cols[name])
        if has.any():
            ax_acc.plot(it[has], cols[name][has], style, ms=3, label=name.replace("val_", "validation "))
    ax_acc.set_xlabel("iteration")
    ax_acc.set_ylabel("accuracy")
    ax_acc.grid(True, alpha=0.3)
    if ax_acc.lines:
        ax_acc.legend(loc="lower right")
    if title:
        ax_loss.set_title(title)
    return _save(fig, path)
