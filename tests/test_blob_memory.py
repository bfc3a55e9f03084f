"""Caffe's memory model in caffe_torch (caffe_torch/blob.py): kept `.data` / `.diff` arrays follow the blob on
the CPU (out-of-place outputs, in-place tops, reshape to the same shape, parameter diffs across solver
steps), writes through them reach the next forward, and the GPU host-copy path (run on the CPU with
`Blob.zero_copy_devices = ()`) follows SyncedMemory: a read diff never leaks into the next step, reading a
test net's shared weights never writes old weights back, shared parameters have one host copy."""

from functools import partial

import numpy as np
import pytest
import torch
from fp import assert_within, matmul_bound

import caffe_torch as caffe
from caffe_torch.blob import Blob
from caffe_torch.layers.base import Layer, known_types, register

NET = '''name: "m"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
'''

if "_MemoryTestData" not in known_types():
    @register("_MemoryTestData")
    class _MemoryTestData(Layer):
        """Source layer: tops data (4, 3), label (4,); forward k returns batch k (TEST nets: another stream)."""

        num_bottoms = (0, 0)
        num_tops = (2, 2)

        def __init__(self, param, bottom_shapes, ctx):
            super().__init__(param, bottom_shapes, ctx)
            self.count = 0

        def top_shapes(self, bottom_shapes):
            return [(4, 3), (4,)]

        def forward(self):
            rs = np.random.RandomState(self.count + (1000 if self.phase == caffe.TEST else 0))
            self.count += 1
            return (torch.tensor(rs.randn(4, 3), dtype=self._ctx_dtype),
                    torch.tensor(rs.randint(0, 3, 4), dtype=self._ctx_dtype))


# the same net fed by a layer that makes a new batch each forward, for the solver tests
SOLVER_NET = NET.replace('''layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }''', 'layer { name: "in" type: "_MemoryTestData" '
                         'top: "data" top: "label" }')
SOLVER = '''net: "{net}"
base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01 max_iter: 100
test_iter: 1 test_interval: 2 test_initialization: false random_seed: 5
'''


def make_net(tmp_path, phase=caffe.TRAIN):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    caffe.set_random_seed(3)
    return caffe.Net(str(path), phase, dtype=torch.float64)


def make_solver(tmp_path, name="a"):
    d = tmp_path / name
    d.mkdir()
    (d / "net.prototxt").write_text(SOLVER_NET)
    (d / "solver.prototxt").write_text(SOLVER.format(net=d / "net.prototxt"))
    return caffe.SGDSolver(str(d / "solver.prototxt"), dtype=torch.float64)


def batch(net, k):
    rs = np.random.RandomState(k)
    net.blobs["data"].data[...] = rs.randn(4, 3)
    net.blobs["label"].data[...] = rs.randint(0, 3, 4)


def reference_outputs(tmp_path, k):
    """(fc after ReLU, out) of batch k computed by a fresh net with the same weights, nothing kept."""
    net = make_net(tmp_path)
    batch(net, k)
    net.forward()
    return net.blobs["fc"].data.copy(), net.blobs["out"].data.copy()


@pytest.fixture
def host_copies(monkeypatch):
    """Run the GPU path of blob.py on the CPU: .data/.diff are host copies with SyncedMemory heads."""
    monkeypatch.setattr(Blob, "zero_copy_devices", ())


# ------------------------------------------------------------------------------------------ CPU: live views

def test_kept_views_follow_out_of_place_and_in_place_outputs(tmp_path):
    net = make_net(tmp_path)
    fc, out, loss = net.blobs["fc"].data, net.blobs["out"].data, net.blobs["loss"].data
    for k in range(3):
        batch(net, k)
        net.forward()
        want_fc, want_out = reference_outputs(tmp_path, k)
        np.testing.assert_array_equal(fc, want_fc)          # in-place top: the ReLU's result
        np.testing.assert_array_equal(out, want_out)        # out-of-place result copied into the memory
        assert loss.item() == pytest.approx(net.loss_value())


def test_original_crop_average_quirk_is_reproduced(tmp_path):
    """The 2018 scripts' `avg = blob.data` then `avg = avg + blob.data`: the first assignment is a view that
    crop 1's forward overwrites, so they averaged (2 crop1 + crop2 + ...) / n."""
    net = make_net(tmp_path)
    outs = []
    for k in range(4):
        batch(net, k)
        net.forward()
        outs.append(net.blobs["out"].data.copy())
        if k == 0:
            avg = net.blobs["out"].data
        else:
            avg = avg + net.blobs["out"].data
    np.testing.assert_allclose(avg / 4, (2 * outs[1] + outs[2] + outs[3]) / 4, rtol=1e-12)
    assert not np.allclose(avg / 4, sum(outs) / 4)


def test_writes_through_a_kept_view_reach_the_next_forward(tmp_path):
    net = make_net(tmp_path)
    batch(net, 0)
    net.forward()
    fc = net.blobs["fc"].data
    fc[...] = 0.0                                           # an intermediate blob, written by the script
    net.forward(start="out")
    np.testing.assert_allclose(net.blobs["out"].data, np.broadcast_to(net.params["out"][1].data, (4, 3)))
    data = net.blobs["data"].data
    data[...] = 0.0
    net.forward()
    np.testing.assert_allclose(fc, np.maximum(net.params["fc"][1].data, 0) * np.ones((4, 1)))
    # assigning .tensor while a view is kept: the view shows the assigned value
    net.blobs["data"].tensor = torch.ones(4, 3, dtype=torch.float64)
    np.testing.assert_array_equal(data, 1.0)


SHARING_NET = '''name: "share"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param { shape { dim: 3 dim: 2 } } }
layer { name: "c" type: "Concat" bottom: "r" top: "c" }
layer { name: "s" type: "Slice" bottom: "c" top: "s" }
layer { name: "f" type: "Flatten" bottom: "s" top: "f" }
layer { name: "d" type: "DummyData" top: "k" dummy_data_param { data_filler { type: "constant" value: 0.5 }
  shape { dim: 2 dim: 2 } } }
layer { name: "ks" type: "Slice" bottom: "k" top: "ks" }
layer { name: "h" type: "InnerProduct" bottom: "f" top: "h" inner_product_param { num_output: 2 } }
layer { name: "hr" type: "Reshape" bottom: "h" top: "hr" reshape_param { shape { dim: 6 } } }
'''


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_reshape_concat_slice_tops_share_data_from_set_up(tmp_path, phase):
    """Caffe's Reshape, one-bottom Concat and one-top Slice call top->ShareData(bottom) in their Reshape, which
    Net::Init runs: before any forward the top is the bottom's memory (a script's write into an input shows in
    them; a solver's test net, which runs no forward until its first test, shows its fed inputs there: fuzz seeds
    901950, 902072, 907600, 908294). A Flatten shares only in its Forward (flatten_layer.cpp), so its top holds
    zeros until then; a DummyData constant shows in a one-top Slice of it (seed 420007); a top of a blob no layer
    has computed yet shares it too, whichever of the two is read first."""
    path = tmp_path / "net.prototxt"
    path.write_text(SHARING_NET)
    net = caffe.Net(str(path), phase)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = x
    for name in ("r", "c", "s"):
        np.testing.assert_array_equal(net.blobs[name].data.ravel(), x.ravel())
    np.testing.assert_array_equal(net.blobs["f"].data, 0.0)
    np.testing.assert_array_equal(net.blobs["ks"].data, 0.5)
    net.blobs["hr"].data[...] = np.arange(1, 7)
    np.testing.assert_array_equal(net.blobs["h"].data.ravel(), np.arange(1, 7))
    net.blobs["s"].data[...] = -1.0          # the same memory, written through the top
    np.testing.assert_array_equal(net.blobs["x"].data, -1.0)
    net.forward()
    np.testing.assert_array_equal(net.blobs["f"].data.ravel(), -np.ones(6))
    np.testing.assert_allclose(net.blobs["hr"].data, net.blobs["h"].data.ravel())


def test_host_copy_reshape_top_read_before_forward_does_not_overwrite_its_bottom(tmp_path, host_copies):
    """On a GPU each blob has its own host copy: a Reshape top read before any forward must not alias its bottom's
    device memory, or its (older) host copy, uploaded before the forward, would overwrite what the script wrote
    through the bottom's. It shares the bottom's data from the first forward on."""
    path = tmp_path / "net.prototxt"
    path.write_text(SHARING_NET)
    net = caffe.Net(str(path), caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = x
    net.blobs["r"].data                       # a host copy of the top, before any forward  # noqa: B018
    net.forward()
    np.testing.assert_array_equal(net.blobs["x"].data, x)
    np.testing.assert_array_equal(net.blobs["r"].data.ravel(), x.ravel())


def test_views_survive_reshape_to_the_same_shape(tmp_path):
    net = make_net(tmp_path)
    out = net.blobs["out"].data
    net.blobs["data"].reshape(4, 3)
    net.reshape()
    batch(net, 1)
    net.forward()
    np.testing.assert_array_equal(out, reference_outputs(tmp_path, 1)[1])


def test_kept_diffs_follow_backward_and_accumulate_as_caffe(tmp_path):
    net = make_net(tmp_path)
    d_out, d_w = net.blobs["out"].diff, net.params["fc"][0].diff
    batch(net, 0)
    net.forward()
    net.backward()
    first_w = d_w.copy()
    assert first_w.any() and d_out.any()
    probs = np.exp(net.blobs["out"].data) / np.exp(net.blobs["out"].data).sum(1, keepdims=True)
    onehot = np.eye(3)[net.blobs["label"].data.astype(int)]
    np.testing.assert_allclose(d_out, (probs - onehot) / 4, rtol=1e-10)
    net.forward()
    net.backward()                                  # Caffe's Backward accumulates parameter diffs
    np.testing.assert_allclose(d_w, 2 * first_w, rtol=1e-12)


def test_param_views_across_solver_steps(tmp_path):
    s = make_solver(tmp_path)
    w, dw = s.net.params["fc"][0].data, s.net.params["fc"][0].diff
    assert np.shares_memory(w, s.net.params["fc"][0].tensor.numpy())
    for _ in range(3):
        before = w.copy()
        s.step(1)
        # after a step the diff holds the update (Net::Update: data -= diff)
        np.testing.assert_allclose(before - w, dw, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(dw, s.net.params["fc"][0].diff)
    assert np.abs(dw).sum() > 0


def test_fast_path_keeps_nothing_when_no_view_is_held(tmp_path):
    s = make_solver(tmp_path)
    s.net.blobs["fc"].data.sum()                    # read, not kept
    s.net.params["fc"][0].diff.sum()
    s.step(2)
    assert not s.net._sync.viewed and not s.net._sync.pending
    # the tensors are the layers' own results, not copies into any memory
    out = s.net.blobs["out"].tensor
    assert out.grad_fn is not None
    s.net.clear_param_diffs()
    assert all(p.grad is None for p, *_ in s.net.learnable_params())


def test_kept_view_and_solver_give_the_same_trajectory(tmp_path):
    """Holding views must not change training."""
    plain, viewing = make_solver(tmp_path, "a"), make_solver(tmp_path, "b")
    kept = [viewing.net.params["fc"][0].diff, viewing.net.blobs["out"].data, viewing.net.blobs["fc"].diff]
    plain.step(5)
    viewing.step(5)
    for a, b in zip(plain.net.params["fc"] + plain.net.params["out"],
                    viewing.net.params["fc"] + viewing.net.params["out"]):
        np.testing.assert_array_equal(a.data, b.data)
    assert kept[0].any()


# ------------------------------------------------------------------------------------------ GPU host-copy path

def test_host_copy_read_diff_does_not_leak_into_next_step(tmp_path, host_copies):
    """Issue 13 (a): `solver.step(1); net.params[k][0].diff` then step: the stale diff must not be added."""
    plain, reading = make_solver(tmp_path, "a"), make_solver(tmp_path, "b")
    for _ in range(4):
        plain.step(1)
        reading.step(1)
        for blobs in reading.net.params.values():
            for b in blobs:
                b.diff.sum()                    # a read (mutable_cpu_diff): the host copy is now the head
    for a, b in zip(plain.net.params["fc"] + plain.net.params["out"],
                    reading.net.params["fc"] + reading.net.params["out"]):
        np.testing.assert_array_equal(a.data, b.data)


def test_host_copy_test_net_read_does_not_write_old_weights_back(tmp_path, host_copies):
    """Issue 13 (b): reading a test net's shared weights, then training (test_interval forwards included)
    must not upload the old weights over the trained ones."""
    plain, reading = make_solver(tmp_path, "a"), make_solver(tmp_path, "b")
    reading.test_all()                          # the test net shares the weights from its first test (Caffe's)
    old = reading.test_nets[0].params["fc"][0].data
    old_copy = old.copy()
    plain.step(5)
    reading.step(5)                             # tests at iterations 2 and 4 (test_interval 2)
    np.testing.assert_array_equal(reading.net.params["fc"][0].tensor.numpy(),
                                  plain.net.params["fc"][0].tensor.numpy())
    assert not np.array_equal(reading.net.params["fc"][0].tensor.numpy(), old_copy)
    # pycaffe on a GPU: the kept host array shows the new weights after the next read
    np.testing.assert_array_equal(old, old_copy)
    assert np.shares_memory(reading.test_nets[0].params["fc"][0].data, old)   # the read syncs
    np.testing.assert_array_equal(old, reading.net.params["fc"][0].tensor.numpy())


def test_host_copy_shared_params_have_one_host_copy(tmp_path, host_copies):
    s = make_solver(tmp_path)
    s.test_all()                                # the test net shares the weights from its first test (Caffe's)
    train_w, test_w = s.net.params["fc"][0].data, s.test_nets[0].params["fc"][0].data
    assert np.shares_memory(train_w, test_w)
    test_w[...] = 0.0                           # written through the test net's view ...
    s.net.params["fc"][1].data[...] = 0.0
    s.net.forward()                             # ... reaches the train net's next forward
    np.testing.assert_array_equal(s.net.params["fc"][0].tensor.numpy(), 0.0)
    np.testing.assert_array_equal(s.net.blobs["fc"].data, 0.0)


def test_host_copy_views_follow_on_the_next_read_as_pycaffe_on_a_gpu(tmp_path, host_copies):
    net = make_net(tmp_path)
    out = net.blobs["out"].data
    batch(net, 0)
    net.forward()
    first = net.blobs["out"].data.copy()
    np.testing.assert_array_equal(out, first)         # same host memory, synced by the read
    np.testing.assert_array_equal(first, reference_outputs(tmp_path, 0)[1])
    batch(net, 1)
    net.forward()
    np.testing.assert_array_equal(out, first)         # the device is newer; nothing read it yet
    avg = out + net.blobs["out"].data                 # the read syncs `out` too (the original's 2x crop)
    np.testing.assert_allclose(avg, 2 * reference_outputs(tmp_path, 1)[1], rtol=1e-12)
    # a read without a write does not make the host authoritative for good: after the next operation the
    # device result is what the next read shows
    batch(net, 2)
    net.forward()
    np.testing.assert_array_equal(net.blobs["out"].data, reference_outputs(tmp_path, 2)[1])


def test_tensor_setter_blocks_when_copying_to_the_host(tmp_path, monkeypatch):
    """`.tensor = t` converts t to the blob's device and dtype; towards the host (this CPU net) the copy must
    block: non_blocking is only for host-to-device copies."""
    net = make_net(tmp_path)
    calls = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    net.blobs["data"].tensor = torch.ones(4, 3, dtype=torch.float32)      # float32 -> the net's float64
    monkeypatch.undo()
    assert calls == [False]
    assert net.blobs["data"].tensor.dtype == torch.float64 and (net.blobs["data"].tensor == 1).all()


def test_output_diffs_reach_backward_while_output_views_are_kept(tmp_path):
    """A script that keeps the arrays `forward` returned and then back-propagates diffs of its own into the
    outputs (pycaffe's `net.backward(**diffs)`): the kept views must not cut the recorded graph (a backward
    that recomputed the layers instead gave the input a diff, which Caffe does not without force_backward).
    Expected param diff written out in NumPy: dW = g.T @ x for y = x @ W.T + b (y is a loss, so Caffe runs the
    layer's backward, which reads the diff written into y)."""
    path = tmp_path / "ip.prototxt"
    path.write_text('layer { name: "in" type: "Input" top: "x" '
                    'input_param { shape { dim: 2 dim: 3 } } }\nlayer { name: "ip" type: "InnerProduct" '
                    'bottom: "x" top: "y" loss_weight: 1 inner_product_param { num_output: 4 weight_filler { '
                    'type: "gaussian" } } }\n')
    net = caffe.Net(str(path), caffe.TRAIN, dtype=torch.float64)
    rng = np.random.default_rng(4)
    kept = net.forward(x=rng.standard_normal((2, 3)))      # {"y": a view of y's data}, kept
    g = rng.standard_normal((2, 4))
    diffs = net.backward(y=g)
    assert not diffs["x"].any()
    assert_within(net.params["ip"][0].diff, g.T @ net.blobs["x"].data, matmul_bound(g.T, net.blobs["x"].data))
    assert kept["y"].shape == (2, 4)


def test_canonical_pycaffe_loop_downloads_inputs_once_and_uploads_what_the_host_wrote(tmp_path, host_copies,
                                                                                    monkeypatch):
    """SyncedMemory's SYNCED state, counted: every host<->device copy of 10 iterations of the canonical loop
    (`blob.data[...] = x` into the inputs, `net.forward()`, read an output), by blob. The inputs are downloaded
    once, at their first read (issue 21 counted 9 extra downloads in 10 iterations before: an upload left the
    head at the device, so the next write downloaded first); each forward uploads them, and the blobs the host
    has read since (the 'loss' forward() returned, the 'out' read), as Caffe's mutable_gpu_data uploads a
    host-head top before its layer writes it; each output read downloads the new result. The outputs equal a
    fresh net's; a replaced input tensor is downloaded again at its next read."""
    expected_outs = {k: reference_outputs(tmp_path, k)[1] for k in (0, 9)}
    net = make_net(tmp_path)
    names = {id(blob): name for name, blob in net.blobs.items()}
    copies = []
    real_upload, real_download = Blob._upload, Blob._download

    def upload(self, which, mem):
        copies.append(("up", names[id(self)], which))
        real_upload(self, which, mem)

    def download(self, which, mem, t):
        copies.append(("down", names[id(self)], which))
        real_download(self, which, mem, t)

    monkeypatch.setattr(Blob, "_upload", upload)
    monkeypatch.setattr(Blob, "_download", download)

    def copies_of(step) -> list:
        copies.clear()
        step()
        return sorted(copies)

    per_iteration, outs = [], []
    for k in range(10):
        per_iteration.append([copies_of(partial(batch, net, k)),
                              copies_of(net.forward),
                              copies_of(lambda: outs.append(net.blobs["out"].data.copy()))])
    first = [[("down", "data", "data"), ("down", "label", "data")],
             [("down", "loss", "data"), ("up", "data", "data"), ("up", "label", "data")],
             [("down", "out", "data")]]
    later = [[],
             [("down", "loss", "data"), ("up", "data", "data"), ("up", "label", "data"), ("up", "loss", "data"),
              ("up", "out", "data")],
             [("down", "out", "data")]]
    assert per_iteration == [first] + [later] * 9
    for k in (0, 9):
        np.testing.assert_array_equal(outs[k], expected_outs[k])
    net.blobs["data"].tensor = torch.zeros(4, 3, dtype=torch.float64)          # replaced: no longer SYNCED
    assert copies_of(lambda: np.testing.assert_array_equal(net.blobs["data"].data, np.zeros((4, 3)))) == \
        [("down", "data", "data")]
