"""Dropout's mask generator is saved in the .solverstate, so a run restored from a snapshot draws the masks an
uninterrupted run draws (the resume-equals-uninterrupted guarantee of the training scripts)."""

import numpy as np
import pytest

import caffe_torch as caffe
from caffe_torch.errors import LayerError
from caffe_torch.weights import read_solverstate

NET = """name: "drop"
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 8 dim: 6 } shape { dim: 8 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "drop1" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""


def _solver(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\n'
                    f'max_iter: 100\nsnapshot_prefix: "{tmp_path / "drop"}"\nsolver_mode: CPU\n')
    return str(path)


def _feed(solver):
    rng = np.random.default_rng(3)
    solver.net.blobs["x"].data[...] = rng.standard_normal((8, 6))
    solver.net.blobs["label"].data[...] = rng.integers(0, 3, 8)


def test_restored_run_draws_the_uninterrupted_runs_masks(tmp_path):
    caffe.set_random_seed(5)
    a = caffe.SGDSolver(_solver(tmp_path))
    _feed(a)
    a.step(3)
    a.snapshot()
    state_file = a.snapshot_filename(".solverstate")
    saved = {(s.net, s.layer): (s.HasField("counter"), len(s.rng_state))
             for s in read_solverstate(state_file).layer_state}
    assert saved[("train", "drop1")][0] is False and saved[("train", "drop1")][1] > 0
    a.step(4)
    want = a.net.params["fc1"][0].data.copy()

    caffe.set_random_seed(99)        # a new process: other filler values, another mask generator seed
    b = caffe.SGDSolver(_solver(tmp_path))
    _feed(b)
    b.restore(state_file)
    b.step(4)
    np.testing.assert_array_equal(b.net.params["fc1"][0].data, want)

    # without the generator state the continuation differs (the test above can fail)
    caffe.set_random_seed(99)
    c = caffe.SGDSolver(_solver(tmp_path))
    _feed(c)
    c.restore(state_file)
    c.net.modules[c.net._layer_names.index("drop1")]._mask_gen.manual_seed(1)
    c.step(4)
    assert not np.array_equal(c.net.params["fc1"][0].data, want)


def test_generator_state_of_another_kind_is_a_named_error(tmp_path):
    caffe.set_random_seed(5)
    a = caffe.SGDSolver(_solver(tmp_path))
    with pytest.raises(LayerError, match="drop1.*mask generator"):
        a.net.set_layer_rng_states({"drop1": b"\x00" * 16})      # a CUDA generator's size, on a CPU net
