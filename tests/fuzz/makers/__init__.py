"""The layer makers: one function per generated type that adds a layer of it (with parameters inside Caffe's legal
ranges, tops shaped by Caffe's formulas) to a NetGen, or returns False when it cannot. A field outside those
ranges is the invalid-net generator's business (invalid.py)."""

from ...caffe_facts import NOT_IN_BUILD
from .common import make_bias_or_scale, make_embed, make_inner_product, make_mvn, make_normalize, make_parameter
from .data import (
                   make_data,
                   make_dummy_data,
                   make_hdf5_data,
                   make_hdf5_output,
                   make_image_data,
                   make_lstm_unit,
                   make_memory_data,
                   make_python,
                   make_recurrent,
)
from .loss import (
                   make_aam,
                   make_accuracy,
                   make_contrastive,
                   make_euclidean,
                   make_hinge,
                   make_infogain,
                   make_label_specific_add,
                   make_margin_ip,
                   make_multinomial,
                   make_sigmoid_ce,
                   make_softmax_loss,
)
from .neuron import (
                   _elu,
                   _exp,
                   _log,
                   _neuron,
                   _power,
                   _relu,
                   _sigmoid,
                   _tanh,
                   _threshold,
                   make_batchnorm,
                   make_dropout,
                   make_prelu,
                   make_softmax,
)
from .shape import (
                   make_argmax,
                   make_batch_reindex,
                   make_concat,
                   make_crop,
                   make_eltwise,
                   make_filter,
                   make_flatten,
                   make_reduction,
                   make_reshape,
                   make_silence,
                   make_slice,
                   make_split,
                   make_tile,
)
from .vision import make_conv, make_im2col, make_lrn, make_pooling, make_spp

LAYER_MAKERS = {
    "AbsVal": _neuron("AbsVal", in_place=False), "BNLL": _neuron("BNLL", in_place=False), "ELU": _neuron("ELU", _elu),
    "Exp": _neuron("Exp", _exp, out_kind="positive"),
    # BNLL and Log never in place: Caffe's backward reads the overwritten bottom (neuron-in-place-backward)
    "Log": _neuron("Log", _log, in_kinds=("positive", "prob"), in_place=False),
    "Power": _neuron("Power", _power),
    "ReLU": _neuron("ReLU", _relu), "PReLU": make_prelu,
    "Sigmoid": _neuron("Sigmoid", _sigmoid, out_kind="prob"), "TanH": _neuron("TanH", _tanh, out_kind="cos"),
    "Threshold": _neuron("Threshold", _threshold, out_kind="terminal"),
    "Dropout": make_dropout, "Softmax": make_softmax, "BatchNorm": make_batchnorm,
    "Bias": make_bias_or_scale("Bias"), "Scale": make_bias_or_scale("Scale"),
    "InnerProduct": make_inner_product, "Convolution": make_conv("Convolution"),
    "Deconvolution": make_conv("Deconvolution"), "Im2col": make_im2col, "Pooling": make_pooling, "SPP": make_spp,
    "LRN": make_lrn, "MVN": make_mvn, "Normalize": make_normalize, "Eltwise": make_eltwise,
    "Concat": make_concat, "Slice": make_slice, "Split": make_split, "Flatten": make_flatten,
    "Reshape": make_reshape, "Crop": make_crop, "Tile": make_tile, "Reduction": make_reduction,
    "ArgMax": make_argmax, "Accuracy": make_accuracy, "Embed": make_embed, "BatchReindex": make_batch_reindex,
    "Filter": make_filter, "Silence": make_silence, "Parameter": make_parameter,
    "SoftmaxWithLoss": make_softmax_loss, "EuclideanLoss": make_euclidean,
    "SigmoidCrossEntropyLoss": make_sigmoid_ce, "ContrastiveLoss": make_contrastive, "HingeLoss": make_hinge,
    "MultinomialLogisticLoss": make_multinomial, "InfogainLoss": make_infogain,
    "MarginInnerProduct": make_margin_ip, "LabelSpecificAdd": make_label_specific_add,
    "AdditiveAngularMargin": make_aam, "RNN": make_recurrent("RNN"), "LSTM": make_recurrent("LSTM"),
    "LSTMUnit": make_lstm_unit, "DummyData": make_dummy_data, "MemoryData": make_memory_data,
    "HDF5Data": make_hdf5_data, "ImageData": make_image_data, "Data": make_data, "Python": make_python,
    "HDF5Output": make_hdf5_output,
}
# Input is in every net (or its legacy spellings); the types the real build lacks are not generated.
GENERATED_TYPES = sorted(LAYER_MAKERS) + ["Input"]
SOURCE_TYPES = {"DummyData", "MemoryData", "HDF5Data", "ImageData", "Data"}
assert not set(LAYER_MAKERS) & set(NOT_IN_BUILD)
