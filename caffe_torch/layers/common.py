"""Input, InnerProduct, Eltwise, Scale, Bias, BatchNorm, Dropout, Split, Silence."""

import hashlib

import torch

from ..proto import caffe_pb2
from .base import Layer, canonical_axis, count, register


@register("Input")
class Input(Layer):
    """A source: its tops are the net's input blobs, which the net fills (`net.blobs[...]`)."""

    num_bottoms = (0, 0)
    num_tops = (1, None)
    is_source = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        shapes = [tuple(int(d) for d in s.dim) for s in param.input_param.shape]
        n_top = len(param.top)
        if len(shapes) not in (1, n_top):
            raise self.error(f"input_param needs 1 or {n_top} shape(s) for {n_top} top(s), got {len(shapes)}")
        self.shapes = shapes * n_top if len(shapes) == 1 else shapes

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def forward(self):
        raise RuntimeError("Input layers are filled by the net, not run")


@register("InnerProduct")
class InnerProduct(Layer):
    """y = x W^T + b over the axes from `axis` on (flattened). With the happynear fork's `normalize: true`
    each weight row is rescaled in place before use, w_n /= sqrt(||w_n||^2 + 1e-6); the backward is then
    the plain inner-product backward with the normalised W (no projection through the normalisation)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.inner_product_param
        if not ip.HasField("num_output") or ip.num_output == 0:
            raise self.error("inner_product_param.num_output must be set")
        self.num_output = ip.num_output
        self.axis = canonical_axis(ip.axis, len(bottom_shapes[0]), self)     # default 1
        self.transpose = ip.transpose                                          # default false
        self.normalize = ip.normalize                                          # fork; default false
        k = count(bottom_shapes[0], self.axis)
        self.k = k
        self.add_blob((k, self.num_output) if self.transpose else (self.num_output, k), ip.weight_filler)
        self.bias_term = ip.bias_term                                          # default true
        if self.bias_term:
            self.add_blob((self.num_output,), ip.bias_filler)

    def top_shapes(self, bottom_shapes):
        k = count(bottom_shapes[0], self.axis)
        if k != self.k:
            raise self.error(f"input size incompatible with inner product parameters: bottom "
                             f"{tuple(bottom_shapes[0])} has {k} values from axis {self.axis}, the weights "
                             f"expect {self.k}")
        return [tuple(bottom_shapes[0][: self.axis]) + (self.num_output,)]

    def forward(self, x):
        w = self.blobs[0]
        if self.normalize and not self.rerun:       # once per forward, as the fork's Forward does
            # the fork rescales num_output contiguous runs of K values of the blob (also with transpose)
            from .margin import normalize_rows_
            normalize_rows_(w, 1e-6, rows=self.num_output)
        # (outer, K) @ (K, num_output), then + bias (Caffe's two gemms); no reshape where the shapes are already
        # those (fewer ops per step on a GPU)
        flat = x if x.dim() == 2 and self.axis == 1 else x.reshape(count(x.shape, 0, self.axis), -1)
        y = flat @ w if self.transpose else flat @ w.t()
        if self.bias_term:
            y = y + self.blobs[1]
        shape = tuple(x.shape[: self.axis]) + (self.num_output,)
        return y if y.shape == shape else y.reshape(shape)


_Elt = caffe_pb2.EltwiseParameter


@register("Eltwise")
class Eltwise(Layer):
    num_bottoms = (2, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ep = param.eltwise_param
        self.op = ep.operation                                    # default SUM
        self.stable_prod_grad = ep.stable_prod_grad               # default true
        self.coeff = list(ep.coeff)
        if self.coeff and self.op != _Elt.SUM:
            raise self.error("coeff is only for operation SUM")
        if self.coeff and len(self.coeff) != len(bottom_shapes):
            raise self.error(f"needs one coeff per bottom ({len(bottom_shapes)}), got {len(self.coeff)}")
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        # the build's EltwiseLayer::Reshape has BVLC's shape CHECK commented out: the top takes bottom 0's shape
        # and every bottom is read as count(bottom 0) flat values, so bottoms of other shapes but as many values
        # are legal; with another count Caffe would read past the end of a smaller bottom, refused here
        n = count(bottom_shapes[0])
        for i, s in enumerate(bottom_shapes[1:], start=1):
            if count(s) != n:
                raise self.error(f"bottom {i} has shape {tuple(s)} ({count(s)} values), bottom 0 "
                                 f"{tuple(bottom_shapes[0])} ({n}): all bottoms must have as many values")
        return [tuple(bottom_shapes[0])]

    def forward(self, *xs):
        xs = [xs[0]] + [x if x.shape == xs[0].shape else x.reshape(xs[0].shape) for x in xs[1:]]
        if self.op == _Elt.SUM:
            coeff = self.coeff or [1.0] * len(xs)
            y = xs[0] * coeff[0] if coeff[0] != 1 else xs[0]
            for c, x in zip(coeff[1:], xs[1:]):
                y = y + (x * c if c != 1 else x)
            return y
        if self.op == _Elt.PROD and not self.stable_prod_grad and torch.is_grad_enabled() and \
                any(x.requires_grad for x in xs):
            return _QuotientGradProd.apply(*xs)
        if self.op == _Elt.PROD:
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        # MAX: the gradient goes to the bottom Caffe's scan picks: bottom 1 unless bottom 0 is strictly
        # larger, then a later bottom only where it is strictly larger than the running maximum
        with torch.no_grad():
            best = torch.maximum(xs[0], xs[1])
            idx = (xs[0] <= xs[1]).long()
            for j, x in enumerate(xs[2:], start=2):
                larger = x > best
                idx = torch.where(larger, torch.full_like(idx, j), idx)
                best = torch.where(larger, x, best)
        return torch.stack(xs).gather(0, idx.unsqueeze(0)).squeeze(0)


class _QuotientGradProd(torch.autograd.Function):
    """Eltwise PROD with stable_prod_grad: false: Caffe's backward gives bottom i the diff (top / bottom_i) *
    top_diff (caffe_div, then caffe_mul: eltwise_layer.cpp), NaN or inf where bottom_i is 0."""

    @staticmethod
    def forward(ctx, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        ctx.save_for_backward(y, *xs)
        return y

    @staticmethod
    def backward(ctx, g):
        y, *xs = ctx.saved_tensors
        return tuple(y / x * g if need else None for x, need in zip(xs, ctx.needs_input_grad))


def _broadcast_shape(x_ndim: int, axis: int, param_shape) -> tuple[int, ...]:
    """Shape that lines a (per-channel, ...) blob of `param_shape` up with axes axis.. of an x_ndim tensor."""
    return (1,) * axis + tuple(param_shape) + (1,) * (x_ndim - axis - len(param_shape))


class _AxisBlobLayer(Layer):
    """Shared by Scale and Bias: a blob over bottom axes [axis, axis + num_axes) (learned, or bottom[1])."""

    num_bottoms = (1, 2)

    def _setup_axes(self, axis, num_axes, bottom_shapes):
        x_shape = bottom_shapes[0]
        self.blob_shape = None          # the learned blob's shape (None: bottom[1] is the blob)
        if len(bottom_shapes) == 2:
            # the second bottom's own rank decides how many axes it covers (num_axes is ignored)
            self.axis = canonical_axis(axis, len(x_shape), self) if bottom_shapes[1] else 0
            self.top_shapes(bottom_shapes)
            return None
        if num_axes < -1:
            raise self.error("num_axes must be non-negative, or -1 to extend to the end")
        self.axis = canonical_axis(axis, len(x_shape), self) if len(x_shape) else 0
        end = len(x_shape) if num_axes == -1 else self.axis + num_axes
        if end > len(x_shape):
            raise self.error(f"axis {self.axis} + num_axes {num_axes} exceeds the bottom's "
                             f"{len(x_shape)} axes")
        self.blob_shape = tuple(x_shape[self.axis:end])
        return self.blob_shape

    def top_shapes(self, bottom_shapes):
        # Scale/BiasLayer::Reshape CHECK at every forward that the blob lines up with bottom[0] from the axis (a
        # Filter below may change the batch of either)
        x = tuple(bottom_shapes[0])
        other = tuple(bottom_shapes[1]) if len(bottom_shapes) == 2 else self.blob_shape
        if x[self.axis:self.axis + len(other)] != other:
            what = "bottom[1]" if len(bottom_shapes) == 2 else "the learned blob's"
            kind = self.param.type.lower()
            if len(x) < self.axis + len(other):
                caffe = f"{kind} blob's shape extends past bottom[0]'s shape when applied starting with " \
                        f"bottom[0] axis = {self.axis}"
            else:
                i = next(i for i, (a, b) in enumerate(zip(x[self.axis:], other)) if a != b)
                caffe = f"dimension mismatch between bottom[0]->shape({self.axis + i}) and {kind}->shape({i})"
            raise self.error(f"{what} shape {other} does not match bottom[0] {x} from axis {self.axis} "
                             f"(Caffe: \"{caffe}\")")
        return [x]

    def _view(self, t, x):
        return t.reshape(_broadcast_shape(x.dim(), self.axis, t.shape))


@register("Scale")
class Scale(_AxisBlobLayer):
    """y = x * scale (+ bias). The scale is bottom[1], or a learned blob (filler default constant 1).
    happynear fork: `min_value`/`max_value` clamp the learned scale in place before it is used."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.scale_param
        shape = self._setup_axes(sp.axis, sp.num_axes, bottom_shapes)   # defaults axis 1, num_axes 1
        self.learned = shape is not None
        if self.learned:
            filler = sp.filler if sp.HasField("filler") \
                else caffe_pb2.FillerParameter(type="constant", value=1)
            self.add_blob(shape, filler)
        self.bias_term = sp.bias_term                                    # default false
        if self.bias_term:
            bias_shape = shape if shape is not None else tuple(bottom_shapes[1])
            self.add_blob(bias_shape, sp.bias_filler)
        self.min_value = sp.min_value if sp.HasField("min_value") else None
        self.max_value = sp.max_value if sp.HasField("max_value") else None

    def forward(self, x, *other):
        if self.learned:
            s = self.blobs[0]
            if self.min_value is not None or self.max_value is not None:
                with torch.no_grad():
                    s.clamp_(self.min_value, self.max_value)
        else:
            s = other[0]
        y = x * self._view(s, x)
        if self.bias_term:
            y = y + self._view(self.blobs[-1], x)
        return y


@register("Bias")
class Bias(_AxisBlobLayer):
    """y = x + bias; the bias is bottom[1] or a learned blob (filler default constant 0)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        bp = param.bias_param
        shape = self._setup_axes(bp.axis, bp.num_axes, bottom_shapes)
        self.learned = shape is not None
        if self.learned:
            self.add_blob(shape, bp.filler)

    def forward(self, x, *other):
        b = self.blobs[0] if self.learned else other[0]
        return x + self._view(b, x)


@register("BatchNorm")
class BatchNorm(Layer):
    """Caffe's BatchNorm: no affine part; blobs = (mean sum, variance sum, scale factor), never learned.
    TRAIN (use_global_stats false): normalise with the batch statistics and update
    sf = maf * sf + 1, mean_sum = maf * mean_sum + mean, var_sum = maf * var_sum + m/(m-1) * var.
    TEST (use_global_stats true): normalise with mean_sum / sf and var_sum / sf."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        bp = param.batch_norm_param
        self.use_global_stats = bp.use_global_stats if bp.HasField("use_global_stats") \
            else ctx.phase == caffe_pb2.TEST
        self.maf = bp.moving_average_fraction                    # default 0.999
        self.eps = bp.eps                                        # default 1e-5
        if len(bottom_shapes[0]) < 2:           # Caffe's Reshape reads shape(1): it aborts on a 1-D bottom
            raise self.error(f"needs a bottom with a channel axis (at least 2-D), got shape {bottom_shapes[0]}")
        channels = bottom_shapes[0][1]
        for shape in ((channels,), (channels,), (1,)):
            self.add_blob(shape, None, learnable=False)

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.use_global_stats:
            sf = self.blobs[2][0]
            factor = torch.where(sf == 0, torch.zeros_like(sf), 1.0 / sf)
            mean, var = self.blobs[0] * factor, self.blobs[1] * factor
        else:
            if torch.jit.is_tracing():      # an export traces the forward: an autograd.Function has no form there
                y, mean, var, _ = _batch_stats(x, self.eps)
            else:
                y, mean, var = _BatchNormBatchStats.apply(x, self.eps)
            m = x.numel() // x.shape[1]
            with torch.no_grad():
                self.blobs[2].mul_(self.maf).add_(1)
                self.blobs[0].mul_(self.maf).add_(mean)
                self.blobs[1].mul_(self.maf).add_(var * (m / (m - 1) if m > 1 else 1))
            return y
        return (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)


def _batch_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """(y, mean, var, std) of BatchNorm with the batch's statistics: per channel (axis 1) over all other axes;
    mean and var of shape (C,), std broadcastable to x."""
    axes = [0] + list(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(dim=axes)
    centred = x - mean.view(view)
    var = (centred * centred).mean(dim=axes)
    std = torch.sqrt(var.view(view) + eps)
    return centred / std, mean, var, std


class _BatchNormBatchStats(torch.autograd.Function):
    """BatchNorm with the batch's statistics: y = (x - mean) / sqrt(var + eps) per channel (also the mean and the
    variance, without gradient), with Caffe's backward formula and order (BatchNormLayer::Backward_cpu):
        t = sum(dy * y) * y + sum(dy);   dx = (dy + t * (-1/m)) / sqrt(var + eps)
    (sums over all axes but the channel one, m values each). Where the batch's values of a channel are nearly
    two-valued against eps (two samples, say) y is nearly +-1 and dx is a small difference of nearly equal
    terms, and autograd's chain through the mean and the variance rounds it otherwise (two samples, y = +-0.999996:
    Caffe's float32 dx 2.3e-4 from the float64 value, autograd's 8e-6; fuzz seed 801390)."""

    @staticmethod
    def forward(ctx, x, eps: float):
        y, mean, var, std = _batch_stats(x, eps)
        ctx.save_for_backward(y, std)
        ctx.axes = [0] + list(range(2, x.dim()))
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        y, std = ctx.saved_tensors
        m = y.numel() // y.shape[1]
        t = (dy * y).sum(dim=ctx.axes, keepdim=True) * y + dy.sum(dim=ctx.axes, keepdim=True)
        return (dy + t * (-1.0 / m)) / std, None


@register("Dropout")
class Dropout(Layer):
    """TRAIN: keep each unit with probability 1 - p and scale kept units by 1/(1 - p). TEST: identity.

    `rows`: None, or (first row, global batch) when this net trains one slice of a larger batch (data
    parallel): the layer draws the masks of the whole global batch and keeps its slice's rows, so K processes
    together draw exactly the masks of one process training the global batch."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.ratio = param.dropout_param.dropout_ratio           # default 0.5
        if not 0 <= self.ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        # masks come from a generator of the net's device, seeded from caffe's generator: reproducible
        self._mask_gen = torch.Generator(device=ctx.device)
        self._mask_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=ctx.generator)))
        self.rows: tuple[int, int] | None = None

    def forward(self, x):
        if self.phase != caffe_pb2.TRAIN or self.ratio == 0:
            return self.unchanged(x)
        shape = x.shape if self.rows is None else (self.rows[1], *x.shape[1:])
        draw = torch.rand(shape, generator=self._mask_gen, device=x.device, dtype=x.dtype)
        if self.rows is not None:
            draw = draw[self.rows[0]:self.rows[0] + x.shape[0]]
        keep = draw >= self.ratio
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.ratio))

    def get_rng_state(self) -> bytes:
        # a CPU generator's state is its Mersenne Twister (5 kB), a CUDA one's its seed and offset (16 bytes)
        return self._mask_gen.get_state().numpy().tobytes()

    def set_rng_state(self, state: bytes) -> None:
        """The generator state of a snapshot. One of the other device's kind (a CPU snapshot on a GPU or back:
        Mersenne Twister and Philox are different generators, no state of one is a state of the other) seeds
        this generator from its digest: the masks then differ from the other device's, as they would in an
        uninterrupted run there, but the same snapshot always continues with the same masks."""
        own = self._mask_gen.get_state().numel()
        other = CUDA_GENERATOR_STATE_BYTES if self._mask_gen.device.type == "cpu" else cpu_generator_state_bytes()
        if len(state) == own:
            self._mask_gen.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        elif len(state) == other:
            self._mask_gen.manual_seed(seed_from_generator_state(state))
        else:
            raise self.error(f"snapshot's mask generator state ({len(state)} bytes) is neither this device's "
                             f"({self._mask_gen.device}: {own} bytes) nor the other device kind's ({other} bytes)")


# torch's CUDA generator state: its seed and Philox offset, two 64-bit integers
CUDA_GENERATOR_STATE_BYTES = 16


def cpu_generator_state_bytes() -> int:
    return torch.Generator().get_state().numel()


def seed_from_generator_state(state: bytes) -> int:
    """A 63-bit seed that is a function of a generator state's bytes (for a state of another device kind)."""
    return int.from_bytes(hashlib.sha256(state).digest()[:8], "little") >> 1


@register("Split")
class Split(Layer):
    """Caffe's SplitLayer (what InsertSplits adds where several layers read one top, see caffe_torch/splits.py):
    every top shares the bottom's data (Caffe's ShareData), each has its own diff, and the bottom's diff is their
    sum. Each top is its own view of the bottom, so that autograd keeps one gradient per top (a pycaffe
    backward shows them); the training loop, which keeps no blob diffs, skips the layer and hands the bottom
    tensor itself to the readers (Net._run_layers)."""

    num_tops = (1, None)
    is_split = True
    allows_in_place = False

    def forward(self, x):
        return tuple(x.view_as(x) for _ in self.param.top)


@register("Silence")
class Silence(Layer):
    """Consumes blobs so they are not net outputs; no tops, no gradient."""

    num_bottoms = (1, None)
    num_tops = (0, 0)

    def top_shapes(self, bottom_shapes):
        return []

    def forward(self, *xs):
        return ()
