"""What the comparisons with the real Caffe build share: the tolerance, the input kinds, valid random params, and
the one documented list of the real build's own bugs and gaps (QUIRKS) that the conformance tests mark xfail and
the differential fuzzer (tests/fuzz/) reads to explain a divergence.

Tolerance (RTOL = 1e-5, float32 in both engines): for every array compared,
    max|caffe_torch - Caffe| <= RTOL * max|Caffe|
an inf-norm relative error; an array that is all zero in Caffe must be all zero in caffe_torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RTOL = 1e-5


def rel_err(a, b) -> float:
    """max|a - b| / max|b| (0 if equal, inf if b is all zero and a is not; NaNs must sit in the same places, and
    infinities must be equal). Computed in the arrays' own precision (float32 here; the few-ulp error of that is
    far below RTOL)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or not np.issubdtype(a.dtype, np.floating):
        a, b = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if nan_a.any() or nan_b.any():
        if not np.array_equal(nan_a, nan_b):
            return float("inf")
        a, b = a[~nan_b], b[~nan_b]
    inf_a, inf_b = np.isinf(a), np.isinf(b)
    if inf_a.any() or inf_b.any():
        if not np.array_equal(a[inf_a | inf_b], b[inf_a | inf_b]):
            return float("inf")
        a, b = a[~(inf_a | inf_b)], b[~(inf_a | inf_b)]
    if a.size == 0:
        return 0.0
    diff = float(np.abs(a - b).max())
    if diff == 0:
        return 0.0
    scale = float(np.abs(b).max())
    return diff / scale if scale > 0 else float("inf")


# ------------------------------------------------------------------------------------------------ inputs
def make_array(kind: str, shape, rng: np.random.Generator) -> np.ndarray:
    """A float32 input of `shape`:
    "normal"; "zeros" (normal with a quarter exact zeros); "int" (integers in [-2, 2]: ties); "positive"
    (uniform in [0.5, 2): for Log and fractional Power); "prob" (uniform in [0, 1), every fifth exactly 0);
    "cos" (uniform in (-0.99, 0.99)); "label:C" (class ids in [0, C)); "label:C:ignore" (a third of them -1);
    "binary1" (0 or 1, the first 1: a Filter selector that keeps something); "cont" (sequence continuation
    markers, 0 or 1 with the first time step 0)."""
    parts = kind.split(":")
    if parts[0] == "label":
        v = rng.integers(0, int(parts[1]), size=shape).astype(np.float32)
        if len(parts) > 2:
            v.reshape(-1)[::3] = -1
    elif kind == "int":
        v = rng.integers(-2, 3, size=shape).astype(np.float32)
    elif kind == "prob":
        v = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
        v.reshape(-1)[::5] = 0
    elif kind == "positive":
        v = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    elif kind == "cos":
        v = rng.uniform(-0.99, 0.99, size=shape).astype(np.float32)
    elif kind == "binary1":
        v = rng.integers(0, 2, size=shape).astype(np.float32)
        v.reshape(-1)[0] = 1
    elif kind == "cont":
        v = rng.integers(0, 2, size=shape).astype(np.float32)
        v[0] = 0
    else:
        v = rng.standard_normal(shape).astype(np.float32)
        if kind == "zeros":
            v.reshape(-1)[::4] = 0
    return v


def random_param(layer_type: str, index: int, shape, rng: np.random.Generator, bn_scale: float) -> np.ndarray:
    """Values for learnable blob `index` of a layer: N(0, 1), except BatchNorm's statistics (mean, variance > 0,
    scale factor), which must be a valid state: mean ~ N(0, 1) * s, variance in [0.5, 2) * s, factor s (so the
    normalised statistics are mean / s, variance / s). `bn_scale` is s (the same for a layer's three blobs)."""
    if layer_type == "BatchNorm":
        if index == 0:
            return (rng.standard_normal(shape) * bn_scale).astype(np.float32)
        if index == 1:
            return (rng.uniform(0.5, 2.0, size=shape) * bn_scale).astype(np.float32)
        return np.full(shape, bn_scale, np.float32)
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------ the build
# Registered caffe_torch types the real build lacks: they came after Caffe 1.0 (NumPy references only, in
# tests/test_layers_neuron.py).
NOT_IN_BUILD = {
    "Clip": "after Caffe 1.0 (BVLC PR #6389), not in the build",
    "Swish": "after Caffe 1.0 (BVLC PR #6002), not in the build",
}


@dataclass(frozen=True)
class Quirk:
    """A difference between the real build and Caffe's documented semantics (which caffe_torch follows), or
    something the build cannot run. `where`: what it concerns, as the fuzzer's classifier matches it."""

    id: str
    reason: str


QUIRKS = {q.id: q for q in [
    Quirk("lrn-in-place", "known BVLC quirk, not reproduced: Caffe's LRN does not support running in place "
          "(ACROSS_CHANNELS writes scale^-beta into the top, which is the bottom, then multiplies the top by the "
          "bottom, giving x-independent scale^-2beta), yet accepts a prototxt that asks for it; caffe_torch "
          "computes LRN in place correctly"),
    Quirk("scale-whole-bottom-diff", "known BVLC quirk, not reproduced: when its learned scale has as many "
          "values as the bottom, Caffe's ScaleLayer::Backward writes the scale diff instead of adding to it "
          "(caffe_mul into the diff, scale_layer.cpp), so a second backward (iter_size > 1) drops the first "
          "one's gradient; caffe_torch accumulates as caffe.md's step() and every other layer do"),
    Quirk("scale-leading-axes-diff", "known BVLC quirk, not reproduced: when its learned scale spans the bottom's "
          "leading axes (outer_dim_ 1: axis 0) with more than one value, Caffe's ScaleLayer::Backward sums the scale "
          "diff by caffe_cpu_gemv with beta 0 straight into the diff (scale_layer.cpp), writing it instead of adding "
          "to it: a second backward, a sharer's or an iter_size > 1 step's gradient is dropped; caffe_torch "
          "accumulates"),
    Quirk("batchnorm-stats-trained", "known bug of this build (brocolli-caffe 9.0.2): Caffe 1.0's "
          "BatchNormLayer::LayerSetUp gives its three statistics blobs lr_mult 0 (caffe_torch does the same), "
          "and Caffe 1.0's UpgradeNetBatchNorm drops the `param { lr_mult: 0 }` x3 that older prototxts carry "
          "because of that; this build has the upgrade but an older BatchNormLayer without the masking, so with "
          "or without those specs its solver applies weight decay and momentum to the running mean, variance "
          "and scale factor"),
    Quirk("mvn-in-place-variance", "known BVLC quirk, not reproduced: MVN with normalize_variance in place "
          "back-propagates from the overwritten bottom (mvn_layer.cpp reads bottom_data = top_data), a wrong "
          "gradient; caffe_torch's is the derivative"),
    Quirk("stochastic-pooling-cpu", "Caffe has no CPU implementation of STOCHASTIC pooling (NOT_IMPLEMENTED "
          "in Forward_cpu); the build is CPU-only"),
    Quirk("engine-cudnn", "this build is CPU-only: its layer factory aborts on engine: CUDNN (\"unknown "
          "engine\"); caffe_torch runs any engine field with its own kernels, as a cuDNN build of Caffe runs it"),
    Quirk("softmax-loss-two-tops", "BVLC Caffe cannot build SoftmaxWithLoss with its second (probability) "
          "top (issue #2968, never fixed in 1.0); caffe_torch builds it"),
    Quirk("sigmoid-ce-ignore-normalization", "this build's SigmoidCrossEntropyLoss predates Caffe 1.0's and "
          "ignores loss_param ignore_label / normalization; caffe_torch follows Caffe 1.0"),
    Quirk("sigmoid-ce-legacy-num", "this build's (pre-1.0) SigmoidCrossEntropyLoss divides by bottom[0]->num(), a "
          "legacy accessor that aborts on a bottom of more than 4 axes (forward and backward); Caffe 1.0 divides by "
          "its normaliser (shape(0) for BATCH_SIZE), as caffe_torch does"),
    Quirk("margin-exact-gradient", "margin_inner_product_param exact_gradient is a caffe_torch extension the "
          "C++ build refuses on purpose (tests/test_caffe_build.py)"),
    Quirk("pycaffe-scalar-kwargs", "real pycaffe's net.backward(**diffs) and net.forward(**blobs) check the batch "
          "size as array.shape[0], an IndexError for a 0-axis blob (a loss top); caffe_torch takes them"),
    Quirk("python-layer-without-setup", "real pycaffe's caffe.Layer has no setup/reshape/forward/backward of its "
          "own: a Python layer that does not define one recurses until RecursionError; caffe_torch's base class "
          "has empty ones"),
    Quirk("eltwise-in-place", "BVLC bug, not reproduced: Eltwise SUM and MAX computed in place (top = bottom 0) "
          "clear the top (0, or -FLT_MAX) before reading bottom 0, so bottom 0 counts as 0 (SUM) or is lost "
          "(MAX); caffe_torch computes the operation on the bottoms as given"),
    Quirk("shared-blob-memory", "Caffe's memory sharing, not reproduced: the tops of Split, Flatten, Reshape, "
          "Parameter, one-bottom Concat and one-top Slice share their bottom's (or param's) data, and those of "
          "Reshape, Concat, Slice and Parameter its diff as well (the data layers' tops point into the batch buffers; "
          "an LSTM over one time step exposes its output's memory as h_T). "
          "So a layer computing in place on such a top rewrites the bottom, the sibling tops or the data source; a "
          "loss weight on such a top (Caffe writes it into the top's diff) shows in the bottom's or the param's diff; "
          "a diff written into a Parameter top is the param's diff (and so is the diff of a Reshape, one-bottom Concat "
          "or one-top Slice of that top, which a solver step's update shows); a layer computing in place on the bottom "
          "writes its own bottom's diff into that memory in its backward, which the top's diff then shows (a Reshape "
          "of a BatchNorm in place), and so does a Scale's scratch (scale-scratch-diff); one a reader's backward "
          "writes into the diff-sharing top of a layer with propagate_down false (whose own backward does not run) is "
          "its bottom's, which the layers upstream back-propagate "
          "(a Parameter top's loss weight, lost at the first forward: parameter-top-diff). caffe_torch's "
          "tops are separate blobs that views of the bottom feed; their data is the bottom's memory from set-up on "
          "where Caffe's is (the Reshape of Reshape, one-bottom Concat and one-top Slice, run by Net::Init, calls "
          "ShareData; Split and Flatten share only in their Forward), on the CPU"),
    Quirk("backward-reads-overwritten-top", "BVLC bug, not reproduced: the Backward_cpu of TanH, Sigmoid, Exp, "
          "ELU, Softmax, Normalize, LSTMUnit (its tops C and H), ACROSS_CHANNELS LRN, Power (power not 0, 1 or 2, "
          "scale nonzero), MVN with "
          "normalize_variance and Eltwise PROD without stable_prod_grad reads its top's data (tanh_layer.cpp: "
          "top[0]->cpu_data()), and computing in place ReLU, AbsVal, BNLL, Log and Power (power not 0 or 1, scale "
          "nonzero) read their bottom's, the same blob; where a later layer computes in place on that top, the blob "
          "holds that layer's output when the backward runs, so the gradient is taken at the wrong values (TanH "
          "under an in-place Sigmoid back-propagates 1 - sigmoid(tanh(x))^2 for 1 - tanh(x)^2); so do a RNN's and "
          "a LSTM's exposed hidden state, whose top shares the unrolled net's h_T (RNN: read by its TanH) or c_T "
          "(LSTM: read by the last LSTMUnit) data (RecurrentLayer::Forward_cpu: top[i]->ShareData(...)), and a RNN's "
          "output over one time step, the one-bottom Concat of o_1, which shares o_1's data (ConcatLayer::Reshape: "
          "ShareData) that o_1's TanH reads; "
          "caffe_torch's is the derivative at the layer's own output"),
    Quirk("in-place-loss-weight", "a loss weight on a top computed in place: Caffe writes the weight into the "
          "blob's diff once, when the net is built, and the layer's in-place backward overwrites that diff with "
          "the bottom's, so every later backward seeds the loss with the last bottom diff instead of the weight; "
          "caffe_torch seeds it with the weight each time"),
    Quirk("neuron-in-place-backward", "BVLC bug, not reproduced: computed in place, BNLL, Log and ReLU with a "
          "negative negative_slope back-propagate from their bottom's data, which the top has overwritten, so their "
          "gradient is that of the wrong input; Power with power and scale both nonzero (any power, 1 too) writes "
          "dy/dx into the bottom's diff, which in place is the top's, before multiplying it by the top's diff "
          "(power_layer.cpp: caffe_set / caffe_div ... then caffe_mul(top_diff, bottom_diff)), so it gets "
          "dy/dx squared; caffe_torch's is the derivative at the input times the top's diff"),
    Quirk("ignores-propagate-down", "BVLC bug, not reproduced: the Backward of BatchNorm, Softmax, MVN, Im2col and "
          "Flatten writes the bottom's diff even where propagate_down is false (when the layer's backward runs "
          "at all), and so do RNN and LSTM to their input x and static input (recurrent_layer.cpp back-propagates "
          "the unrolled net, whose x_transform has propagate_down: true); with their params these run backward "
          "also over a data or input blob that Net::Init gives no diff (or any blob no backward reaches from below: "
          "a BatchNorm in place on it leaves its diff the BatchNorm's bottom diff, where caffe_torch's is the "
          "top's); caffe_torch gives such a bottom no diff"),
    Quirk("implicit-loss-top-read", "a loss layer's top with its default loss weight (no loss_weight field) that "
          "another layer reads: Caffe's InsertSplits inserts no Split for an implicit weight, so the reader's "
          "backward overwrites the diff that held the weight and the loss layer scales its gradient by that "
          "instead; caffe_torch adds the reader's gradient to the loss's"),
    Quirk("pooling-empty-window", "BVLC bug, not reproduced: without padding Caffe's pooled size (ceil) is not "
          "clipped, so with a stride larger than the kernel the last window can start past the bottom; MAX then "
          "gives -FLT_MAX with mask -1 and its backward adds the gradient at index -1 (heap corruption), AVE "
          "divides by a window of size 0"),
    Quirk("flatten-backward-shares-diff", "BVLC bug, not reproduced: FlattenLayer::Backward_cpu makes its bottom's "
          "diff its top's (bottom[0]->ShareDiff(*top[0]), flatten_layer.cpp) instead of copying; where that "
          "bottom's diff was shared when it was made (the top of a one-bottom Concat, one-top Slice, Reshape or "
          "Parameter, a RNN's or LSTM's output: ShareDiff in their Reshape), the blob, param or unrolled net it was "
          "shared with never gets the gradient, nor does anything upstream (an InnerProduct under Reshape + Flatten "
          "never learns), and the next forward, whose Reshape shares that diff again, gives the bottom the other's "
          "diff back in place of the gradient; layers computing in place on that bottom back-propagate in the top's "
          "diff, which then "
          "holds their bottom's (and, as a loss top or an output, seeds the solver's next backward with it); "
          "caffe_torch back-propagates through Flatten as through any reshape"),
    Quirk("relu-minus-inf", "Caffe's CPU ReLU computes max(x, 0) + negative_slope * min(x, 0) (relu_layer.cpp), "
          "NaN for x = -inf with negative_slope 0 (0 * -inf), and the NaN spreads from there; caffe_torch gives 0, "
          "as the cuDNN engine does (cudnnActivationForward, Caffe's default ReLU engine in a cuDNN build: "
          "layer_factory.cpp GetReLULayer)"),
    Quirk("blas-scal-zero", "this build's BLAS (OpenBLAS 0.3.21, Debian 12's) writes zeros for ?scal with alpha 0 "
          "without reading the vector, so 0 * NaN and 0 * inf give 0 (the reference BLAS, and OpenBLAS from 0.3.27 "
          "on, give NaN): an Exp whose inner scale ln(base) * scale is 0 (scale 0, or base 1) computes "
          "caffe_cpu_scale(0, x) = 0 and exp(0) = 1 for a NaN or infinite input (exp_layer.cpp), a Log with scale 0 "
          "log(shift) (log_layer.cpp caffe_scal), finite values that then go wherever that top goes; caffe_torch's "
          "y = base^(shift + scale x) is NaN there, as 0 * NaN is. So do ?axpby with beta 0 (y not read) and the "
          "solvers built on them: SGD's and Nesterov's history update with momentum 0 (sgd_solver.cpp, "
          "nesterov_solver.cpp caffe_cpu_axpby(..., momentum, history)) forgets an infinite or NaN history, and "
          "clip_gradients scales the diffs by clip / norm = 0 for an infinite norm (scale_diff); caffe_torch's "
          "momentum * history and scaled diffs are NaN there"),
    Quirk("hinge-scratch-diff", "HingeLoss computes its forward in its bottom's diff (caffe_copy into "
          "bottom[0]->mutable_cpu_diff(), hinge_loss_layer.cpp), so after a forward that diff holds the margins "
          "until a backward overwrites it; where the HingeLoss's own backward does not run (loss weight 0) or skips "
          "it (propagate_down false), the backward reading that diff (a Split's sums its tops' diffs, "
          "split_layer.cpp) back-propagates the margins upstream; the margins also show in every blob sharing that "
          "diff memory (a Reshape's or one-bottom Concat's bottom: ShareDiff) and, under a Parameter, in its param's "
          "diff; caffe_torch leaves the diff alone"),
    Quirk("scale-scratch-diff", "ScaleLayer::Backward computes the scale's gradient in its bottom 0's diff (the "
          "\"hack\" of scale_layer.cpp: the eltwise product top_diff * bottom_data stored there), also where "
          "propagate_down is false for that bottom (or it is a data or input blob Net::Init gives no diff), which is "
          "then left holding it; caffe_torch gives it no diff"),
    Quirk("stale-view", "pycaffe use-after-free, not reproduced: a .data view of a Flatten, Split or Parameter "
          "top (or of a MemoryData / Data / ImageData top, or of a RNN's or LSTM's exposed hidden-state top) "
          "taken before a forward points at memory that the forward replaces (ShareData / set_cpu_data) and "
          "frees, and so does a .diff view of a Flatten's bottom across a backward; reading it gives garbage, "
          "writing it corrupts the heap. caffe_torch's views follow the blob"),
    Quirk("data-layer-two-nets", "this build's DataReader aborts (\"new_queue_pairs_.size() == 0\") when a "
          "solver's train and test nets both have a Data layer; caffe_torch runs them"),
    Quirk("dropout-ratio-unchecked", "DropoutLayer checks 0 < dropout_ratio < 1 only with DCHECK "
          "(dropout_layer.cpp), which a Release build leaves out: a ratio of 1 then scales by 1 / (1 - 1) = inf; "
          "caffe_torch refuses a ratio outside [0, 1) when the net is built"),
    Quirk("scale-shape-unchecked", "ScaleLayer::Reshape has its per-axis shape check commented out "
          "(scale_layer.cpp; BiasLayer keeps it): a second bottom whose shape differs from bottom[0]'s from the "
          "axis on passes, and the layer scales by the wrong values (reading past that blob where it is smaller); "
          "caffe_torch refuses it, with the shapes, where its shape changes (a Filter above) or at set-up"),
    Quirk("empty-output", "Caffe builds a Convolution, Deconvolution or Pooling whose output size comes out 0 on "
          "an axis (integer division: conv_layer.cpp, pooling_layer.cpp) with an empty top, and runs on with it; "
          "caffe_torch refuses such a net when it is built, naming the layer and the sizes"),
    Quirk("set-up-only-check", "Caffe checks ArgMax's top_k against the axis size and a RNN's or LSTM's "
          "x_static batch in LayerSetUp only (argmax_layer.cpp, recurrent_layer.cpp): when a Filter above changes "
          "that shape at run time, its Reshape passes and the layer reads past its bottom; caffe_torch repeats "
          "the check at every shape change and refuses"),
    Quirk("iter-size-zero", "Caffe accepts iter_size: 0, then divides the (zero) diffs by it and every weight "
          "turns NaN at the first step; caffe_torch refuses it when the solver is built"),
    Quirk("in-place-reshape", "Caffe lets a layer computing in place give its top another shape (MVN's 4-D top on "
          "a 2-D bottom, ...): Blob::Reshape then reshapes the bottom blob itself at set-up, so every earlier "
          "reader of that blob sees the new shape from the next forward on (a Slice aborts); caffe_torch refuses "
          "such a net at construction, naming the layer and the top (give the top another name)"),
    Quirk("parameter-top-diff", "BVLC bug, not reproduced: ParameterLayer::Forward_cpu makes its top's diff the "
          "param's (top[0]->ShareDiff(*blobs_[0]), parameter_layer.hpp). So a loss_weight on that top is lost at the "
          "first forward (Layer::SetLossWeights wrote the weight into the top's own diff, which the ShareDiff "
          "replaces; Layer::Forward then dots the top with the param's diff) and the param never learns from it; "
          "and the layer reading the top (a Split where it has several readers: split_layer.cpp caffe_copy / "
          "caffe_add) writes the param's diff in its backward instead of adding to it, so over iter_size > 1 passes "
          "(or two net.backward() calls) only the last pass's gradient is kept. caffe_torch gives the param the "
          "loss weight's gradient and accumulates its diff (caffe.md: any top can carry a loss_weight; step() "
          "accumulates the iter_size passes' diffs)"),
    Quirk("scale-min-max", "happynear's Scale min_value / max_value: the build's ScaleParameter lacks them"),
]}
