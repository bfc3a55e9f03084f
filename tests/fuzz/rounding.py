"""Float32 rounding, simulated in caffe_torch's float64 run: the second referee of compare.py.

A float32 engine rounds the result of every arithmetic operation to the nearest float32, a relative error of at
most FLOAT32_ROUNDING (2^-24). Under RoundingNoise, each such aten operation of a float64 run instead multiplies
its result by (1 + perturb * u), u = +-1 drawn at random (a generator seeded by the case), and an operation
that sums terms (SUMMING_OPS) has its operands perturbed so too, as float32 rounds every term and partial sum: the
run's results move as far as float32 rounding can move them, whatever order the engines sum in. Operations whose float32
result is exact (copies, views, indexing, max/min, ReLU, comparisons, fills) are left alone: the list below names the
rounding ones, the others are not perturbed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

FLOAT32_ROUNDING = 2.0 ** -24      # float32's unit roundoff (round to nearest)

# aten operations (overload packets) whose results are rounded: arithmetic, reductions, products, transcendental
ROUNDING_OPS = frozenset((
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "addcmul", "addcmul_", "addcdiv", "addcdiv_",
    "lerp", "lerp_", "reciprocal", "reciprocal_",
    "prod", "linalg_vector_norm", "norm", "logaddexp",
    "exp", "exp_", "expm1", "log", "log_", "log1p", "sqrt", "sqrt_", "rsqrt", "rsqrt_", "pow", "pow_", "tanh",
    "tanh_backward", "sigmoid", "sigmoid_backward",
    "erf", "sin", "cos", "atan", "atan2", "hypot", "softplus", "softplus_backward", "elu", "elu_backward",
    "leaky_relu", "leaky_relu_backward",
    "_prelu_kernel", "_prelu_kernel_backward", "_softmax", "_log_softmax",
    "_foreach_add", "_foreach_add_", "_foreach_sub", "_foreach_sub_", "_foreach_mul", "_foreach_mul_",
    "_foreach_div", "_foreach_div_",
    "_foreach_addcmul", "_foreach_addcmul_", "_foreach_addcdiv", "_foreach_addcdiv_", "_foreach_lerp",
    "_foreach_lerp_",
    "_foreach_sqrt", "_foreach_sqrt_", "_foreach_pow", "_foreach_norm",
))
# ... of them, those that sum terms that may cancel (sums, products of matrices, convolutions, pooling averages)
SUMMING_OPS = frozenset((
    "sum", "mean", "cumsum", "var", "std", "var_mean", "std_mean", "logsumexp",
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "convolution", "convolution_backward",
    "_softmax_backward_data", "_log_softmax_backward_data", "native_batch_norm",
    "avg_pool2d", "avg_pool2d_backward", "avg_pool3d", "avg_pool3d_backward",
    "index_add", "index_add_", "scatter_add", "scatter_add_",
))


class RoundingNoise(TorchDispatchMode):
    """Within it, every ROUNDING_OPS result in float64 is perturbed by a relative `perturb` at most (see above)."""

    def __init__(self, perturb: float, seed: list[int]):
        super().__init__()
        self.perturb = perturb
        self.generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))

    def _noise(self, t: torch.Tensor) -> torch.Tensor:
        """1 + perturb * u, u = +-1 at random, shaped like t: each rounding at its bound, so that no draw of small
        u's hides how far the result can move."""
        u = torch.randint(0, 2, t.shape, generator=self.generator, device=t.device).to(torch.float64)
        return u.mul_(2.0 * self.perturb).add_(1.0 - self.perturb)

    def _perturbed_copy(self, x):
        return x * self._noise(x) if _is_float64(x) else x

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        in_place = name.endswith("_") or "out" in kwargs
        if name in SUMMING_OPS:
            # a float32 sum rounds each product and partial sum: its error scales with the terms, not the result
            # (which cancels), so each term's operand is perturbed too (copies; an in-place op's target is kept)
            args = tuple(a if in_place and i == 0 else self._perturbed_copy(a) for i, a in enumerate(args))
        out = func(*args, **kwargs)
        if name in ROUNDING_OPS or name in SUMMING_OPS:
            # an in-place op's result is its first argument, an out= op's its `out`
            result = kwargs["out"] if "out" in kwargs else (args[0] if in_place else out)
            for t in result if isinstance(result, (tuple, list)) else (result,):
                if _is_float64(t):
                    t.mul_(self._noise(t))
        return out


def _is_float64(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.numel() > 0
