"""tools/make_prototxt.py: the shipped prototxt are exactly what it writes, and the verification nets
(prototxt/verification/) train on 1,211 speakers in both stages, so stage 2 can start from stage 1."""

import importlib.util
from pathlib import Path

import pytest

from caffe_torch.prototxt import read_net, read_solver

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("softmax", "lm", "amsoftmax", "asoftmax", "aam")


def _tool():
    spec = importlib.util.spec_from_file_location("make_prototxt", ROOT / "tools" / "make_prototxt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_files_are_current(capsys):
    assert _tool().main(["--check"]) == 0, capsys.readouterr().err


def _classifier(net_param):
    """{layer: num_output} of the layers producing what the Accuracy layers read, and of fc6-like layers."""
    scored = {lp.bottom[0] for lp in net_param.layer if lp.type == "Accuracy"}
    out = {}
    for lp in net_param.layer:
        if scored & set(lp.top):
            for field in ("inner_product_param", "margin_inner_product_param"):
                if lp.HasField(field):
                    out.setdefault(lp.name, set()).add(getattr(lp, field).num_output)
    return out


@pytest.mark.parametrize("loss", LOSSES)
def test_verification_nets_have_1211_classes(loss):
    solver = read_solver(str(ROOT / "prototxt" / "verification" / f"solver_{loss}.prototxt"))
    assert solver.net == f"prototxt/verification/ResNet-20_{loss}.prototxt"
    veri, _ = read_net(str(ROOT / solver.net))
    iden, _ = read_net(str(ROOT / "prototxt" / f"ResNet-20_{loss}.prototxt"))
    assert set().union(*_classifier(veri).values()) == {1211}
    assert set().union(*_classifier(iden).values()) == {1251}
    # identical apart from the classifier width (same trunk, embedding and loss head)
    v = str(veri).replace("1211", "N").replace("_verification", "")
    i = str(iden).replace("1251", "N")
    assert v == i
    ident_solver = read_solver(str(ROOT / "prototxt" / f"solver_{loss}.prototxt"))
    for field in ("base_lr", "max_iter", "stepsize", "gamma", "momentum", "weight_decay"):
        assert getattr(solver, field) == getattr(ident_solver, field), field


def test_verification_stage2_starts_from_stage1():
    """copy_from copies same-named layers and refuses a same name with another shape: every layer of
    the LM net that stage 1 also has must agree in its parameter shapes (fc6 in particular)."""
    import tempfile

    import caffe_torch as caffe

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for loss in ("softmax", "lm"):
            text = (ROOT / "prototxt" / "verification" / f"ResNet-20_{loss}.prototxt").read_text()
            # batch 1 and 32 frames (pooling over its 2 time steps): parameter shapes do not depend on them
            text = text.replace("dim: 50 dim: 1 dim: 300", "dim: 1 dim: 1 dim: 32")
            text = text.replace("dim: 50 dim: 1 dim: 1", "dim: 1 dim: 1 dim: 1").replace("kernel_h: 19", "kernel_h: 2")
            p = Path(d) / f"{loss}.prototxt"
            p.write_text(text)
            net = caffe.Net(str(p), caffe.TEST)
            out[loss] = {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}
    common = set(out["softmax"]) & set(out["lm"])
    assert "fc6" in common and out["lm"]["fc6"][0] == (1211, 512)
    for name in common:
        assert out["softmax"][name] == out["lm"][name], name


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("classes", (5994, 7205))
def test_vox2_nets_are_the_verification_nets_at_their_width(loss, classes):
    """prototxt/vox2/5994 (VoxCeleb2 dev) and /7205 (+ VoxCeleb1 dev): the paper's net and solver, only the
    classifier width (and the names) differ from prototxt/verification/."""
    solver = read_solver(str(ROOT / "prototxt" / "vox2" / str(classes) / f"solver_{loss}.prototxt"))
    assert solver.net == f"prototxt/vox2/{classes}/ResNet-20_{loss}.prototxt"
    net, _ = read_net(str(ROOT / solver.net))
    veri, _ = read_net(str(ROOT / "prototxt" / "verification" / f"ResNet-20_{loss}.prototxt"))
    assert set().union(*_classifier(net).values()) == {classes}
    tag = "_vox2" if classes == 5994 else "_vox12"
    assert str(net).replace(str(classes), "N").replace(tag, "") == \
        str(veri).replace("1211", "N").replace("_verification", "")
    veri_solver = read_solver(str(ROOT / "prototxt" / "verification" / f"solver_{loss}.prototxt"))
    for field in ("base_lr", "max_iter", "stepsize", "gamma", "momentum", "weight_decay", "snapshot"):
        assert getattr(solver, field) == getattr(veri_solver, field), field
