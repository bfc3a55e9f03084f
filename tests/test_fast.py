"""caffe_torch.fast: each opt-in speed option gives the fp32 result within its expected precision on a short
training run (CPU: channels_last, bf16 autocast, compile; tf32 is a no-op on the CPU and only checked to set
torch's switches)."""

import numpy as np
import pytest
import torch

import caffe_torch as caffe
from caffe_torch.fast import FastOptions, set_tf32, tf32_enabled
from caffe_torch.prototxt import parse_net_text

B, H, W, CLASSES = 4, 16, 33, 5
NET = f"""name: "tiny"
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {B} dim: 1 dim: {H} dim: {W} }} shape {{ dim: {B} dim: 1 dim: 1 dim: 1 }} }} }}
layer {{ name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param {{ num_output: 6 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1_1" type: "PReLU" bottom: "conv1_1" top: "conv1_1" }}
layer {{ name: "conv1_2" type: "Convolution" bottom: "conv1_1" top: "conv1_2"
  convolution_param {{ num_output: 6 kernel_size: 3 stride: 1 pad: 1 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu1_2" type: "PReLU" bottom: "conv1_2" top: "conv1_2" }}
layer {{ name: "res1_2" type: "Eltwise" bottom: "conv1_1" bottom: "conv1_2" top: "res1_2"
  eltwise_param {{ operation: SUM }} }}
layer {{ name: "res1_2p" type: "Pooling" bottom: "res1_2" top: "res1_2p"
  pooling_param {{ pool: AVE kernel_h: {H // 2} kernel_w: 1 stride: 1 }} }}
layer {{ name: "fc5" type: "InnerProduct" bottom: "res1_2p" top: "fc5"
  inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"
  inner_product_param {{ num_output: {CLASSES} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }}
"""


@pytest.fixture(autouse=True)
def _bf16_allowed(monkeypatch):
    """These tests check bf16's numbers, not its speed: let it run on a CPU that emulates bfloat16 too (where
    building a net with it is refused as 15-18x slower)."""
    monkeypatch.setattr("caffe_torch.fast.cpu_bf16_native", lambda cpuinfo=None: True)


def make_solver(tmp_path, fast=None):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.0005 '
        'max_iter: 100 display: 0 random_seed: 5\n')
    caffe.set_mode_cpu()
    return caffe.SGDSolver(str(tmp_path / "solver.prototxt"), fast=fast)


def run(tmp_path, options, iters=4):
    solver = make_solver(tmp_path, options)
    gen = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(iters):
        solver.net.blobs["data"].tensor = torch.randn(B, 1, H, W, generator=gen)
        solver.net.blobs["label"].tensor = torch.randint(0, CLASSES, (B, 1, 1, 1), generator=gen).float()
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    weights = {n: [b.data.copy() for b in blobs] for n, blobs in solver.net.params.items()}
    return np.array(losses), weights, solver


def max_rel(a: dict, b: dict) -> float:
    return max(float(np.abs(x - y).max() / (np.abs(y).max() + 1e-12)) for n in a for x, y in zip(a[n], b[n]))


def test_channels_last_same_result(tmp_path):
    l0, w0, _ = run(tmp_path, None)
    l1, w1, solver = run(tmp_path, FastOptions(channels_last=True))
    conv = solver.net.params["conv1_2"][0].tensor
    assert conv.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    assert max_rel(w1, w0) < 1e-5
    # the snapshot writes the weights in Caffe's (C-order) layout
    solver.net.save(str(tmp_path / "cl.caffemodel"))
    back = caffe.Net(str(tmp_path / "net.prototxt"), str(tmp_path / "cl.caffemodel"), caffe.TEST)
    np.testing.assert_array_equal(back.params["conv1_2"][0].data, w1["conv1_2"][0])


def test_bf16_autocast_trunk_only(tmp_path):
    l0, w0, _ = run(tmp_path, None)
    l1, w1, solver = run(tmp_path, FastOptions(amp="bf16", channels_last=True))
    net = solver.net
    # trunk in bf16, the blob leaving the trunk and everything after it (loss, params) in fp32
    assert net.blobs["conv1_2"].tensor.dtype == torch.bfloat16
    assert net.blobs["res1_2p"].tensor.dtype == torch.float32
    assert net.blobs["fc6"].tensor.dtype == torch.float32
    assert net.blobs["loss"].tensor.dtype == torch.float32
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p, *_ in net.learnable_params())
    assert all(h.dtype == torch.float32 for h in solver.history)
    # bf16 has 8 mantissa bits: a few steps agree to ~1e-2
    np.testing.assert_allclose(l1, l0, rtol=3e-2)
    assert max_rel(w1, w0) < 3e-2
    assert max_rel(w1, w0) > 0        # it did run in reduced precision


def test_amp_option_checked():
    with pytest.raises(ValueError, match="fp16"):
        FastOptions(amp="fp16")


def _tf32_state():
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return ("new", torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    return ("legacy", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _restore_tf32(state):
    kind, matmul, conv = state
    if kind == "new":
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def test_tf32_switch():
    old = _tf32_state()
    try:
        set_tf32(True)
        assert tf32_enabled()
        set_tf32(False)
        assert not tf32_enabled()
    finally:
        _restore_tf32(old)


def test_options_chosen_at_construction(tmp_path):
    """Issue 21 item 6: the options are the nets' own, chosen when they are built (train and test nets, and a
    pycaffe Net), and nothing is replaced on an instance: what a step runs is the class's code."""
    options = FastOptions(channels_last=True, amp="bf16", tf32=True, compile=True)
    solver = make_solver(tmp_path, options)
    test_net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, fast=options)
    for net in (solver.net, test_net):
        assert net.fast is options and net.layer_call is not None and net._compiled is not None
        assert net.params["conv1_1"][0].tensor.is_contiguous(memory_format=torch.channels_last)
        assert not {"forward_range", "backward_loss", "_run_layers", "forward", "backward"} & set(vars(net))


def test_defaults_untouched(tmp_path):
    solver = make_solver(tmp_path)
    assert solver.net.layer_call is None and solver.gradient_hook is None
    assert not FastOptions().any()


@pytest.mark.slow
def test_compile_same_result(tmp_path):
    """torch.compile of the whole forward (inductor on the CPU: tens of seconds of compiling)."""
    pytest.importorskip("torch._inductor")
    l0, w0, _ = run(tmp_path, None, iters=2)
    l1, w1, solver = run(tmp_path, FastOptions(compile=True), iters=2)
    assert solver.net._compiled.ok, "compile fell back to the interpreted forward"
    np.testing.assert_allclose(l1, l0, rtol=1e-4)
    assert max_rel(w1, w0) < 1e-4


def test_compile_falls_back(tmp_path, caplog, monkeypatch):
    _, w0, _ = run(tmp_path, None, iters=2)

    def broken_compile(fn, **kw):
        def compiled(*a, **k):
            raise RuntimeError("backend exploded")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level("WARNING", logger="caffe_torch.fast"):
        _, w1, solver = run(tmp_path, FastOptions(compile=True), iters=2)
    assert not solver.net._compiled.ok
    assert "interpreted forward" in caplog.text
    assert max_rel(w1, w0) < 1e-6


def test_parse_tiny_net():
    param, _ = parse_net_text(NET)
    assert [lp.type for lp in param.layer][:3] == ["Input", "Convolution", "PReLU"]


CLI_NET = """name: "tiny_cli"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 1 dim: 20 dim: 257 } shape { dim: 4 dim: 1 dim: 1 dim: 1 } } }
layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1_1" type: "PReLU" bottom: "conv1_1" top: "conv1_1" }
layer { name: "res4_3p" type: "Pooling" bottom: "conv1_1" top: "res4_3p"
  pooling_param { pool: AVE kernel_h: 10 kernel_w: 1 stride: 1 } }
layer { name: "fc5" type: "InnerProduct" bottom: "res4_3p" top: "fc5"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }
layer { name: "top1Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "top1Accuracy" }
"""


def test_training_script_flags(tmp_path):
    """trainAug.py --channels-last --amp bf16 --tf32 trains (validation included) to the fp32 weights within
    bf16 precision."""
    old_tf32 = _tf32_state()
    import trainAug
    from caffe_torch.weights import blob_to_array, read_caffemodel
    from voxdata import make_corpus

    corpus = tmp_path / "corpus"
    make_corpus(corpus, speakers=5, utterances=4, test_speakers=2, seed=2, min_videos=3, max_videos=3,
                min_dur=1.0, max_dur=1.3, trials=6, workers=1, progress=False)
    (tmp_path / "net.prototxt").write_text(CLI_NET)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.02 lr_policy: "fixed" momentum: 0.9 '
                                              'max_iter: 4 display: 2 snapshot: 0 snapshot_prefix: "cli"\n')

    def train(out, *flags):
        assert trainAug.main(["--solver", str(tmp_path / "solver.prototxt"), "--data-root", str(corpus), "--mode",
                              "verification", "--out", str(out), "--gpu", "-1", "--workers", "0",
                              "--test-interval", "2", "--no-progress", *flags]) == 0
        model = read_caffemodel(out / "final.caffemodel")
        return {lp.name: [blob_to_array(b) for b in lp.blobs] for lp in model.layer if len(lp.blobs)}

    w0 = train(tmp_path / "fp32")
    try:
        w1 = train(tmp_path / "fast", "--channels-last", "--amp", "bf16", "--tf32")
    finally:
        _restore_tf32(old_tf32)
    assert "speed options: channels_last, tf32, amp=bf16" in (tmp_path / "fast" / "train.log").read_text()
    assert "top1Accuracy" in (tmp_path / "fast" / "train.log").read_text()
    assert 0 < max_rel(w1, w0) < 3e-2
