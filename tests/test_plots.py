"""speaker.plots: what each figure draws (its matplotlib objects against references: NumPy histograms,
sklearn's ROC, the CSV's columns) and the PNG written from it (decoded: its size, and pixels of the drawn
colours); DET axes are probit-transformed."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from scipy.stats import norm
from sklearn.metrics import roc_curve

from speaker import plots
from speaker.metrics import compute_eer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DPI = 120            # speaker.plots saves at 120 dpi


def trials(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], [300, 3000])
    scores = np.concatenate([rng.normal(2, 1, 300), rng.normal(0, 1, 3000)])
    return labels, scores


@pytest.fixture
def figures(monkeypatch):
    """Every Figure speaker.plots saves, kept for inspection (it is still written as usual)."""
    kept = []
    save = plots._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def png_pixels(path, figsize):
    """The decoded PNG (H, W, 4) uint8, checked to be the figure's size at DPI."""
    from PIL import Image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    img = np.asarray(Image.open(path).convert("RGBA"))
    assert img.shape == (round(figsize[1] * DPI), round(figsize[0] * DPI), 4)
    return img


def pixels_of(img, color, alpha=1.0, tol=12):
    """How many pixels show `color` drawn with `alpha` over white (the Agg background)."""
    rgb = np.array(to_rgba(color)[:3]) * alpha + (1 - alpha)
    return int((np.abs(img[..., :3].astype(int) - np.round(255 * rgb)).max(axis=-1) <= tol).sum())


def test_score_histogram(tmp_path, figures):
    labels, scores = trials()
    out = plots.score_histogram(labels, scores, tmp_path / "hist.png", bins=40, title="t")
    assert out == str(tmp_path / "hist.png")
    ax = figures[0].axes[0]
    edges = np.histogram_bin_edges(scores, bins=40)
    for bars, sel, name in zip(ax.containers, (labels == 0, labels == 1), ("non-target (3,000)", "target (300)")):
        want, _ = np.histogram(scores[sel], bins=edges, density=True)
        np.testing.assert_allclose([b.get_height() for b in bars], want, rtol=1e-12)
        np.testing.assert_allclose([b.get_x() for b in bars], edges[:-1], rtol=1e-12)
        assert bars.patches[0].get_label() == name
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["non-target (3,000)", "target (300)"]
    img = png_pixels(out, (6, 4))
    # both bar colours are on the picture (C0 and C1 at alpha 0.6 over white), each over many pixels
    assert pixels_of(img, "C0", 0.6) > 2000 and pixels_of(img, "C1", 0.6) > 500


def test_roc_plot(tmp_path, figures):
    labels, scores = trials()
    out = plots.roc_plot(labels, scores, tmp_path / "sub" / "roc.png")  # creates the folder
    line, eer_point = figures[0].axes[0].lines
    fpr, tpr, _ = roc_curve(labels, scores)          # sklearn's own points (drop_intermediate=True)
    keep = fpr > 0                                    # a log axis cannot show fpr 0
    np.testing.assert_allclose(line.get_xdata(), fpr[keep], rtol=1e-12)
    np.testing.assert_allclose(line.get_ydata(), tpr[keep], rtol=1e-12)
    eer = compute_eer(labels, scores)[0]
    np.testing.assert_allclose(np.r_[eer_point.get_xdata(), eer_point.get_ydata()], [eer, 1 - eer], rtol=1e-12)
    assert figures[0].axes[0].get_xscale() == "log"
    assert pixels_of(png_pixels(out, (5, 4.5)), "C0") > 300           # the curve is drawn


def test_det_plot(tmp_path, figures):
    labels, scores = trials()
    out = plots.det_plot(labels, scores, tmp_path / "det.png")
    eer = compute_eer(labels, scores)[0]
    point = figures[0].axes[0].lines[1]
    np.testing.assert_allclose(np.r_[point.get_xdata(), point.get_ydata()], norm.ppf([eer, eer]), rtol=1e-9)
    assert pixels_of(png_pixels(out, (5, 5)), "C0") > 300


def test_det_plot_many_and_histograms(tmp_path, figures):
    rng = np.random.default_rng(0)
    curves = []
    for k in range(3):
        labels = np.repeat([1, 0], [200, 800])
        scores = np.concatenate([rng.normal(1 + k, 1, 200), rng.normal(0, 1, 800)])
        curves.append((f"system {k}", labels, scores))
    plots.det_plot_many(curves, tmp_path / "det.png", title="t")
    ax = figures[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for k, (name, labels, scores) in enumerate(curves):
        fpr, tpr, _ = roc_curve(labels, scores)
        line = ax.lines[2 * k]
        np.testing.assert_allclose(line.get_xdata(), norm.ppf(np.clip(fpr, 1e-5, 1 - 1e-5)), rtol=1e-9)
        np.testing.assert_allclose(line.get_ydata(), norm.ppf(np.clip(1 - tpr, 1e-5, 1 - 1e-5)), rtol=1e-9)
        assert legend[k] == f"{name} (EER {100 * compute_eer(labels, scores)[0]:.2f} %)"
    with pytest.raises(ValueError):
        plots.det_plot_many([], tmp_path / "x.png")

    out = plots.score_histograms(curves, tmp_path / "hist.png", bins=30)
    panels = [ax for ax in figures[1].axes if ax.get_visible()]
    assert len(panels) == 3 and [ax.get_title() for ax in panels] == ["system 0", "system 1", "system 2"]
    for ax, (_, labels, scores) in zip(panels, curves):
        edges = np.histogram_bin_edges(scores, bins=30)
        for bars, sel in zip(ax.containers, (labels == 0, labels == 1)):
            want, _ = np.histogram(scores[sel], bins=edges, density=True)
            np.testing.assert_allclose([b.get_height() for b in bars], want, rtol=1e-12)
    png_pixels(out, (13.5, 3.4))                       # three panels side by side


def _clusters(n=15, dim=8, seed=1):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.eye(dim)[c] + rng.normal(0, 0.1, size=(n, dim)) for c in range(3)])
    return x, np.repeat(["a", "b", "c"], n)


def test_embedding_projection_pca_is_the_principal_plane(tmp_path, figures):
    x, spk = _clusters()
    out = plots.embedding_projection(x, spk, tmp_path / "pca.png", method="pca")
    ax = figures[0].axes[0]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = xn - xn.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:2].T                         # (N, 2) in float64, each axis up to its sign
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    assert [c.get_label() for c in ax.collections] == ["a", "b", "c"]
    # speaker.plots projects float32 rows: a backward-stable float32 SVD turns each axis by at most about
    # sqrt(N D) u |A| / (the gap to the next singular value) (Davis-Kahan), plus D u per coordinate for the rows
    n, d = x.shape
    u = np.finfo(np.float32).eps / 2
    gap = min(sv[0] - sv[1], sv[1] - sv[2])
    tol = (4 * np.sqrt(n * d) * u * sv[0] / gap + 4 * d * u) * np.abs(ref).max()
    for axis in range(2):
        sign = np.sign(drawn[:, axis] @ ref[:, axis])
        np.testing.assert_allclose(drawn[:, axis], sign * ref[:, axis], rtol=0, atol=tol)
    png_pixels(out, (6.5, 5.5))


def test_embedding_projection_tsne_keeps_speakers_together(tmp_path, figures):
    x, spk = _clusters()
    plots.embedding_projection(x, spk, tmp_path / "tsne.png", method="tsne")
    ax = figures[0].axes[0]
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    who = np.repeat(np.arange(3), [len(c.get_offsets()) for c in ax.collections])
    assert list(np.bincount(who)) == [15, 15, 15]
    d = np.linalg.norm(drawn[:, None] - drawn[None], axis=-1) + np.diag(np.full(len(drawn), np.inf))
    assert (who[d.argmin(axis=1)] == who).all()         # every point's nearest neighbour is its speaker's
    with pytest.raises(ValueError, match="method must be"):
        plots.embedding_projection(x, spk, tmp_path / "u.png", method="umap")


def test_probit_is_normal_deviate():
    p = np.array([0.001, 0.01, 0.1, 0.5, 0.9])
    np.testing.assert_allclose(plots.probit(p), norm.ppf(p))
    assert plots.probit([0.5])[0] == pytest.approx(0.0)
    # 0 and 1 are clipped to finite deviates so they stay on the axes
    ends = plots.probit([0.0, 1.0])
    assert np.isfinite(ends).all() and ends[0] == pytest.approx(-ends[1])


def test_det_curve_points_are_probit_of_rates(tmp_path, monkeypatch):
    # The plotted line is probit(fpr), probit(fnr): capture what det_plot draws.
    from matplotlib.axes import Axes

    drawn = []
    real_plot = Axes.plot

    def spy(self, *args, **kw):
        drawn.append(args)
        return real_plot(self, *args, **kw)

    monkeypatch.setattr(Axes, "plot", spy)
    labels, scores = trials(1)
    plots.det_plot(labels, scores, tmp_path / "det.png")
    x, y = drawn[0][:2]
    from speaker.metrics import roc

    fpr, fnr, _ = roc(labels, scores, drop_intermediate=True)  # few points: nothing thinned
    np.testing.assert_allclose(x, plots.probit(fpr))
    np.testing.assert_allclose(y, plots.probit(fnr))


def test_thin_keeps_shape_of_long_curves():
    t = np.linspace(0, 1, 200_001)
    x, y = t, 1 - t**2
    idx = plots.thin(x, y, cells=100)
    assert idx[0] == 0 and idx[-1] == t.size - 1
    assert 100 <= idx.size <= 300  # about one point per cell crossed
    # Linear interpolation through the kept points stays within about one cell of the curve.
    assert np.max(np.abs(np.interp(x, x[idx], y[idx]) - y)) < 0.02
    small = np.arange(10.0)
    np.testing.assert_array_equal(plots.thin(small, small, cells=100), np.arange(10))


def test_training_curve(tmp_path, figures):
    csv = tmp_path / "train.csv"
    rows = ["iteration,loss,lr,val_top1,val_top5"]
    for it in range(0, 3001, 100):
        val = f"{0.1 + it / 5000:.4f},{0.3 + it / 5000:.4f}" if it % 1000 == 0 else ","
        rows.append(f"{it},{7 - it / 1000:.3f},{0.05 * 0.75 ** (it // 1000)},{val}")
    csv.write_text("\n".join(rows) + "\n")
    cols = plots.read_training_csv(csv)
    assert np.isnan(cols["val_top1"]).sum() == 27 and cols["val_top1"][0] == pytest.approx(0.1)
    out = plots.training_curve(csv, tmp_path / "curve.png")
    ax_loss, ax_acc, ax_lr = figures[0].axes
    its = np.arange(0, 3001, 100)
    (loss,) = ax_loss.lines
    np.testing.assert_array_equal(loss.get_xdata(), its)
    np.testing.assert_allclose(loss.get_ydata(), [float(f"{7 - i / 1000:.3f}") for i in its], rtol=1e-12)
    (lr,) = ax_lr.lines
    np.testing.assert_allclose(lr.get_ydata(), 0.05 * 0.75 ** (its // 1000), rtol=1e-12)
    assert ax_lr.get_yscale() == "log"
    top1, top5 = ax_acc.lines
    np.testing.assert_array_equal(top1.get_xdata(), [0, 1000, 2000, 3000])       # only the validated rows
    np.testing.assert_allclose(top1.get_ydata(), [0.1, 0.3, 0.5, 0.7], rtol=1e-12)
    np.testing.assert_allclose(top5.get_ydata(), [0.3, 0.5, 0.7, 0.9], rtol=1e-12)
    img = png_pixels(out, (7, 6))
    top, bottom = img[: img.shape[0] // 2], img[img.shape[0] // 2 :]
    assert pixels_of(top, "C0") > 200 and pixels_of(top, "C3") > 100          # loss and learning rate
    assert pixels_of(bottom, "C0") > 50 and pixels_of(bottom, "C1") > 50      # validation top-1, top-5


def test_training_curve_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("iteration,loss\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        plots.training_curve(bad, tmp_path / "x.png")
    bad.write_text("iteration,loss,lr,val_top1,val_top5\n1,2,0.1,,\n2,oops,0.1,,\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: column 'loss'"):
        plots.read_training_csv(bad)


def test_import_does_not_touch_pyplot():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, speaker.plots; print('matplotlib.pyplot' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
