"""One label range check for SoftmaxWithLoss, Accuracy and the fork layers (caffe_torch/layers/loss.py
check_label_range): the same message naming the first bad label, ignore_label respected."""

import pytest
import torch
from test_layers_loss import make

import caffe_torch as caffe


@pytest.mark.parametrize("layer_type", ["SoftmaxWithLoss", "Accuracy"])
def test_first_bad_label_is_named_and_ignored_labels_are_not_checked(layer_type):
    x = torch.randn(4, 3, dtype=torch.float64)
    field = "loss_param" if layer_type == "SoftmaxWithLoss" else "accuracy_param"
    layer = make(layer_type, f"{field} {{ ignore_label: 9 }}", [x.shape, (4,)])
    with pytest.raises(caffe.LayerError, match=r"label 7 out of range \[0, 3\)"):
        layer(x, torch.tensor([0.0, 7.0, -1.0, 2.0], dtype=torch.float64))
    with pytest.raises(caffe.LayerError, match=r"label -1 out of range \[0, 3\)"):
        layer(x, torch.tensor([0.0, 9.0, -1.0, 2.0], dtype=torch.float64))
    layer(x, torch.tensor([0.0, 9.0, 1.0, 2.0], dtype=torch.float64))      # 9 is ignored: fine


def test_label_specific_add_uses_the_same_check():
    x = torch.randn(2, 3, dtype=torch.float64)
    layer = make("LabelSpecificAdd", "label_specific_add_param { bias: -1 }", [x.shape, (2,)])
    with pytest.raises(caffe.LayerError, match=r"label 3 out of range \[0, 3\)"):
        layer(x, torch.tensor([1.0, 3.0], dtype=torch.float64))
