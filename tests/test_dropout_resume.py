"""Dropout's mask generator is saved in the .solverstate, so a run restored from a snapshot draws the masks an
uninterrupted run draws (the resume-equals-uninterrupted guarantee of the training scripts)."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_generator_state_of_unknown_size_is_a_named_error(tmp_path):
    caffe.set_random_seed(5)
    a = caffe.SGDSolver(_solver(tmp_path))
    with pytest.raises(LayerError, match="drop1.*mask generator state .7 bytes"):
        a.net.set_layer_rng_states({"drop1": b"\x00" * 7})


def _masks(solver, n=3):
    """The next n masks of drop1 (TRAIN forward of ones through the layer alone)."""
    layer = solver.net.modules[solver.net._layer_names.index("drop1")]
    ones = torch.ones(8, 10, dtype=torch.float32, device=solver.net.device)
    return [layer(ones).cpu().numpy() for _ in range(n)]


def _cuda_state(seed: int, offset: int) -> bytes:
    """A CUDA generator's state as torch.cuda's Generator.get_state() gives it: seed, Philox offset (int64)."""
    return struct.pack("<Qq", seed, offset)


def test_a_cuda_snapshots_generator_state_restores_on_the_cpu(tmp_path):
    """CPU and CUDA generators are different algorithms (Mersenne Twister, Philox): no state of one is a state
    of the other. A CUDA snapshot restored on the CPU seeds the CPU generator from its state: restoring the same
    snapshot twice continues with the same masks, another state with other masks, and training goes on."""
    caffe.set_random_seed(5)
    a = caffe.SGDSolver(_solver(tmp_path))
    _feed(a)
    a.step(2)
    a.snapshot()
    state_file = a.snapshot_filename(".solverstate")
    state = read_solverstate(state_file)
    entry = next(s for s in state.layer_state if s.layer == "drop1")
    assert len(entry.rng_state) == torch.Generator().get_state().numel()      # written on the CPU
    entry.rng_state = _cuda_state(1234, 96)                                     # as a GPU run writes it
    cuda_file = tmp_path / "from_cuda.solverstate"
    cuda_file.write_bytes(state.SerializeToString())

    restored = []
    for seed in (7, 8):                     # two processes: different filler and generator seeds before restore
        caffe.set_random_seed(seed)
        b = caffe.SGDSolver(_solver(tmp_path))
        _feed(b)
        b.restore(cuda_file)
        restored.append(_masks(b))
        b.step(2)
        assert np.isfinite(b.net.params["fc1"][0].data).all() and b.iter == 4
    for x, y in zip(*restored):
        np.testing.assert_array_equal(x, y)
    assert {float(v) for m in restored[0] for v in np.unique(m)} == {0.0, 2.0}      # real masks, ratio 0.5

    entry.rng_state = _cuda_state(1234, 100)                                    # another point of the stream
    cuda_file.write_bytes(state.SerializeToString())
    caffe.set_random_seed(7)
    c = caffe.SGDSolver(_solver(tmp_path))
    c.restore(cuda_file)
    assert not all(np.array_equal(x, y) for x, y in zip(_masks(c), restored[0]))


def _solver_in(folder: Path, device: str):
    folder.mkdir(parents=True, exist_ok=True)
    return caffe.SGDSolver(_solver(folder), device=device)


@pytest.mark.gpu
def test_generator_states_cross_between_cpu_and_cuda(tmp_path):
    """A CPU snapshot restores on a GPU and a GPU snapshot on the CPU, each continuing reproducibly."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    states = {}
    for device in ("cpu", "cuda"):
        caffe.set_random_seed(5)
        s = _solver_in(tmp_path / device, device)
        _feed(s)
        s.step(2)
        s.snapshot()
        states[device] = s.snapshot_filename(".solverstate")
    for written, restored_on in (("cpu", "cuda"), ("cuda", "cpu")):
        masks = []
        for seed in (7, 8):
            caffe.set_random_seed(seed)
            b = _solver_in(tmp_path / f"{written}_to_{restored_on}_{seed}", restored_on)
            b.restore(states[written])
            masks.append(_masks(b))
            _feed(b)
            b.step(1)
            assert b.iter == 3 and np.isfinite(b.net.params["fc1"][0].data).all()
        for x, y in zip(*masks):
            np.testing.assert_array_equal(x, y)
