"""Conformance: caffe_torch against the real pycaffe build (caffe_build/), same prototxt, weights and inputs.

Three parts, all run in both engines in one process (Caffe in CPU mode):
- every shipped net (prototxt/ResNet-20_*.prototxt and prototxt/demo/ResNet-20_*.prototxt, found by glob) at a
  reduced size: TRAIN forward + backward (as shipped, and with force_backward so the data blob gets a diff),
  TEST forward, weights written by caffe_torch read by Caffe and weights written by Caffe read by caffe_torch,
  and 20 SGD steps across an lr step;
- every solver type caffe_torch implements (and the lr policies, iter_size, clipping, L1) on a small net;
- every layer type caffe_torch registers, as a one-layer net with random weights and inputs (the fork layers
  with their TRAIN-only margins and schedules, and every BVLC layer), forward and backward.

Tolerance (RTOL = 1e-5, float32 in both engines): for every blob compared,
    max|caffe_torch - Caffe| <= RTOL * max|Caffe|
i.e. the largest difference relative to the blob's own largest magnitude (an inf-norm relative error; a blob
that is all zero in Caffe must be all zero in caffe_torch). Shapes must match exactly; weights copied between
the engines must match bit for bit. Every comparison's error is recorded; the largest per category are
printed at the end of the module (run with -s to see them). One thing is not float32 noise yet legitimate:
a PReLU input within rounding of 0 can land on different sides of the kink in the two engines (kink_flips);
the full-net tests then redraw the batch (forward/backward) or re-synchronise the solvers (SGD), and say so.

Known differences of the real build, kept as strict xfail tests at the end: BVLC's ScaleLayer overwrites
instead of accumulating its param diff when the scale covers the whole bottom; this build's BatchNormLayer
lets the solver train its statistics; BVLC's LRN computes garbage in place. Not compared, because the C++
build lacks them on purpose or BVLC cannot build them: MarginInnerProduct `exact_gradient` (a caffe_torch
extension), happynear's Scale min_value / max_value and solver clip_weights / clamp_weights, SoftmaxWithLoss's
second (probability) top, STOCHASTIC pooling (Caffe has only a GPU version), SigmoidCrossEntropyLoss's
ignore_label / normalization (this build's layer predates Caffe 1.0's and ignores them).

Skipped when `import caffe` does not give the project's pycaffe build (see tests/test_caffe_build.py).
"""

import os
import textwrap
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's net-construction log quiet

from speaker.engine import try_import_pycaffe  # noqa: E402

OUR_LAYERS = {"MarginInnerProduct", "Normalize", "LabelSpecificAdd", "InnerProduct", "AdditiveAngularMargin"}
caffe, _IMPORT_ERROR = try_import_pycaffe(OUR_LAYERS)

import caffe_torch  # noqa: E402
from caffe_torch.proto import caffe_pb2  # noqa: E402
from tests.caffe_facts import RTOL, make_array, rel_err  # noqa: E402

pytestmark = [
    pytest.mark.caffe,
    pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}"),
]

ROOT = Path(__file__).resolve().parent.parent
NETS = sorted((ROOT / "prototxt").glob("ResNet-20_*.prototxt")) + \
    sorted((ROOT / "prototxt" / "demo").glob("ResNet-20_*.prototxt"))
NET_IDS = [str(p.relative_to(ROOT / "prototxt").with_suffix("")) for p in NETS]

# The shipped nets at batch 2, input 1 x 32 x 33 (stage 4 is 2 x 3; the "all time steps" pooling is rescaled
# to it) and 10 classes (top-5 accuracy needs at least 5); channel widths as shipped.
BATCH, HEIGHT, WIDTH, CLASSES = 2, 32, 33, 10
SGD_STEPS = 20

WORST: dict[str, tuple[float, str]] = defaultdict(lambda: (0.0, ""))


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def _engines():
    """CPU for both; caffe_torch single-threaded while this module runs: on a shared 2-core machine its 2-thread
    OpenMP pool made a reduced ResNet-20 SGD step 20x slower (measured 2.4 s against 0.11 s with 1 thread while
    other jobs ran), and at these sizes one thread is as fast on a quiet one. Prints the largest relative
    differences per category at the end."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    caffe_torch.set_mode_cpu()
    if caffe is not None:
        caffe.set_mode_cpu()
    yield
    torch.set_num_threads(threads)
    if WORST:
        print("\nlargest max|caffe_torch - Caffe| / max|Caffe| per category:")
        for kind, (err, what) in sorted(WORST.items()):
            print(f"  {kind:28} {err:9.3g}  {what}")


class Compare:
    """Collects every comparison of one test, then fails once listing all that exceed their tolerance."""

    def __init__(self, what: str, record: bool = True):
        self.what = what
        self.record = record          # into WORST (not for the known differences marked xfail)
        self.failures: list[str] = []

    def __call__(self, kind: str, name: str, ours, theirs) -> float:
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        if ours.shape != theirs.shape:
            self.failures.append(f"{kind} {name}: shape {ours.shape} (caffe_torch) vs {theirs.shape} (Caffe)")
            return float("inf")
        err = rel_err(ours, theirs)
        if self.record and err > WORST[kind][0]:
            WORST[kind] = (err, f"{self.what}: {name}")
        if err > RTOL:
            self.failures.append(f"{kind} {name}: relative difference {err:.3g} > {RTOL:g}")
        return err

    def exact(self, kind: str, name: str, ours, theirs) -> None:
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        if ours.shape != theirs.shape:
            self.failures.append(f"{kind} {name}: shape {ours.shape} (caffe_torch) vs {theirs.shape} (Caffe)")
        elif not np.array_equal(ours, theirs):
            self.failures.append(f"{kind} {name}: not bit-identical (relative difference "
                                 f"{rel_err(ours, theirs):.3g})")

    def check(self) -> None:
        assert not self.failures, f"{self.what}: caffe_torch differs from Caffe:\n  " + "\n  ".join(self.failures)


def blob_names(ours, theirs) -> list[str]:
    """The blob names, the same in both engines and in the same order (the tops of Caffe's Split layers too)."""
    assert list(ours.blobs) == list(theirs.blobs)
    return list(ours.blobs)


def compare_params(cmp: Compare, ours, theirs, kind: str, diffs: bool = True) -> None:
    assert list(ours.params) == list(theirs.params)
    for layer, blobs in ours.params.items():
        assert len(blobs) == len(theirs.params[layer]), layer
        for i, (a, b) in enumerate(zip(blobs, theirs.params[layer])):
            cmp(f"{kind} param data", f"{layer}[{i}]", a.data, b.data)
            if diffs:
                cmp(f"{kind} param diff", f"{layer}[{i}]", a.diff, b.diff)


def compare_blobs(cmp: Compare, ours, theirs, kind: str, diffs: bool, seeded=()) -> None:
    """Every blob's data, and diff unless `diffs` is false or it is a top diff we wrote ourselves (`seeded`:
    Caffe keeps it as written, caffe_torch reports the gradient that reached the tensor, none for a top that is
    not differentiable, such as MarginInnerProduct's lambda)."""
    for name in blob_names(ours, theirs):
        cmp(f"{kind} data", name, ours.blobs[name].data, theirs.blobs[name].data)
        if diffs and name not in seeded:
            cmp(f"{kind} diff", name, ours.blobs[name].diff, theirs.blobs[name].diff)


def params_identical(ours, theirs) -> None:
    """Weights written by one engine and read by the other are bit-identical."""
    cmp = Compare("weights copied between the engines")
    for layer, blobs in ours.params.items():
        for i, (a, b) in enumerate(zip(blobs, theirs.params[layer])):
            cmp.exact("weights", f"{layer}[{i}]", a.data, b.data)
    cmp.check()


# A kink flip: an element that is > 0 in one engine and <= 0 in the other, which PReLU (x > 0 or not) then treats
# differently, changing the gradient of every layer below by up to ~1e-3 relative. Legitimate float32 behaviour
# only for a value within rounding of 0 (measured on the full-width nets: |value| 1e-8..1.3e-7 x its blob's max,
# e.g. 8.9e-10 in float64); KINK_NOISE bounds |value| / max|blob| in both engines for a flip to count as one.
KINK_NOISE = 1e-5


def kink_flips(ours, theirs) -> list[str]:
    """Blobs where the engines put an element on different sides of 0; fails for any that is not rounding."""
    flips = []
    for name in blob_names(ours, theirs):
        a, b = ours.blobs[name].data, theirs.blobs[name].data
        differ = (a > 0) != (b > 0)
        if differ.any():
            scale = max(float(np.abs(a).max()), float(np.abs(b).max()))
            worst = max(float(np.abs(a[differ]).max()), float(np.abs(b[differ]).max()))
            assert worst <= KINK_NOISE * scale, f"{name}: engines differ in sign at |value| {worst:.3g} " \
                                                f"(blob scale {scale:.3g}): not a rounding-level kink flip"
            flips.append(f"{name} ({int(differ.sum())} element(s), |value| <= {worst / scale:.1e} x blob max)")
    return flips


def feed(net, inputs: dict) -> None:
    for name, value in inputs.items():
        blob = net.blobs[name].data
        blob[...] = value.reshape(blob.shape)      # labels: (N,), (N, 1, 1, 1), ... as the net declares them


def phase(engine, name: str):
    return getattr(engine, name)


# ------------------------------------------------------------------------------------------------ the nets
def _num_output_param(lp):
    return lp.margin_inner_product_param if lp.type == "MarginInnerProduct" else lp.inner_product_param


def _conv_out(size: int, cp) -> int:
    def first(rep, h, has_h, default):
        return h if has_h else (rep[0] if len(rep) else default)

    k = first(cp.kernel_size, cp.kernel_h, cp.HasField("kernel_h"), 0)
    s = first(cp.stride, cp.stride_h, cp.HasField("stride_h"), 1)
    p = first(cp.pad, cp.pad_h, cp.HasField("pad_h"), 0)
    d = cp.dilation[0] if len(cp.dilation) else 1
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def reduced_net(path: Path, force_backward: bool = False) -> caffe_pb2.NetParameter:
    """The shipped net at BATCH x C x HEIGHT x WIDTH with CLASSES classes. A Pooling layer whose kernel_h spans
    the whole shipped height of its bottom (the average over all time steps) gets the reduced height. With
    force_backward the Accuracy layers are dropped: Caffe's AccuracyLayer::Backward is NOT_IMPLEMENTED (a fatal
    error) and force_backward makes Caffe call it."""
    param = text_format.Parse(path.read_text(), caffe_pb2.NetParameter())
    heads = [lp for lp in param.layer if lp.type in ("InnerProduct", "MarginInnerProduct")]
    classes = _num_output_param(heads[-1]).num_output
    shipped, heights = {}, {}          # blob -> height (as shipped, reduced) along the data path
    for lp in param.layer:
        if lp.type == "Input":
            data, label = lp.input_param.shape
            shipped[lp.top[0]], heights[lp.top[0]] = data.dim[2], HEIGHT
            data.dim[:] = [BATCH, data.dim[1], HEIGHT, WIDTH]
            label.dim[:] = [BATCH] + [1] * (len(label.dim) - 1)
            continue
        if lp.type in ("InnerProduct", "MarginInnerProduct") and _num_output_param(lp).num_output == classes:
            _num_output_param(lp).num_output = CLASSES
        if not lp.bottom or lp.bottom[0] not in heights:
            continue
        h0, h = shipped[lp.bottom[0]], heights[lp.bottom[0]]
        if lp.type == "Convolution":
            h0, h = _conv_out(h0, lp.convolution_param), _conv_out(h, lp.convolution_param)
        elif lp.type == "Pooling" and lp.pooling_param.HasField("kernel_h") and lp.pooling_param.kernel_h == h0:
            lp.pooling_param.kernel_h = h
            h0 = h = 1
        for t in lp.top:
            shipped[t], heights[t] = h0, h
    if force_backward:
        param.force_backward = True
        keep = [lp for lp in param.layer if lp.type != "Accuracy"]
        del param.layer[:]
        param.layer.extend(keep)
    return param


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """For a shipped net: its reduced prototxt (and the force_backward variant) and a .caffemodel of weights
    initialised by caffe_torch (seed 1), made once per net."""
    cache = {}

    def get(path: Path) -> dict:
        if path not in cache:
            d = tmp_path_factory.mktemp(path.stem)
            files = {"net": d / "net.prototxt", "fb": d / "net_fb.prototxt", "weights": d / "ct.caffemodel"}
            files["net"].write_text(text_format.MessageToString(reduced_net(path)))
            files["fb"].write_text(text_format.MessageToString(reduced_net(path, force_backward=True)))
            caffe_torch.set_random_seed(1)
            caffe_torch.Net(str(files["net"]), caffe_torch.TRAIN).save(str(files["weights"]))
            cache[path] = files
        return cache[path]

    return get


def net_batch(rng, shape=(BATCH, 1, HEIGHT, WIDTH)) -> dict:
    return {"data": rng.standard_normal(shape).astype(np.float32),
            "label": rng.integers(0, CLASSES, size=(shape[0], 1, 1, 1)).astype(np.float32)}


@pytest.mark.parametrize("path", NETS, ids=NET_IDS)
@pytest.mark.parametrize("variant", ["shipped", "force_backward"])
def test_net_train_forward_backward(shipped, path, variant):
    """TRAIN (margins and schedules on): weights from caffe_torch, two forward/backward rounds (the margin
    layers' counters advance; the param diffs accumulate in both engines), every blob's data and diff and every
    param's data (renormalised in place by the fork layers) and diff compared after each round."""
    files = shipped(path)
    proto = files["net" if variant == "shipped" else "fb"]
    ours = caffe_torch.Net(str(proto), str(files["weights"]), caffe_torch.TRAIN)
    theirs = caffe.Net(str(proto), str(files["weights"]), caffe.TRAIN)
    params_identical(ours, theirs)
    rng = np.random.default_rng(2)
    cmp = Compare(f"{path.stem} TRAIN {variant}")
    for rnd in range(2):
        # a batch on which both engines take the same side of every PReLU kink (a flip, rare, is legitimate
        # float32 rounding but changes the gradients below it: see kink_flips); redrawing costs a forward
        for _ in range(5):
            batch = net_batch(rng)
            for net in (ours, theirs):
                feed(net, batch)
                net.forward()
            flips = kink_flips(ours, theirs)
            if not flips:
                break
            print(f"\n{path.stem} TRAIN {variant} round {rnd}: batch redrawn after kink flips in {flips}")
        assert not flips, f"kink flips in 5 batches in a row: {flips}"
        for net in (ours, theirs):
            net.backward()
        compare_blobs(cmp, ours, theirs, "net", diffs=True)
        compare_params(cmp, ours, theirs, "net")
        if variant == "force_backward":
            assert np.abs(theirs.blobs["data"].diff).max() > 0, f"round {rnd}: no data diff in Caffe"
    cmp.check()


@pytest.mark.parametrize("path", NETS, ids=NET_IDS)
def test_net_test_phase(shipped, path):
    """TEST: the margin layers are off (A-Softmax's TEST-only InnerProduct reads the MarginInnerProduct's
    weights by name), forward compared blob by blob."""
    files = shipped(path)
    ours = caffe_torch.Net(str(files["net"]), str(files["weights"]), caffe_torch.TEST)
    theirs = caffe.Net(str(files["net"]), str(files["weights"]), caffe.TEST)
    params_identical(ours, theirs)
    batch = net_batch(np.random.default_rng(3))
    cmp = Compare(f"{path.stem} TEST")
    for net in (ours, theirs):
        feed(net, batch)
        net.forward()
    compare_blobs(cmp, ours, theirs, "net", diffs=False)
    compare_params(cmp, ours, theirs, "net", diffs=False)
    cmp.check()


@pytest.mark.parametrize("path", NETS, ids=NET_IDS)
def test_net_weights_written_by_caffe(shipped, path, tmp_path):
    """The other direction: Caffe's own fillers, `net.save` by Caffe, the file read by caffe_torch; same weights
    bit for bit, same forward in TRAIN and TEST."""
    files = shipped(path)
    caffe.set_random_seed(4)
    theirs = caffe.Net(str(files["net"]), caffe.TRAIN)
    weights = tmp_path / "caffe.caffemodel"
    theirs.save(str(weights))
    batch = net_batch(np.random.default_rng(5))
    for name in ("TRAIN", "TEST"):
        ours = caffe_torch.Net(str(files["net"]), str(weights), phase(caffe_torch, name))
        if name == "TEST":
            theirs = caffe.Net(str(files["net"]), str(weights), caffe.TEST)
        params_identical(ours, theirs)
        cmp = Compare(f"{path.stem} {name}, Caffe's weights")
        for net in (ours, theirs):
            feed(net, batch)
            net.forward()
        compare_blobs(cmp, ours, theirs, "net (Caffe weights)", diffs=False)
        cmp.check()


def write_solver(path: Path, net: Path, body: str) -> Path:
    path.write_text(f'net: "{net}"\n' + textwrap.dedent(body) +
                    f'display: 0\nsnapshot_after_train: false\nsnapshot_prefix: "{path.parent / "ct"}"\n')
    return path


# base_lr 1e-4: at batch 2 with random labels lm's scale-50 head diverged at 1e-3 (loss 5 -> 60), where Caffe's
# sequential float32 sum for the PReLU slope gradient (prelu_layer.cpp) drifted 8e-6 from float64 (caffe_torch
# 8e-7); at 1e-4 every net trains sanely. Sensitivity is kept: the update (diff) is compared at every step.
SGD_SOLVER = """\
    type: "SGD"
    base_lr: 0.0001
    lr_policy: "step"
    gamma: 0.1
    stepsize: 10
    max_iter: 20
    momentum: 0.9
    weight_decay: 0.0005
    """


def run_solvers(solver_file: Path, weights: Path, batches: list[dict], loss: str, what: str, record: bool = True,
                kind: str = "solver"):
    """Both engines' solvers from `solver_file`, the same weights, stepped once per batch. After every step: the
    loss, every param's data and its update (the `.diff` after a step, i.e. Caffe's history for SGD).

    Over many steps float32 rounding meets the PReLU kinks: now and then a pre-activation lies within rounding
    of 0 and the engines put it on different sides (measured on the full-width nets at batch 2: 0-3 times in
    20 steps, up to 5 at a 10x higher lr, in either engine, each changing that step's gradient of the layers
    below by up to ~1e-3 relative, an error momentum then carries on). Both results are correct to float32
    precision, so such a step (see kink_flips: a genuine near-0 value is required) is not compared;
    caffe_torch's snapshot is restored into Caffe (weights and history: a .solverstate written by caffe_torch
    read by Caffe), and the comparison resumes from identical states.
    Returns (the comparison, the re-synchronised steps)."""
    ours = caffe_torch.get_solver(str(solver_file))
    theirs = caffe.get_solver(str(solver_file))
    ours.net.copy_from(str(weights))
    theirs.net.copy_from(str(weights))
    params_identical(ours.net, theirs.net)
    cmp = Compare(what, record)
    resynced = []
    for i, batch in enumerate(batches):
        for s in (ours, theirs):
            feed(s.net, batch)
            s.step(1)
        cmp(f"{kind} loss", f"loss at step {i}", ours.net.blobs[loss].data, theirs.net.blobs[loss].data)
        flips = kink_flips(ours.net, theirs.net)
        if flips:
            resynced.append(f"step {i}: {', '.join(flips)}")
            ours.snapshot()
            state = ours.snapshot_filename(".solverstate")
            theirs.restore(state)
            params_identical(ours.net, theirs.net)
            continue
        compare_params(cmp, ours.net, theirs.net, kind if i == len(batches) - 1 else f"{kind} (every step)")
    assert ours.iter == theirs.iter == len(batches)
    if resynced:
        print(f"\n{what}: re-synchronised after kink flips at " + "; ".join(resynced))
    return cmp, resynced


@pytest.mark.parametrize("path", NETS, ids=NET_IDS)
def test_net_sgd_20_steps_across_an_lr_step(shipped, path, tmp_path):
    """20 SGD steps (momentum 0.9, weight decay 5e-4, lr x0.1 at step 10) on the same 20 fixed batches."""
    files = shipped(path)
    solver = write_solver(tmp_path / "solver.prototxt", files["net"], SGD_SOLVER)
    rng = np.random.default_rng(6)
    batches = [net_batch(rng) for _ in range(SGD_STEPS)]
    cmp, resynced = run_solvers(solver, files["weights"], batches, "softmax_loss", f"{path.stem} SGD")
    cmp.check()
    # 0-3 flips measured per net (about 0.14 expected per forward of a full-width net: ~350k activations, each
    # within rounding of 0 with probability ~4e-7); with half the steps re-synchronised the test says too little
    assert len(resynced) <= SGD_STEPS // 2, f"kink flips at {len(resynced)} of {SGD_STEPS} steps: {resynced}"


# ------------------------------------------------------------------------------------------------ solvers
SMALL_NET = """\
    layer { name: "data" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 6 dim: 2 dim: 6 dim: 7 } shape { dim: 6 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
      convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" }
        bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
    layer { name: "relu" type: "PReLU" bottom: "conv" top: "conv" }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
      pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
      inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
    """

# No BatchNorm in the solver net: this build's solver trains BatchNorm's statistics (see
# test_batch_norm_statistics_under_a_solver below); its forward/backward is compared in test_layer.
SOLVER_CASES = {
    "SGD": 'type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005',
    "Nesterov": 'type: "Nesterov" base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005',
    "AdaGrad": 'type: "AdaGrad" base_lr: 0.05 delta: 1e-6 weight_decay: 0.0005',
    "RMSProp": 'type: "RMSProp" base_lr: 0.005 rms_decay: 0.98 delta: 1e-6 weight_decay: 0.0005',
    "AdaDelta": 'type: "AdaDelta" base_lr: 1.0 momentum: 0.95 delta: 1e-6 weight_decay: 0.0005',
    "Adam": 'type: "Adam" base_lr: 0.005 momentum: 0.9 momentum2: 0.999 delta: 1e-8 weight_decay: 0.0005',
    # the other parts of the update, with SGD
    "SGD-iter_size-clip-L1": 'type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 iter_size: 2 '
                             'clip_gradients: 0.5 regularization_type: "L1"',
}
LR_POLICIES = {
    "step": 'lr_policy: "step" gamma: 0.5 stepsize: 10',
    "fixed": 'lr_policy: "fixed"',
    "exp": 'lr_policy: "exp" gamma: 0.95',
    "inv": 'lr_policy: "inv" gamma: 0.1 power: 0.75',
    "multistep": 'lr_policy: "multistep" gamma: 0.5 stepvalue: 5 stepvalue: 12',
    "poly": 'lr_policy: "poly" power: 2',
    "sigmoid": 'lr_policy: "sigmoid" gamma: -0.5 stepsize: 10',
}


def small_solver_run(tmp_path, body: str, what: str) -> Compare:
    net = tmp_path / "small.prototxt"
    net.write_text(textwrap.dedent(SMALL_NET))
    solver = write_solver(tmp_path / "solver.prototxt", net, body + f"\nmax_iter: {SGD_STEPS}\n")
    caffe_torch.set_random_seed(7)
    weights = tmp_path / "small.caffemodel"
    caffe_torch.Net(str(net), caffe_torch.TRAIN).save(str(weights))
    rng = np.random.default_rng(8)
    batches = [{"data": rng.standard_normal((6, 2, 6, 7)).astype(np.float32),
                "label": rng.integers(0, 5, size=6).astype(np.float32)} for _ in range(SGD_STEPS)]
    cmp, resynced = run_solvers(solver, weights, batches, "loss", what, kind="small-net solver")
    assert len(resynced) <= 2, resynced     # ~0.01 flips expected per run of this small net
    return cmp


@pytest.mark.parametrize("solver_type", list(SOLVER_CASES))
def test_solver_types(tmp_path, solver_type):
    """Each solver type, 20 steps with an lr step at 10 (Convolution, Scale, PReLU, Pooling, InnerProduct,
    SoftmaxWithLoss)."""
    cmp = small_solver_run(tmp_path, SOLVER_CASES[solver_type] + "\n" + LR_POLICIES["step"], solver_type)
    cmp.check()


@pytest.mark.parametrize("policy", [p for p in LR_POLICIES if p != "step"])
def test_lr_policies(tmp_path, policy):
    cmp = small_solver_run(tmp_path, SOLVER_CASES["SGD"] + "\n" + LR_POLICIES[policy], f"SGD lr_policy {policy}")
    cmp.check()


# ------------------------------------------------------------------------------------------------ layers
@dataclass
class Case:
    """A one-layer net: an Input layer with `inputs` ((top, shape, kind), ...) then `layer`.
    kind: "normal"; "zeros" (normal with a quarter exact zeros); "int" (integers in [-2, 2]: ties);
    "cos" (cosines in (-0.99, 0.99); with a label, two target cosines put in the margin layers' other
    branches); "label:C" (class ids in [0, C)); "label:C:ignore" (a third of them set to -1); "prob" (uniform
    in [0, 1), every fifth exactly 0).
    params "random": every learnable blob N(0, 1), BatchNorm's statistics valid ones; "filler": as filled."""

    id: str
    layer: str
    inputs: tuple
    phase: str = "TRAIN"
    backward: bool = True
    params: str = "random"
    input_layer: str | None = None


def _mip(mtype, base=0, gamma=0, power=1, lambda_min=0, iteration=0, field="margin_inner_product_param",
         tops='top: "f" top: "lambda"'):
    return (f'layer {{ name: "fc" type: "MarginInnerProduct" bottom: "x" bottom: "label" {tops} '
            f'{field} {{ num_output: 5 type: {mtype} base: {base} gamma: {gamma} power: {power} '
            f'lambda_min: {lambda_min} iteration: {iteration} weight_filler {{ type: "xavier" }} }} }}')


MIP_IN = (("x", (6, 4), "normal"), ("label", (6,), "label:5"))
SCHEDULES = {"lambda0": (0, 0, 1, 0), "sphereface": (1000, 0.12, 1, 5), "other": (4, 0.5, 2, 0.5)}


def _layer(type_, param="", bottoms=("x",), tops=("y",), name="l"):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {param} }}'


X4 = (("x", (2, 3, 4, 5), "normal"),)
X2 = (("x", (4, 6), "normal"),)

CASES: list[Case] = []
# ---- MarginInnerProduct (SphereFace fork): every margin type x lambda schedules, TRAIN; and variants.
# Not compared: `exact_gradient: true`, a caffe_torch extension the C++ build deliberately refuses
# (tests/test_caffe_build.py checks the refusal).
for _m in ("SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"):
    for _s, _sched in SCHEDULES.items():
        CASES.append(Case(f"MarginInnerProduct-{_m}-{_s}", _mip(_m, *_sched), MIP_IN))
CASES += [
    Case("MarginInnerProduct-QUADRUPLE-TEST", _mip("QUADRUPLE", *SCHEDULES["sphereface"]), MIP_IN, phase="TEST"),
    Case("MarginInnerProduct-iteration100", _mip("QUADRUPLE", 1000, 0.12, 1, 5, iteration=100), MIP_IN),
    Case("MarginInnerProduct-happynear-field", _mip("DOUBLE", 10, 0.5, 1, 1,
                                                    field="margin_inner_product_param_happynear"), MIP_IN),
    Case("MarginInnerProduct-one-top", _mip("TRIPLE", 5, 0.1, 1, 1, tops='top: "f"'), MIP_IN),
    Case("MarginInnerProduct-4D-input", _mip("QUADRUPLE", 3, 0.1, 1, 1),
         (("x", (4, 2, 2, 2), "normal"), ("label", (4, 1, 1, 1), "label:5"))),
]
# ---- Normalize (happynear fork)
for _kind in ("L2", "L1"):
    for _shape in ((4, 6), (2, 3, 2, 5)):
        for _tops, _bp in (("y",), "false"), (("y", "norm"), "false"), (("y", "norm"), "true"):
            _id = f"Normalize-{_kind}-{'x'.join(map(str, _shape))}-{len(_tops)}top" + ("-bp_norm" * (_bp == "true"))
            _np = f'normalize_param {{ normalize_type: "{_kind}" bp_norm: {_bp} }}'
            CASES.append(Case(_id, _layer("Normalize", _np, tops=_tops), (("x", _shape, "normal"),)))
    CASES.append(Case(f"Normalize-{_kind}-in-place",
                      _layer("Normalize", f'normalize_param {{ normalize_type: "{_kind}" }}', tops=("x",)),
                      (("x", (3, 5, 1, 1), "normal"),)))
# ---- InnerProduct (BVLC, and the happynear fork's normalize: true)
CASES += [
    Case("InnerProduct", _layer("InnerProduct", "inner_product_param { num_output: 3 }"), X4),
    Case("InnerProduct-no-bias", _layer("InnerProduct", "inner_product_param { num_output: 3 bias_term: false }"), X2),
    Case("InnerProduct-axis2", _layer("InnerProduct", "inner_product_param { num_output: 3 axis: 2 }"), X4),
    Case("InnerProduct-transpose", _layer("InnerProduct", "inner_product_param { num_output: 3 transpose: true }"), X2),
    Case("InnerProduct-normalize", _layer("InnerProduct", "inner_product_param { num_output: 3 normalize: true }"), X2),
    Case("InnerProduct-normalize-no-bias",
         _layer("InnerProduct", "inner_product_param { num_output: 5 normalize: true bias_term: false }"), X4),
    Case("InnerProduct-normalize-transpose",
         _layer("InnerProduct", "inner_product_param { num_output: 4 normalize: true transpose: true }"), X2),
]
# ---- LabelSpecificAdd (happynear fork): TRAIN only; TEST is the identity whatever transform_test says
LSA_IN = (("x", (8, 5), "normal"), ("label", (8,), "label:5"))
CASES += [
    Case("LabelSpecificAdd", _layer("LabelSpecificAdd", "label_specific_add_param { bias: -0.35 }",
                                    ("x", "label")), LSA_IN),
    Case("LabelSpecificAdd-in-place", _layer("LabelSpecificAdd", "label_specific_add_param { bias: -0.5 }",
                                             ("x", "label"), ("x",)), LSA_IN),
    Case("LabelSpecificAdd-TEST", _layer("LabelSpecificAdd", "label_specific_add_param { bias: -0.35 "
                                         "transform_test: true }", ("x", "label")), LSA_IN, phase="TEST"),
    Case("LabelSpecificAdd-annealing-bias-top",
         _layer("LabelSpecificAdd", "label_specific_add_param { bias_base: -0.5 bias_gamma: 0.1 bias_power: 1 "
                "bias_min: -0.45 bias_max: -0.2 iteration: 1 }", ("x", "label"), ("y", "bias")), LSA_IN),
]
# ---- AdditiveAngularMargin (our extension): both branches of each margin rule, in place or not, and TEST
AAM_IN = (("x", (8, 5), "cos"), ("label", (8,), "label:5"))
for _easy in ("false", "true"):
    for _tops in (("y",), ("x",)):
        CASES.append(Case(f"AdditiveAngularMargin-easy_{_easy}" + ("-in-place" if _tops == ("x",) else ""),
                          _layer("AdditiveAngularMargin", f"additive_angular_margin_param {{ margin: 0.5 "
                                 f"easy_margin: {_easy} }}", ("x", "label"), _tops), AAM_IN))
CASES += [
    Case("AdditiveAngularMargin-default", _layer("AdditiveAngularMargin", "", ("x", "label")), AAM_IN),
    Case("AdditiveAngularMargin-TEST", _layer("AdditiveAngularMargin", "", ("x", "label")), AAM_IN, phase="TEST"),
]
# ---- Accuracy: no backward in Caffe (NOT_IMPLEMENTED), so no force_backward either
ACC_IN = (("x", (8, 6), "normal"), ("label", (8,), "label:6"))
CASES += [
    Case("Accuracy-top1", _layer("Accuracy", "", ("x", "label")), ACC_IN, backward=False),
    Case("Accuracy-top3-ignore-per-class", _layer("Accuracy", "accuracy_param { top_k: 3 ignore_label: -1 }",
                                                  ("x", "label"), ("y", "per_class")),
         (("x", (9, 6), "normal"), ("label", (9,), "label:6:ignore")), backward=False),
    Case("Accuracy-ties", _layer("Accuracy", "accuracy_param { top_k: 2 }", ("x", "label")),
         (("x", (12, 4), "int"), ("label", (12,), "label:4")), backward=False),
    Case("Accuracy-spatial", _layer("Accuracy", "", ("x", "label")),
         (("x", (2, 4, 3, 2), "normal"), ("label", (2, 3, 2), "label:4")), backward=False),
]
# ---- BatchNorm
CASES += [
    Case("BatchNorm-TRAIN-4D", _layer("BatchNorm"), (("x", (3, 4, 2, 3), "normal"),)),
    Case("BatchNorm-TRAIN-2D", _layer("BatchNorm"), (("x", (5, 4), "normal"),)),
    Case("BatchNorm-TRAIN-in-place-maf-eps", _layer("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 "
                                                     "eps: 0.001 }", tops=("x",)), X4),
    Case("BatchNorm-TRAIN-global-stats", _layer("BatchNorm", "batch_norm_param { use_global_stats: true }"), X4),
    Case("BatchNorm-TEST", _layer("BatchNorm"), X4, phase="TEST"),
    Case("BatchNorm-TEST-fresh-statistics", _layer("BatchNorm"), X4, phase="TEST", params="filler"),
    Case("BatchNorm-TEST-batch-stats", _layer("BatchNorm", "batch_norm_param { use_global_stats: false }"), X4,
         phase="TEST"),
]
# ---- Bias, Scale
CASES += [
    Case("Bias-learned", _layer("Bias"), (("x", (2, 3, 4), "normal"),)),
    Case("Bias-learned-2-axes", _layer("Bias", "bias_param { axis: 1 num_axes: 2 }"), (("x", (2, 3, 4), "normal"),)),
    Case("Bias-bottom", _layer("Bias", "", ("x", "b")), (("x", (2, 3, 4), "normal"), ("b", (3,), "normal"))),
    Case("Scale-learned-bias", _layer("Scale", "scale_param { bias_term: true }"), (("x", (2, 3, 4), "normal"),)),
    Case("Scale-learned-all-axes-in-place", _layer("Scale", "scale_param { axis: 0 num_axes: -1 }", tops=("x",)),
         (("x", (2, 3, 4), "normal"),)),
    Case("Scale-bottom-bias", _layer("Scale", "scale_param { bias_term: true }", ("x", "s")),
         (("x", (2, 3, 4), "normal"), ("s", (3, 4), "normal"))),
]
# happynear's Scale min_value / max_value are not compared: the C++ build's ScaleParameter lacks them (BVLC).
# ---- Concat, Slice, Split, Flatten, Reshape, Silence
C3 = (("a", (2, 3, 4), "normal"), ("b", (2, 3, 4), "normal"), ("c", (2, 3, 4), "normal"))
CASES += [
    Case("Concat-axis1", _layer("Concat", "", ("a", "b", "c")), C3),
    Case("Concat-axis0", _layer("Concat", "concat_param { axis: 0 }", ("a", "b")), C3[:2]),
    Case("Concat-axis-1", _layer("Concat", "concat_param { axis: -1 }", ("a", "b", "c")), C3),
    Case("Slice-points", _layer("Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 3 }",
                                tops=("p", "q", "r")), (("x", (2, 5, 3), "normal"),)),
    Case("Slice-even-axis0", _layer("Slice", "slice_param { axis: 0 }", tops=("p", "q")), (("x", (4, 3), "normal"),)),
    Case("Slice-axis-1", _layer("Slice", "slice_param { axis: -1 slice_point: 2 }", tops=("p", "q")), X4),
    Case("Split", _layer("Split", tops=("p", "q")), X4),
    Case("Flatten", _layer("Flatten"), X4),
    Case("Flatten-axis-range", _layer("Flatten", "flatten_param { axis: 1 end_axis: 2 }"), X4),
    Case("Reshape-copy-infer", _layer("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }"), X4),
    Case("Reshape-axis-num_axes", _layer("Reshape", "reshape_param { axis: 1 num_axes: 1 shape { dim: 3 dim: 1 } }"),
         X4),
    Case("Silence", _layer("Silence", "", ("x", "label"), ()), (("x", (2, 3), "normal"), ("label", (2,), "label:3"))),
    Case("Input-one-shape-two-tops", "", (("a", (2, 3), "normal"), ("b", (2, 3), "normal")),
         input_layer='layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }'),
]
# ---- Convolution, Pooling
XC = (("x", (2, 4, 9, 10), "normal"),)
CASES += [
    Case("Convolution-k3-s2-p1", _layer("Convolution", "convolution_param { num_output: 3 kernel_size: 3 stride: 2 "
                                        "pad: 1 }"), XC),
    Case("Convolution-group-dilation", _layer("Convolution", "convolution_param { num_output: 6 kernel_size: 3 "
                                              "group: 2 dilation: 2 }"), XC),
    Case("Convolution-rectangular", _layer("Convolution", "convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 "
                                           "stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }"), XC),
    Case("Convolution-no-bias", _layer("Convolution", "convolution_param { num_output: 3 kernel_size: 1 "
                                       "bias_term: false }"), XC),
    Case("Convolution-two-bottoms", _layer("Convolution", "convolution_param { num_output: 2 kernel_size: 3 }",
                                           ("a", "b"), ("p", "q")),
         (("a", (2, 3, 5, 6), "normal"), ("b", (2, 3, 5, 6), "normal"))),
]
for _pid, _pp, _shape, _kind in [
    ("MAX-k3-s2-p1", "pool: MAX kernel_size: 3 stride: 2 pad: 1", (2, 3, 9, 10), "normal"),
    ("AVE-k3-s2-p1", "pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 3, 9, 10), "normal"),
    ("AVE-k3-s2-partial-window", "pool: AVE kernel_size: 3 stride: 2", (2, 3, 8, 8), "normal"),
    ("MAX-k2-s2-partial-window", "pool: MAX kernel_size: 2 stride: 2", (2, 3, 7, 7), "normal"),
    ("AVE-global", "pool: AVE global_pooling: true", (2, 3, 5, 4), "normal"),
    ("MAX-global", "pool: MAX global_pooling: true", (2, 3, 5, 4), "normal"),
    ("AVE-all-time-steps", "pool: AVE kernel_h: 5 kernel_w: 1 stride: 1", (2, 3, 5, 4), "normal"),
    ("AVE-rectangular-pad", "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
     (2, 3, 7, 6), "normal"),
    ("MAX-ties", "pool: MAX kernel_size: 3 stride: 2 pad: 1", (2, 3, 9, 10), "int"),
]:
    CASES.append(Case(f"Pooling-{_pid}", _layer("Pooling", f"pooling_param {{ {_pp} }}"), (("x", _shape, _kind),)))
# ---- element-wise and activations
E3 = (("a", (2, 3, 4), "normal"), ("b", (2, 3, 4), "normal"), ("c", (2, 3, 4), "normal"))
CASES += [
    Case("Eltwise-SUM", _layer("Eltwise", "", ("a", "b")), E3[:2]),
    Case("Eltwise-SUM-coeff", _layer("Eltwise", "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1.5 }",
                                     ("a", "b", "c")), E3),
    Case("Eltwise-PROD", _layer("Eltwise", "eltwise_param { operation: PROD }", ("a", "b", "c")), E3),
    Case("Eltwise-MAX", _layer("Eltwise", "eltwise_param { operation: MAX }", ("a", "b", "c")), E3),
    Case("Eltwise-MAX-ties", _layer("Eltwise", "eltwise_param { operation: MAX }", ("a", "b", "c")),
         tuple((n, s, "int") for n, s, _ in E3)),
    # bottoms of other shapes but as many values: the build's Eltwise has no shape check, the top is bottom 0's
    Case("Eltwise-SUM-other-shapes",
         _layer("Eltwise", "eltwise_param { coeff: 2 coeff: -1 coeff: 1 }", ("a", "b", "c")),
         (("a", (2, 3, 1, 2), "normal"), ("b", (2, 6), "normal"), ("c", (12,), "normal"))),
    Case("Eltwise-MAX-other-shapes", _layer("Eltwise", "eltwise_param { operation: MAX }", ("a", "b")),
         (("a", (2, 3, 2), "normal"), ("b", (2, 3, 1, 2), "normal"))),
    Case("ReLU", _layer("ReLU"), (("x", (2, 3, 4, 5), "zeros"),)),
    Case("ReLU-leaky-in-place", _layer("ReLU", "relu_param { negative_slope: 0.1 }", tops=("x",)),
         (("x", (2, 3, 4, 5), "zeros"),)),
    Case("PReLU", _layer("PReLU"), (("x", (2, 3, 4, 5), "zeros"),)),
    Case("PReLU-channel-shared", _layer("PReLU", "prelu_param { channel_shared: true }"),
         (("x", (2, 3, 4, 5), "zeros"),)),
    Case("PReLU-2D-in-place", _layer("PReLU", tops=("x",)), (("x", (4, 6), "zeros"),)),
    Case("Sigmoid", _layer("Sigmoid"), X4),
    Case("Sigmoid-in-place", _layer("Sigmoid", tops=("x",)), X2),
    Case("TanH", _layer("TanH"), X4),
    Case("Softmax", _layer("Softmax"), X2),
    Case("Softmax-spatial", _layer("Softmax"), X4),
    Case("Softmax-axis2", _layer("Softmax", "softmax_param { axis: 2 }"), X4),
    Case("Dropout-TEST", _layer("Dropout", "dropout_param { dropout_ratio: 0.5 }"), X4, phase="TEST"),
    Case("Dropout-TRAIN-ratio0", _layer("Dropout", "dropout_param { dropout_ratio: 0 }"), X4),
]
# ---- neuron layers (BVLC): AbsVal, BNLL, ELU, Exp, Log, Power, Threshold. Clip and Swish came after Caffe 1.0
# and are not in the build: NumPy references only (tests/test_layers_neuron.py).
XP = (("x", (2, 3, 4, 5), "positive"),)
XZ = (("x", (2, 3, 4, 5), "zeros"),)
CASES += [
    Case("AbsVal", _layer("AbsVal"), XZ),
    Case("BNLL", _layer("BNLL"), XZ),
    Case("ELU", _layer("ELU"), XZ),
    Case("ELU-alpha", _layer("ELU", "elu_param { alpha: 0.4 }"), XZ),
    Case("Exp", _layer("Exp"), X4),
    Case("Exp-base2-scale-shift", _layer("Exp", "exp_param { base: 2 scale: 0.5 shift: 1.5 }"), X4),
    Case("Log", _layer("Log"), XP),
    Case("Log-base10-scale-shift", _layer("Log", "log_param { base: 10 scale: 2 shift: 0.5 }"), XP),
    Case("Power-default", _layer("Power"), X4),
    Case("Power-linear", _layer("Power", "power_param { scale: 2 shift: 3 }"), X4),
    Case("Power-square", _layer("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"), X4),
    Case("Power-cube-no-shift", _layer("Power", "power_param { power: 3 scale: 1.5 }"), X4),
    Case("Power-sqrt-shift", _layer("Power", "power_param { power: 0.5 scale: 2 shift: 0.5 }"), XP),
    Case("Power-power0", _layer("Power", "power_param { power: 0 scale: 2 shift: 1 }"), X4),
    Case("Power-scale0", _layer("Power", "power_param { power: 2 scale: 0 shift: 1.5 }"), X4),
    # Caffe has no backward for Threshold (NOT_IMPLEMENTED: force_backward would abort it)
    Case("Threshold", _layer("Threshold", "threshold_param { threshold: 0.2 }"), XZ, backward=False),
    Case("Threshold-ties", _layer("Threshold", "threshold_param { threshold: 1 }"), (("x", (4, 6), "int"),),
         backward=False),
]
# ---- utility layers. Caffe cannot back-propagate to an index bottom (a fatal CHECK that force_backward would
# trigger), so BatchReindex, Filter and Embed compare forward only here (backward: the NumPy tests).
CASES += [
    Case("ArgMax", _layer("ArgMax"), X4, backward=False),
    Case("ArgMax-top3-max-val", _layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }"), X2,
         backward=False),
    Case("ArgMax-axis1-top2", _layer("ArgMax", "argmax_param { axis: 1 top_k: 2 }"), X4, backward=False),
    Case("ArgMax-axis-neg1-max-val", _layer("ArgMax", "argmax_param { axis: -1 out_max_val: true top_k: 2 }"), X4,
         backward=False),
    Case("ArgMax-ties", _layer("ArgMax", "argmax_param { top_k: 4 }"), (("x", (3, 6), "int"),), backward=False),
    Case("ArgMax-axis-ties", _layer("ArgMax", "argmax_param { axis: 1 top_k: 3 }"), (("x", (3, 6, 2), "int"),),
         backward=False),
    Case("BatchReindex", _layer("BatchReindex", "", ("x", "idx")),
         (("x", (4, 3, 2), "normal"), ("idx", (6,), "label:4")), backward=False),
    Case("Crop", _layer("Crop", "", ("x", "r")), (("x", (2, 3, 7, 8), "normal"), ("r", (2, 3, 4, 5), "normal"))),
    Case("Crop-one-offset", _layer("Crop", "crop_param { offset: 2 }", ("x", "r")),
         (("x", (2, 3, 7, 8), "normal"), ("r", (2, 3, 4, 5), "normal"))),
    Case("Crop-axis1-offsets", _layer("Crop", "crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }", ("x", "r")),
         (("x", (2, 4, 7, 8), "normal"), ("r", (2, 2, 4, 5), "normal"))),
    Case("Tile", _layer("Tile", "tile_param { tiles: 3 }"), X4),
    Case("Tile-last-axis", _layer("Tile", "tile_param { axis: -1 tiles: 2 }"), (("x", (3, 4), "normal"),)),
    Case("Filter", _layer("Filter", "", ("a", "b", "sel"), ("fa", "fb")),
         (("a", (8, 3), "normal"), ("b", (8, 2, 2), "normal"), ("sel", (8, 1), "label:2")), backward=False),
    Case("Reduction-SUM", _layer("Reduction"), X4),
    Case("Reduction-ASUM-axis1", _layer("Reduction", "reduction_param { operation: ASUM axis: 1 }"), XZ),
    Case("Reduction-SUMSQ-axis2-coeff", _layer("Reduction", "reduction_param { operation: SUMSQ axis: 2 "
                                               "coeff: 0.5 }"), X4),
    Case("Reduction-MEAN-last-axis", _layer("Reduction", "reduction_param { operation: MEAN axis: -1 coeff: 2 }"),
         X4),
    Case("Parameter", _layer("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", ()), (),
         input_layer=""),
    Case("Embed", _layer("Embed", "embed_param { num_output: 4 input_dim: 5 }"), (("x", (2, 3), "label:5"),),
         backward=False),
    Case("Embed-no-bias", _layer("Embed", "embed_param { num_output: 3 input_dim: 6 bias_term: false }"),
         (("x", (7,), "label:6"),), backward=False),
    Case("MVN", _layer("MVN"), X4),
    Case("MVN-across-channels", _layer("MVN", "mvn_param { across_channels: true }"), X4),
    Case("MVN-mean-only", _layer("MVN", "mvn_param { normalize_variance: false }"), X4),
    Case("MVN-eps", _layer("MVN", "mvn_param { eps: 0.1 across_channels: true }"), X4),
    # in place only without normalize_variance: Caffe's in-place backward with it is wrong (see MVN's docstring)
    Case("MVN-mean-only-in-place", _layer("MVN", "mvn_param { normalize_variance: false }", tops=("x",)), X4),
    Case("MVN-2D", _layer("MVN", "mvn_param { across_channels: true }"), X2),
]
# ---- recurrent layers: two rounds, so the hidden state carried from the first forward to the second counts
SEQ = (("x", (3, 2, 4), "normal"), ("cont", (3, 2), "label:2"))
SEQ_STATIC = SEQ + (("xs", (2, 5), "normal"),)
CASES += [
    Case("RNN", _layer("RNN", "recurrent_param { num_output: 3 }", ("x", "cont")), SEQ),
    Case("RNN-4D-static", _layer("RNN", "recurrent_param { num_output: 3 }", ("x", "cont", "xs")),
         (("x", (3, 2, 2, 2), "normal"),) + SEQ_STATIC[1:]),
    Case("RNN-expose-hidden", _layer("RNN", "recurrent_param { num_output: 3 expose_hidden: true }",
                                     ("x", "cont", "h0"), ("y", "hT")), SEQ + (("h0", (1, 2, 3), "normal"),)),
    Case("LSTM", _layer("LSTM", "recurrent_param { num_output: 3 }", ("x", "cont")), SEQ),
    Case("LSTM-static", _layer("LSTM", "recurrent_param { num_output: 2 }", ("x", "cont", "xs")), SEQ_STATIC),
    Case("LSTM-expose-hidden-static",
         _layer("LSTM", "recurrent_param { num_output: 3 expose_hidden: true }", ("x", "cont", "xs", "h0", "c0"),
                ("y", "hT", "cT")),
         SEQ_STATIC + (("h0", (1, 2, 3), "normal"), ("c0", (1, 2, 3), "normal"))),
    Case("LSTMUnit", _layer("LSTMUnit", "", ("c", "g", "cont"), ("c1", "h1")),
         (("c", (1, 4, 3), "normal"), ("g", (1, 4, 12), "normal"), ("cont", (1, 4), "label:2"))),
]
# ---- SoftmaxWithLoss
SWL_IN = (("x", (6, 5), "normal"), ("label", (6,), "label:5"))
CASES += [
    Case("SoftmaxWithLoss", _layer("SoftmaxWithLoss", "", ("x", "label")), SWL_IN),
    # No case with the second (probability) top: BVLC Caffe cannot build that layer (a fatal CHECK either way:
    # without loss_weight its LossLayer gives 2 tops 1 weight; with two, the internal Softmax inherits both for
    # its 1 top; BVLC issue #2968, never fixed in 1.0), so there is nothing to compare against.
    Case("SoftmaxWithLoss-loss_weight", _layer("SoftmaxWithLoss", "loss_weight: 2", ("x", "label")), SWL_IN),
    Case("SoftmaxWithLoss-spatial-ignore-VALID",
         _layer("SoftmaxWithLoss", "loss_param { ignore_label: -1 }", ("x", "label")),
         (("x", (2, 4, 3, 2), "normal"), ("label", (2, 1, 3, 2), "label:4:ignore"))),
    Case("SoftmaxWithLoss-ignore-FULL",
         _layer("SoftmaxWithLoss", "loss_param { ignore_label: -1 normalization: FULL }", ("x", "label")),
         (("x", (6, 5), "normal"), ("label", (6,), "label:5:ignore"))),
    Case("SoftmaxWithLoss-BATCH_SIZE",
         _layer("SoftmaxWithLoss", "loss_param { normalization: BATCH_SIZE }", ("x", "label")),
         (("x", (2, 4, 3), "normal"), ("label", (2, 3), "label:4"))),
    Case("SoftmaxWithLoss-NONE",
         _layer("SoftmaxWithLoss", "loss_param { normalization: NONE }", ("x", "label")), SWL_IN),
    Case("SoftmaxWithLoss-normalize-false",
         _layer("SoftmaxWithLoss", "loss_param { normalize: false }", ("x", "label")),
         (("x", (2, 4, 3), "normal"), ("label", (2, 3), "label:4"))),
]

# ---- BVLC vision and loss layers: LRN, Deconvolution, Im2col, N-D / axis Convolution, MAX mask top, SPP,
# EuclideanLoss, ContrastiveLoss, HingeLoss, MultinomialLogisticLoss, InfogainLoss, SigmoidCrossEntropyLoss.
# STOCHASTIC pooling has no CPU implementation in Caffe (NOT_IMPLEMENTED in Forward_cpu), so it is compared with
# NumPy only (tests/test_layers_vision_more.py); so is SigmoidCrossEntropyLoss's ignore_label / normalization,
# which this build's (pre-1.0) layer does not read.
XL = (("x", (2, 7, 5, 6), "normal"),)
CASES += [
    Case("LRN-across-default", _layer("LRN"), XL),
    Case("LRN-across-size3-k2", _layer("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }"), XL),
    Case("LRN-across-size9-wide", _layer("LRN", "lrn_param { local_size: 9 alpha: 0.01 beta: 0.75 }"), XL),
    Case("LRN-within", _layer("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 2 "
                                     "beta: 0.75 }"), XL),
    # never in place: Caffe's LRN does not support it (ACROSS_CHANNELS overwrites the bottom before it multiplies
    # by it, giving x^-2beta-ish garbage; WITHIN_CHANNEL's backward reads the overwritten bottom)
    Case("LRN-within-size5", _layer("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 5 }"), XL),
    Case("Deconvolution-k3-s2-p1", _layer("Deconvolution", "convolution_param { num_output: 3 kernel_size: 3 "
                                          "stride: 2 pad: 1 }"), (("x", (2, 4, 4, 5), "normal"),)),
    Case("Deconvolution-group-dilation-rect", _layer("Deconvolution", "convolution_param { num_output: 4 "
                                                     "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 group: 2 "
                                                     "dilation: 2 }"), (("x", (2, 6, 4, 5), "normal"),)),
    Case("Deconvolution-no-bias-two-bottoms", _layer("Deconvolution", "convolution_param { num_output: 2 "
                                                     "kernel_size: 4 stride: 2 bias_term: false }",
                                                     ("a", "b"), ("p", "q")),
         (("a", (2, 3, 3, 4), "normal"), ("b", (2, 3, 3, 4), "normal"))),
    Case("Deconvolution-3D", _layer("Deconvolution", "convolution_param { num_output: 2 kernel_size: 2 "
                                    "stride: 2 }"), (("x", (2, 3, 2, 3, 2), "normal"),)),
    Case("Convolution-3D-per-axis", _layer("Convolution", "convolution_param { num_output: 3 kernel_size: 2 "
                                           "kernel_size: 3 kernel_size: 1 stride: 1 stride: 2 stride: 1 pad: 1 "
                                           "dilation: 1 dilation: 1 dilation: 2 }"),
         (("x", (2, 2, 4, 5, 6), "normal"),)),
    Case("Convolution-4D-group", _layer("Convolution", "convolution_param { num_output: 4 kernel_size: 2 stride: 1 "
                                        "stride: 2 stride: 1 stride: 1 pad: 1 group: 2 }"),
         (("x", (2, 4, 2, 3, 3, 2), "normal"),)),
    Case("Deconvolution-4D-group", _layer("Deconvolution", "convolution_param { num_output: 4 kernel_size: 2 "
                                          "stride: 2 stride: 1 stride: 1 stride: 2 pad: 1 group: 2 }"),
         (("x", (2, 4, 2, 3, 2, 2), "normal"),)),
    Case("Convolution-1D", _layer("Convolution", "convolution_param { num_output: 3 kernel_size: 3 pad: 1 "
                                  "stride: 2 }"), (("x", (2, 4, 9), "normal"),)),
    Case("Convolution-axis2", _layer("Convolution", "convolution_param { num_output: 3 kernel_size: 2 axis: 2 }"),
         (("x", (2, 3, 4, 5, 6), "normal"),)),
    Case("Im2col-k3-s2-p1", _layer("Im2col", "convolution_param { kernel_size: 3 stride: 2 pad: 1 }"),
         (("x", (2, 3, 6, 7), "normal"),)),
    Case("Im2col-rect-dilation", _layer("Im2col", "convolution_param { kernel_h: 2 kernel_w: 3 dilation: 2 "
                                        "pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2 }"),
         (("x", (2, 3, 6, 9), "normal"),)),
    Case("Im2col-3D", _layer("Im2col", "convolution_param { kernel_size: 2 stride: 1 pad: 1 }"),
         (("x", (1, 2, 3, 4, 3), "normal"),)),
    Case("Im2col-4D", _layer("Im2col", "convolution_param { kernel_size: 2 stride: 2 stride: 1 stride: 1 stride: 2 "
                                       "pad: 1 }"), (("x", (1, 2, 3, 3, 2, 4), "normal"),)),
    Case("Pooling-MAX-mask-top", _layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
                                        tops=("y", "mask")), (("x", (2, 3, 9, 10), "normal"),)),
    Case("Pooling-MAX-mask-ties", _layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",
                                         tops=("y", "mask")), (("x", (2, 3, 7, 7), "int"),)),
    Case("Pooling-MAX-mask-global", _layer("Pooling", "pooling_param { pool: MAX global_pooling: true }",
                                           tops=("y", "mask")), (("x", (2, 3, 5, 4), "normal"),)),
    Case("SPP-MAX-3", _layer("SPP", "spp_param { pyramid_height: 3 }"), (("x", (2, 3, 9, 10), "normal"),)),
    Case("SPP-AVE-3", _layer("SPP", "spp_param { pyramid_height: 3 pool: AVE }"), (("x", (2, 3, 7, 8), "normal"),)),
    Case("SPP-MAX-1", _layer("SPP", "spp_param { pyramid_height: 1 }"), (("x", (2, 3, 5, 4), "normal"),)),
    Case("InnerProduct-transpose-axis2", _layer("InnerProduct", "inner_product_param { num_output: 3 axis: 2 "
                                                "transpose: true }"), X4),
    Case("InnerProduct-axis-minus1-no-bias", _layer("InnerProduct", "inner_product_param { num_output: 2 axis: -1 "
                                                    "bias_term: false }"), X4),
    Case("EuclideanLoss", _layer("EuclideanLoss", "", ("x", "t")),
         (("x", (4, 3, 2), "normal"), ("t", (4, 6), "normal"))),
    Case("EuclideanLoss-loss_weight", _layer("EuclideanLoss", "loss_weight: 3", ("x", "t")),
         (("x", (5, 3), "normal"), ("t", (5, 3), "normal"))),
]
CL_IN = (("a", (8, 3, 1, 1), "normal"), ("b", (8, 3, 1, 1), "normal"), ("sim", (8, 1, 1, 1), "label:2"))
for _cl_id, _cl in [("default", ""), ("margin3", "contrastive_loss_param { margin: 3 }"),
                    ("legacy", "contrastive_loss_param { legacy_version: true }"),
                    ("legacy-margin4", "contrastive_loss_param { margin: 4 legacy_version: true }")]:
    CASES.append(Case(f"ContrastiveLoss-{_cl_id}", _layer("ContrastiveLoss", _cl, ("a", "b", "sim")), CL_IN))
CASES += [
    Case("HingeLoss-L1", _layer("HingeLoss", "", ("x", "label")),
         (("x", (6, 5), "normal"), ("label", (6,), "label:5"))),
    Case("HingeLoss-L2-4D", _layer("HingeLoss", "hinge_loss_param { norm: L2 }", ("x", "label")),
         (("x", (6, 2, 2, 1), "normal"), ("label", (6, 1, 1, 1), "label:4"))),
    Case("MultinomialLogisticLoss", _layer("MultinomialLogisticLoss", "", ("p", "label")),
         (("p", (6, 5), "prob"), ("label", (6,), "label:5"))),
    # forward only: under force_backward Caffe asks InfogainLoss for the H bottom's gradient and aborts
    # (AllowForceBackward(2) overrides propagate_down); the backward is compared in test_infogain_loss_backward
    Case("InfogainLoss-bottom-H", _layer("InfogainLoss", "", ("p", "label", "H")),
         (("p", (6, 4), "prob"), ("label", (6,), "label:4"), ("H", (1, 1, 4, 4), "prob")), backward=False),
    Case("SigmoidCrossEntropyLoss", _layer("SigmoidCrossEntropyLoss", "", ("x", "t")),
         (("x", (4, 3, 2), "normal"), ("t", (4, 3, 2), "prob"))),
    Case("SigmoidCrossEntropyLoss-binary-loss_weight", _layer("SigmoidCrossEntropyLoss", "loss_weight: 2",
                                                              ("x", "t")),
         (("x", (5, 4), "normal"), ("t", (5, 4), "label:2"))),
]


def make_inputs(case: Case, rng) -> dict:
    out = {}
    for name, shape, kind in case.inputs:
        out[name] = make_array(kind, shape, rng)
    if any(kind == "cos" for *_, kind in case.inputs) and "label" in out:
        x, label = out["x"], out["label"].astype(int)
        x[0, label[0]] = -0.95   # below cos(pi - m) for m = 0.5 (and 0.2): the c - m sin m branch
        x[1, label[1]] = -0.3    # between: the branch that differs with easy_margin
    return out


def case_net_text(case: Case) -> str:
    if case.input_layer is not None:
        head = case.input_layer
    else:
        tops = " ".join(f'top: "{n}"' for n, _, _ in case.inputs)
        shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for _, s, _ in case.inputs)
        head = f'layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes} }} }}'
    return ("force_backward: true\n" if case.backward else "") + head + "\n" + case.layer + "\n"


def randomise_params(net, rng) -> None:
    for layer, blobs in net.params.items():
        if net.layer_dict[layer].type == "BatchNorm":
            c = blobs[0].data.shape
            sf = rng.uniform(0.5, 3.0)
            blobs[0].data[...] = rng.standard_normal(c) * sf
            blobs[1].data[...] = rng.uniform(0.5, 2.0, size=c) * sf
            blobs[2].data[...] = sf
            continue
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_layer(tmp_path, case):
    """One layer, same random weights (written by caffe_torch) and inputs: two forward/backward rounds, every
    blob's data and diff, every param's data and diff. The tops get random diffs (the loss tops their loss
    weight); Caffe takes them written into `.diff`, caffe_torch as `net.backward(**diffs)`."""
    proto = tmp_path / "layer.prototxt"
    proto.write_text(case_net_text(case))
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    caffe_torch.set_random_seed(9)
    ours = caffe_torch.Net(str(proto), phase(caffe_torch, case.phase))
    if case.params == "random":
        randomise_params(ours, rng)
    weights = tmp_path / "layer.caffemodel"
    ours.save(str(weights))
    theirs = caffe.Net(str(proto), str(weights), phase(caffe, case.phase))
    params_identical(ours, theirs)
    lp = text_format.Parse(case.layer, caffe_pb2.NetParameter()).layer
    loss_tops = set()
    for layer in lp:
        weights_ = list(layer.loss_weight) or [1.0 if layer.type.endswith("Loss") and i == 0 else 0.0
                                               for i in range(len(layer.top))]
        loss_tops |= {t for t, w in zip(layer.top, weights_) if w}
    cmp = Compare(case.id)
    for _ in range(2):
        inputs = make_inputs(case, rng)
        for net in (ours, theirs):
            # each round's param diffs on their own, as after a solver's ClearParamDiffs (accumulation over
            # passes is compared on the shipped nets and with iter_size; see also the Scale test below)
            for blobs in net.params.values():
                for b in blobs:
                    b.diff[...] = 0
            feed(net, inputs)
            net.forward()
        if case.backward:
            diffs = {t: rng.standard_normal(theirs.blobs[t].data.shape).astype(np.float32)
                     for t in theirs.outputs if t not in loss_tops}
            for t, d in diffs.items():
                theirs.blobs[t].diff[...] = d
            theirs.backward()
            ours.backward(**diffs)
            seeded = set(diffs) - set(theirs.inputs)   # an in-place top on an input is a result
        compare_blobs(cmp, ours, theirs, "layer", diffs=case.backward, seeded=seeded if case.backward else ())
        compare_params(cmp, ours, theirs, "layer", diffs=case.backward)
    cmp.check()


@pytest.mark.parametrize("h_from", ["bottom", "source"])
def test_infogain_loss_backward(tmp_path, h_from):
    """InfogainLoss forward and backward without force_backward (see its Case): a learned Scale (positive
    factors) makes the probabilities, so the loss's gradient reaches the Scale's diff and the blob between;
    H from a third bottom or from a binaryproto `source` (written by caffe_torch, read by both engines)."""
    from caffe_torch.weights import array_to_blob

    rng = np.random.default_rng(12)
    h = rng.uniform(0.0, 1.0, size=(1, 1, 4, 4)).astype(np.float32)
    if h_from == "bottom":
        head = _layer("Input", "input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } "
                               "shape { dim: 1 dim: 1 dim: 4 dim: 4 } }", (), ("x", "label", "H"), name="in")
        loss = _layer("InfogainLoss", "", ("p", "label", "H"), ("loss",), name="loss")
    else:
        source = tmp_path / "H.binaryproto"
        source.write_bytes(array_to_blob(h).SerializeToString())
        head = _layer("Input", "input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } }", (), ("x", "label"),
                      name="in")
        loss = _layer("InfogainLoss", f'infogain_loss_param {{ source: "{source}" }}', ("p", "label"),
                      ("loss",), name="loss")
    proto = tmp_path / "infogain.prototxt"
    proto.write_text("\n".join([head, _layer("Scale", "scale_param { axis: 0 num_axes: -1 }", ("x",), ("p",),
                                              name="scale"), loss]))
    ours = caffe_torch.Net(str(proto), caffe_torch.TRAIN)
    ours.params["scale"][0].data[...] = rng.uniform(0.5, 1.5, size=(6, 4))
    weights = tmp_path / "infogain.caffemodel"
    ours.save(str(weights))
    theirs = caffe.Net(str(proto), str(weights), caffe.TRAIN)
    inputs = {"x": rng.uniform(0.0, 1.0, size=(6, 4)).astype(np.float32),
              "label": rng.integers(0, 4, size=6).astype(np.float32)}
    inputs["x"][0, :2] = 0          # clamped to kLOG_THRESHOLD: Caffe's gradient there is 1 / 1e-20
    if h_from == "bottom":
        inputs["H"] = h
    cmp = Compare(f"InfogainLoss H from {h_from}")
    for net in (ours, theirs):
        feed(net, inputs)
        net.forward()
        net.backward()
    compare_blobs(cmp, ours, theirs, "layer", diffs=True)
    compare_params(cmp, ours, theirs, "layer")
    cmp.check()

def test_every_layer_type_is_covered():
    """Every type caffe_torch itself registers has a case above, and the real build has every one of them.
    (Types that other test modules register for their own use, e.g. test_solver's data source, are not ours.)"""
    from caffe_torch.layers.base import layer_class
    from tests.test_conformance_data import COVERED_TYPES as DATA_LAYERS_COVERED

    # Python: compared with real Caffe in tests/test_pycaffe_scripts.py (a Python layer subclasses its own
    # engine's caffe.Layer, so one process cannot run the same layer module in both engines)
    covered = {"Input", "Python"} | DATA_LAYERS_COVERED
    for case in CASES:
        covered |= {lp.type for lp in text_format.Parse(case.layer, caffe_pb2.NetParameter()).layer}
    ours = {t for t in caffe_torch.known_types() if layer_class(t).__module__.startswith("caffe_torch.")}
    ours -= {"Clip", "Swish"}     # after Caffe 1.0, not in the build: NumPy references only (test_layers_neuron)
    assert ours - covered == set(), f"layer types without a conformance case: {sorted(ours - covered)}"
    assert ours <= set(caffe.layer_type_list()), sorted(ours - set(caffe.layer_type_list()))


@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_train(tmp_path, in_place):
    """TRAIN Dropout draws its mask from each engine's own generator, so the values cannot match; both must
    keep units with probability 1 - p, scale the kept ones by 1 / (1 - p) and pass the gradient through the
    same mask."""
    top = "x" if in_place else "y"
    proto = tmp_path / "dropout.prototxt"
    proto.write_text("force_backward: true\n" + _layer("Input", 'input_param { shape { dim: 40 dim: 50 } }', (),
                                                       ("x",), name="in") + "\n" +
                     _layer("Dropout", "dropout_param { dropout_ratio: 0.3 }", tops=(top,)))
    rng = np.random.default_rng(10)
    x = rng.uniform(0.5, 1.5, size=(40, 50)).astype(np.float32)   # no zeros: a zero output means dropped
    dy = rng.standard_normal((40, 50)).astype(np.float32)
    for engine in (caffe_torch, caffe):
        net = engine.Net(str(proto), engine.TRAIN)
        net.blobs["x"].data[...] = x
        net.forward()
        y = net.blobs[top].data.copy()
        kept = y != 0
        assert 0.6 < kept.mean() < 0.8, engine.__name__
        np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.7), rtol=1e-6)
        if engine is caffe:
            net.blobs[top].diff[...] = dy
            net.backward()
        else:
            net.backward(**{top: dy})
        np.testing.assert_allclose(net.blobs["x"].diff, np.where(kept, dy / np.float32(0.7), 0), rtol=1e-6)


@pytest.mark.xfail(strict=True, reason="known BVLC quirk, not reproduced: Caffe's LRN does not support running in "
                   "place (ACROSS_CHANNELS writes scale^-beta into the top, which is the bottom, then multiplies the "
                   "top by the bottom, giving x-independent scale^-2beta), yet accepts a prototxt that asks for it; "
                   "caffe_torch computes LRN in place correctly")
def test_lrn_in_place(tmp_path):
    proto = tmp_path / "lrn.prototxt"
    proto.write_text(_layer("Input", "input_param { shape { dim: 2 dim: 7 dim: 3 dim: 4 } }", (), ("x",), name="in")
                     + "\n" + _layer("LRN", "", tops=("x",)))
    x = np.random.default_rng(13).standard_normal((2, 7, 3, 4)).astype(np.float32)
    out = []
    for engine in (caffe_torch, caffe):
        net = engine.Net(str(proto), engine.TEST)
        net.blobs["x"].data[...] = x
        net.forward()
        out.append(net.blobs["x"].data.copy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)

@pytest.mark.xfail(strict=True, reason="known BVLC quirk, not reproduced: when its learned scale has as many "
                   "values as the bottom, Caffe's ScaleLayer::Backward writes the scale diff instead of adding to "
                   "it (caffe_mul into the diff, scale_layer.cpp), so a second backward (iter_size > 1) drops the "
                   "first one's gradient; caffe_torch accumulates as caffe.md's step() and every other layer do")
def test_scale_covering_the_whole_bottom_accumulates_param_diff(tmp_path):
    proto = tmp_path / "scale.prototxt"
    proto.write_text("force_backward: true\n" + _layer("Input", "input_param { shape { dim: 2 dim: 3 } }", (),
                                                       ("x",), name="in") + "\n" +
                     _layer("Scale", "scale_param { axis: 0 num_axes: -1 }"))
    ours = caffe_torch.Net(str(proto), caffe_torch.TRAIN)
    theirs = caffe.Net(str(proto), caffe.TRAIN)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    dy = np.ones((2, 3), np.float32)
    for _ in range(2):
        for net in (ours, theirs):
            net.blobs["x"].data[...] = x
            net.forward()
        theirs.blobs["y"].diff[...] = dy
        theirs.backward()
        ours.backward(y=dy)
    np.testing.assert_array_equal(ours.params["l"][0].diff, 2 * x)        # two passes accumulated
    np.testing.assert_array_equal(theirs.params["l"][0].diff, 2 * x)      # Caffe: x (the last pass only)


@pytest.mark.xfail(strict=True, reason="known bug of this build (brocolli-caffe 9.0.2): Caffe 1.0's "
                   "BatchNormLayer::LayerSetUp gives its three statistics blobs lr_mult 0 (caffe_torch does the "
                   "same), and Caffe 1.0's UpgradeNetBatchNorm drops the `param { lr_mult: 0 }` x3 that older "
                   "prototxts carry because of that; this build has the upgrade but an older BatchNormLayer "
                   "without the masking, so with or without those specs its solver applies weight decay and "
                   "momentum to the running mean, variance and scale factor")
@pytest.mark.parametrize("specs", ["", "param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }"],
                         ids=["no-param-specs", "three-lr_mult-0"])
def test_batch_norm_statistics_under_a_solver(tmp_path, specs):
    net = tmp_path / "bn.prototxt"
    net.write_text("\n".join([
        _layer("Input", "input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } }", (), ("x", "label"), name="in"),
        _layer("BatchNorm", specs, bottoms=("x",), tops=("y",), name="bn"),
        _layer("InnerProduct", "inner_product_param { num_output: 2 }", ("y",), ("z",), name="fc"),
        _layer("SoftmaxWithLoss", "", ("z", "label"), ("loss",), name="loss")]))
    solver = write_solver(tmp_path / "solver.prototxt", net, 'type: "SGD" base_lr: 0.1 lr_policy: "fixed" '
                          "weight_decay: 0.1 max_iter: 1\n")
    weights = tmp_path / "bn.caffemodel"
    caffe_torch.Net(str(net), caffe_torch.TRAIN).save(str(weights))
    batch = {"x": np.random.default_rng(11).standard_normal((4, 3)).astype(np.float32),
             "label": np.array([0, 1, 1, 0], np.float32)}
    cmp, _ = run_solvers(solver, weights, [batch], "loss", "BatchNorm without param specs", record=False)
    cmp.check()
