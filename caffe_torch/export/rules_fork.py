"""Export rules of the fork layers, at their TEST-time forward (see caffe_torch/layers/margin.py):

- MarginInnerProduct: the margin applies at TEST too (the label is an input). Its lambda follows a counter that
  the fork advances at every forward; the export fixes lambda at the value the NEXT forward of the net would use
  (counter + 1), and uses the weights renormalised as that forward does. A net run once agrees with the
  exported graph; later forwards of Caffe's net use later lambdas (the TEST nets of this project use an
  InnerProduct instead).
- Normalize: x / sqrt(sum_c x^2 + 1e-6) (L2) or x / (sum_c |x| + 1e-6) (L1) per item and position.
- LabelSpecificAdd, AdditiveAngularMargin: identity at TEST (their optional bias top: 0).
InnerProduct's `normalize: true` is in rules_common.py.
"""

import torch

from ..layers.margin import DOUBLE, SINGLE, TRIPLE, _margin_logits, normalize_rows_
from ..proto import caffe_pb2
from .registry import LayerExport, TorchForward, onnx_rule, torch_rule

_TO_INT64 = 7


def margin_weight(layer) -> torch.Tensor:
    w = layer.blobs[0].detach().clone()
    return normalize_rows_(w)          # the fork: w_j / ||w_j||, no epsilon


def next_lambda(layer) -> float:
    return layer.lambda_at(layer.get_state() + 1)


def _psi(e: LayerExport, c: str, mtype: int) -> str:
    """The fork's psi(cos) with its sign terms (see margin._signs_and_psi)."""
    def k(v, what):
        return e.const(float(v), what)

    def mul(*xs):
        y = xs[0]
        for x in xs[1:]:
            y = e.op("Mul", [y, x])
        return y

    s0 = e.op("Sign", [c])
    c2 = mul(c, c)
    if mtype == DOUBLE:
        return e.op("Sub", [mul(k(2, "two"), s0, c2), k(1, "one")])
    if mtype == TRIPLE:
        s1 = e.op("Sign", [e.op("Sub", [e.op("Abs", [c]), k(0.5, "half")])])
        s2 = e.op("Sub", [mul(s0, e.op("Add", [k(1, "one"), s1])), k(2, "two")])
        cubic = e.op("Sub", [mul(k(4, "four"), c2, c), mul(k(3, "three"), c)])
        return e.op("Add", [mul(s1, cubic), s2])
    s3 = mul(s0, e.op("Sign", [e.op("Sub", [mul(k(2, "two"), c2), k(1, "one")])]))
    s4 = e.op("Sub", [e.op("Add", [mul(k(2, "two"), s0), s3]), k(3, "three")])
    quartic = e.op("Add", [e.op("Sub", [mul(k(8, "eight"), c2, c2), mul(k(8, "eight"), c2)]), k(1, "one")])
    return e.op("Add", [mul(s3, quartic), s4])


@onnx_rule("MarginInnerProduct")
def margin_inner_product(e: LayerExport) -> list[str]:
    """A-Softmax's logits with lambda fixed at the next forward's value; the label is an input."""
    layer = e.layer
    lam = next_lambda(layer)
    w = margin_weight(layer).numpy()
    k = w.shape[1]
    x2 = e.g.reshape(e.x[0], [-1, k], e.n("flatten"))
    single = layer.mtype == SINGLE
    xw = e.op("MatMul", [x2, e.const(w.T, "weight_t")], None)
    if not single:
        lab = e.op("Cast", [e.g.reshape(e.x[1], [-1, 1], e.n("label"))], to=_TO_INT64)
        classes = e.g.const(torch.arange(layer.num_output).reshape(1, -1).numpy(), e.n("classes"),
                            dtype="int64")
        mask = e.op("Equal", [lab, classes])                                      # (M, N): the target
        x_norm = e.op("Sqrt", [e.g.reduce("ReduceSumSquare", x2, [1], e.n("x_norm_sq"))])
        picked = e.g.reduce("ReduceSum", e.op("Where", [mask, xw, e.const(0.0, "zero")]), [1], e.n("target_xw"))
        c = e.op("Mul", [picked, e.op("Reciprocal", [x_norm])])
        target = e.op("Mul", [x_norm, _psi(e, c, layer.mtype)])
        top = e.op("Where", [mask, target, xw])
        top = e.op("Add", [top, e.op("Mul", [xw, e.const(lam, "lambda")])])
        xw = e.op("Mul", [top, e.const(1.0 / (1.0 + lam), "one_over_1_plus_lambda")])
    tops = [e.reshape(xw)]
    if len(e.tops) > 1:
        tops.append(e.const([lam], "lambda_top"))
    return tops


@torch_rule("MarginInnerProduct")
def margin_inner_product_torch(e: LayerExport) -> TorchForward:
    layer = e.layer
    lam = next_lambda(layer)
    target = e.static_target()
    two = len(e.tops) > 1

    def forward(m, x, label):
        x2 = x.reshape(-1, m.weight.shape[1])
        top = _margin_logits(x2, m.weight, label.reshape(-1).long(), lam, layer.mtype)[0].reshape(target)
        return (top, torch.full((1,), lam, dtype=x.dtype)) if two else top

    return TorchForward(forward, weight=margin_weight(layer))


@onnx_rule("Normalize")
def normalize(e: LayerExport) -> list[str]:
    """L2 / L1 normalisation over channels with the fork's 1e-6; the tops 4-D as in the fork."""
    n, c, h, w = e.layer._legacy_shape(e.in_shapes[0])
    x3 = e.g.reshape(e.x[0], [0, c, h * w], e.n("items"))
    if e.layer.normalize_type == "L2":
        sq = e.g.reduce("ReduceSumSquare", x3, [1], e.n("sum_sq"))
        norm = e.op("Sqrt", [e.op("Add", [sq, e.const(1e-6, "eps")])])
    else:
        norm = e.op("Add", [e.g.reduce("ReduceL1", x3, [1], e.n("sum_abs")), e.const(1e-6, "eps")])
    tops = [e.reshape(e.op("Div", [x3, norm]), 0)]
    if len(e.tops) > 1:
        tops.append(e.reshape(norm, 1))
    return tops


@onnx_rule("LabelSpecificAdd", "AdditiveAngularMargin")
def test_identity(e: LayerExport) -> list[str]:
    """Identity at TEST (the margin is a TRAIN-time change of the target logit); a bias top is 0."""
    if e.layer.phase != caffe_pb2.TEST:
        raise e.refuse("the TRAIN-phase margin changes the target class's logit during training; export the "
                       "TEST phase")
    tops = [e.x[0]]
    if len(e.tops) > 1:
        tops.append(e.const([0.0], "bias_top"))
    return tops
