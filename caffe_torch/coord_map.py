"""Spatial coordinate maps between the tops of a NetSpec (pycaffe's caffe.coord_map), to align and crop
feature maps (e.g. a fully convolutional net's upsampled score to its input).

A map is (axis, a, b): output coordinate = a * input coordinate + b along the spatial axes from `axis` on
(a, b scalars or one value per spatial axis); (None, 1, 0) is the identity of pointwise layers. A
Convolution / Pooling / Im2col with stride s, effective kernel k = (kernel - 1) * dilation + 1 and pad p maps
by (1/s, (p - (k - 1)/2) / s); a Deconvolution by (s, (k - 1)/2 - p); a Crop with offset o by (1, -o) on
its first bottom. `coord_map_from_to(top_from, top_to)` walks both tops back to a common blob and composes
the maps; `crop(top_from, top_to)` makes the Crop layer that aligns `top_from` with `top_to`.
"""

import numpy as np

from .net_spec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]
_LEGACY_SPATIAL = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}


class UndefinedMapException(Exception):
    """A layer whose outputs have no coordinate map to its inputs (e.g. InnerProduct)."""


class AxisMismatchException(Exception):
    """Two maps that act on different axes."""


def conv_params(fn):
    """(axis, stride, effective kernel size, pad) of a Convolution / Deconvolution / Im2col / Pooling
    Function, as arrays (one value, or one per spatial axis); Caffe's defaults where not given."""
    params = fn.params.get("convolution_param", fn.params)
    if _LEGACY_SPATIAL & set(fn.params):
        raise AssertionError("cropping does not support legacy _h/_w params")
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1), (kernel - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop Function; Caffe's defaults axis 2 (spatial crop of N, C, H, W), offset 0."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The (axis, a, b) map from a layer's input coordinates to its output coordinates."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset           # the map's axis is the last axis that is not cropped
    raise UndefinedMapException(fn.type_name)


def compose(base_map, next_map):
    """`next_map` after `base_map`: scales multiply, the further shift is scaled by the base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"maps on axes {ax1} and {ax2}")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(cmap):
    """The map back from output to input coordinates."""
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _mappable_bottoms(top):
    # a Crop's second bottom only gives the shape to crop to: its coordinates are not mapped
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs


def _maps_to_ancestors(top, stop=None):
    """{ancestor top: map from it to `top`'s coordinates...}, walking back through mappable layers; with
    `stop`, returns (the first ancestor found in `stop`, its map) as soon as one is reached."""
    maps = {top: (None, 1, 0)}
    frontier = [top]
    while frontier:
        current = frontier.pop()
        if stop is not None and current in stop:
            return current, maps[current]
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            maps[bottom] = compose(maps[current], step)
            frontier.append(bottom)
    return None if stop is not None else maps


def coord_map_from_to(top_from, top_to):
    """The (axis, a, b) map from `top_from`'s coordinates to `top_to`'s, through their common ancestor;
    RuntimeError when no chain of spatial layers connects them."""
    from_maps = _maps_to_ancestors(top_from)
    found = _maps_to_ancestors(top_to, stop=from_maps)
    if found is None:
        raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")
    common, to_map = found
    return compose(to_map, inverse(from_maps[common]))


def crop(top_from, top_to):
    """A Crop layer that crops `top_from` to align with `top_to` (AssertionError, as pycaffe, when the scales
    differ or the offset would be negative or fractional)."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(a == 1):
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not np.all(b <= 0):
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    offset = [int(v) for v in np.atleast_1d(-np.round(b))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))
