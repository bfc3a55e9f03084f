"""Caffe's weight fillers. Values are drawn in float64 on the CPU from the given generator, so a net
initialised on the CPU and one initialised on a GPU get the same numbers for the same seed."""

import math
from collections.abc import Sequence

import torch

from .proto import caffe_pb2

_VN = caffe_pb2.FillerParameter


def _fans(shape: Sequence[int]) -> tuple[float, float]:
    # Caffe: fan_in = count / shape[0]; fan_out = count / shape[1] (count / 1 for a 1-D blob).
    numel = math.prod(shape)
    fan_in = numel / shape[0] if shape else 1
    fan_out = numel / shape[1] if len(shape) > 1 else numel
    return fan_in, fan_out


def _variance_n(param, shape) -> float:
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == _VN.FAN_OUT:
        return fan_out
    if param.variance_norm == _VN.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(param: "caffe_pb2.FillerParameter", shape: Sequence[int],
         generator: torch.Generator) -> torch.Tensor:
    """A float64 CPU tensor of `shape` filled as Caffe's filler `param.type` (default "constant")."""
    shape = tuple(int(s) for s in shape)
    kind = param.type  # default "constant" (caffe.proto)
    if param.sparse >= 0 and kind != "gaussian":
        raise ValueError(f"sparsity (filler field 'sparse') is not supported by the {kind!r} filler")
    if kind == "uniform" and param.max < param.min:
        raise ValueError(f"uniform filler: max {param.max} < min {param.min}")
    if kind in ("xavier", "msra", "positive_unitball") and len(shape) > 4:
        # Caffe computes their fans from Blob::num() / channels(), legacy accessors that abort on more axes
        raise ValueError(f"the {kind} filler reads the blob's num and channels, Caffe's legacy accessors (Caffe: "
                         f"\"Cannot use legacy accessors on Blobs with > 4 axes\"); this blob has shape {shape} "
                         "(use a constant, uniform or gaussian filler)")
    out = torch.empty(shape, dtype=torch.float64)
    if kind == "constant":
        return out.fill_(param.value)
    if kind == "uniform":
        return out.uniform_(param.min, param.max, generator=generator)
    if kind == "gaussian":
        out.normal_(param.mean, param.std, generator=generator)
        if param.sparse >= 0:
            # Caffe: keep each value with probability sparse / num_outputs (num_outputs = shape[0])
            if len(shape) < 1:
                raise ValueError("gaussian filler with 'sparse' needs a blob with at least one axis")
            prob = param.sparse / shape[0]
            keep = torch.empty(shape, dtype=torch.float64).uniform_(0.0, 1.0, generator=generator) < prob
            out.mul_(keep.to(out.dtype))
        return out
    if kind == "xavier":
        a = math.sqrt(3.0 / _variance_n(param, shape))
        return out.uniform_(-a, a, generator=generator)
    if kind == "msra":
        return out.normal_(0.0, math.sqrt(2.0 / _variance_n(param, shape)), generator=generator)
    if kind == "positive_unitball":
        # uniform(0, 1), then each of the shape[0] rows is scaled to sum to 1
        out.uniform_(0.0, 1.0, generator=generator)
        rows = out.reshape(shape[0], -1)
        rows /= rows.sum(dim=1, keepdim=True)
        return out
    if kind == "bilinear":
        return _bilinear(shape)
    raise ValueError(f"unknown filler type {kind!r}; known: constant, gaussian, uniform, xavier, msra, "
                     "positive_unitball, bilinear")


def _bilinear(shape: Sequence[int]) -> torch.Tensor:
    """Caffe's BilinearFiller: every (K, K) kernel of a 4-D blob holds the same bilinear interpolation
    weights, for upsampling with a Deconvolution of kernel K = 2 * factor - factor % 2 and stride factor:
    w(y, x) = (1 - |x / f - c|) * (1 - |y / f - c|), f = ceil(K / 2), c = (2f - 1 - f % 2) / (2f)."""
    if len(shape) != 4:
        raise ValueError(f"bilinear filler needs a 4-D blob, got shape {tuple(shape)}")
    if shape[2] != shape[3]:
        raise ValueError(f"bilinear filler needs square kernels, got {shape[2]} x {shape[3]}")
    k = shape[3]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - torch.abs(torch.arange(k, dtype=torch.float64) / f - c)   # (K,)
    return (ramp[:, None] * ramp[None, :]).expand(tuple(shape)).clone()
