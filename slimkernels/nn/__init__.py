"""Drop-in compressed modules. CompressedModule (base.py) is the base of every one and holds the
registry of layer types that slimkernels.save / load use; QuantLinear (quant_linear.py) takes its
weight format from the registry in formats.py; FakeQuantLinear is the QAT stand-in."""
from .base import CompressedModule, layer_type, layer_types
from .fake_quant_linear import FakeQuantLinear
from .formats import WeightFormat, register_format, weight_format, weight_formats
from .quant_linear import QuantLinear
from .sparse_conv import SparseConv2d

__all__ = ["CompressedModule", "layer_type", "layer_types", "QuantLinear", "FakeQuantLinear", "WeightFormat",
           "register_format", "weight_format", "weight_formats", "SparseConv2d"]
