"""speaker.plots: each figure is written as a non-empty PNG; DET axes are probit-transformed."""

import numpy as np
import pytest
from scipy.stats import norm

from speaker import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def trials(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], [300, 3000])
    scores = np.concatenate([rng.normal(2, 1, 300), rng.normal(0, 1, 3000)])
    return labels, scores


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def test_score_histogram(tmp_path):
    labels, scores = trials()
    out = plots.score_histogram(labels, scores, tmp_path / "hist.png", title="t")
    assert out == str(tmp_path / "hist.png")
    assert_png(out)


def test_roc_plot(tmp_path):
    labels, scores = trials()
    assert_png(plots.roc_plot(labels, scores, tmp_path / "sub" / "roc.png"))  # creates the folder


def test_det_plot(tmp_path):
    labels, scores = trials()
    assert_png(plots.det_plot(labels, scores, tmp_path / "det.png"))


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


def test_training_curve(tmp_path):
    csv = tmp_path / "train.csv"
    rows = ["iteration,loss,lr,val_top1,val_top5"]
    for it in range(0, 3001, 100):
        val = f"{0.1 + it / 5000:.4f},{0.3 + it / 5000:.4f}" if it % 1000 == 0 else ","
        rows.append(f"{it},{7 - it / 1000:.3f},{0.05 * 0.75 ** (it // 1000)},{val}")
    csv.write_text("\n".join(rows) + "\n")
    cols = plots.read_training_csv(csv)
    assert np.isnan(cols["val_top1"]).sum() == 27 and cols["val_top1"][0] == pytest.approx(0.1)
    assert_png(plots.training_curve(csv, tmp_path / "curve.png"))


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
