"""Layer implementations, one class per prototxt type. Importing this package registers all of them."""

from . import (  # noqa: F401  (imported for their @register side effect)
    activation,
    common,
    data,
    loss,
    losses_bvlc,
    lrn,
    margin,
    neuron,
    recurrent,
    shape,
    utility,
    vision,
)
from .base import BuildContext, Layer, known_types, layer_class, register

__all__ = ["BuildContext", "Layer", "known_types", "layer_class", "register"]
