"""Bad net prototxt: every error names the file, the line and the layer (never a deep traceback)."""

import pytest
import torch

import caffe_torch as caffe
from caffe_torch.prototxt import read_solver

HEAD = 'name: "n"\ninput: "data"\ninput_shape { dim: 2 dim: 3 }\n'


def build(tmp_path, body, name="bad.prototxt"):
    path = tmp_path / name
    path.write_text(HEAD + body)
    return str(path), lambda: caffe.Net(str(path), caffe.TRAIN, dtype=torch.float64)


def check(exc, path, line, layer):
    msg = str(exc.value)
    assert f"{path}:{line}" in msg, msg
    assert layer in msg, msg


def test_unknown_field(tmp_path):
    path, make = build(tmp_path, 'layer {\n  name: "fc"\n  type: "InnerProduct"\n  bottom: "data"\n'
                       '  top: "fc"\n'
                       '  inner_product_param { num_output: 2 wieght_filler { type: "xavier" } }\n}\n')
    with pytest.raises(caffe.PrototxtError) as exc:
        make()
    check(exc, path, 9, "'fc'")
    assert "wieght_filler" in str(exc.value)


def test_bad_enum_value_and_bad_number(tmp_path):
    path, make = build(tmp_path, 'layer {\n  name: "pool"\n  type: "Pooling"\n  bottom: "data"\n  top: "p"\n'
                       '  pooling_param {\n    pool: MEDIAN\n  }\n}\n')
    with pytest.raises(caffe.PrototxtError) as exc:
        make()
    check(exc, path, 10, "'pool'")
    assert "MEDIAN" in str(exc.value)
    path, make = build(tmp_path, 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
                       '  inner_product_param { num_output: -3 } }\n', name="neg.prototxt")
    with pytest.raises(caffe.PrototxtError) as exc:
        make()
    check(exc, path, 5, "'ip'")


def test_field_given_twice_is_an_error(tmp_path):
    path, make = build(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r"\n'
                       '  relu_param { negative_slope: 0.1 }\n  relu_param { negative_slope: 0.2 } }\n')
    with pytest.raises(caffe.PrototxtError) as exc:
        make()
    check(exc, path, 6, "'r'")


def test_unknown_layer_type_lists_known_types(tmp_path):
    path, make = build(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                       'layer {\n  name: "odd"\n  type: "Frobnicate"\n  bottom: "r"\n  top: "o"\n}\n')
    with pytest.raises(caffe.PrototxtError) as exc:
        make()
    check(exc, path, 5, "'odd'")
    msg = str(exc.value)
    assert "Frobnicate" in msg and "Convolution" in msg and "SoftmaxWithLoss" in msg


def test_missing_bottom(tmp_path):
    path, make = build(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                       'layer { name: "fc" type: "InnerProduct" bottom: "rr" top: "fc" '
                       'inner_product_param { num_output: 2 } }\n')
    with pytest.raises(caffe.LayerError) as exc:
        make()
    check(exc, path, 5, "'fc'")
    assert "'rr'" in str(exc.value)


def test_duplicate_layer_name(tmp_path):
    path, make = build(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                       'layer { name: "r" type: "ReLU" bottom: "r" top: "r2" }\n')
    with pytest.raises(caffe.PrototxtError) as exc:
        make()
    check(exc, path, 5, "'r'")


def test_bad_layer_parameters_name_the_layer(tmp_path):
    path, make = build(tmp_path, 'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
                       '  convolution_param { num_output: 2 kernel_size: 3 } }\n')
    with pytest.raises(caffe.LayerError) as exc:      # a 2-D bottom for a convolution
        make()
    check(exc, path, 4, "'c'")
    path, make = build(tmp_path, 'layer { name: "s" type: "Softmax" bottom: "data" bottom: "data" '
                       'top: "s" }\n',
                       name="two.prototxt")
    with pytest.raises(caffe.LayerError) as exc:
        make()
    check(exc, path, 4, "'s'")


def test_legacy_v1_layers_in_a_net_definition_are_refused(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text(HEAD + 'layers { name: "r" type: RELU bottom: "data" top: "r" }\n')
    with pytest.raises(caffe.PrototxtError, match="V1"):
        caffe.Net(str(path), caffe.TRAIN)


def test_missing_file_and_solver_errors(tmp_path):
    with pytest.raises(caffe.PrototxtError, match="no such"):
        caffe.Net(str(tmp_path / "nope.prototxt"), caffe.TRAIN)
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.1\nlr_policy: "step"\nmomentum: fast\n')
    with pytest.raises(caffe.PrototxtError, match=f"{path}:3"):
        read_solver(path)
