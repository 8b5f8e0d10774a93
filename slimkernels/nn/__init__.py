"""Drop-in compressed modules. CompressedModule (base.py) is the base of every one and holds the
registry of layer types that slimkernels.save / load use; QuantLinear (quant_linear.py) takes its
weight format from the registry in formats.py; FakeQuantLinear is the QAT stand-in; SparseLinear
(sparse_linear.py) stores a pruned weight sparse (CSR, BSR, 2:4 / 4:8) and SparseConv2d
(sparse_conv.py) a pruned convolution (CSR over output channels); HashedLinear (hashed_linear.py)
reads a virtual weight from hashed buckets (HashedNets); LowRankLinear / LowRankConv2d (low_rank.py)
hold two factors of rank r."""
from .base import CompressedModule, layer_type, layer_types
from .fake_quant_linear import FakeQuantLinear
from .formats import WeightFormat, register_format, weight_format, weight_formats
from .hashed_linear import HashedLinear
from .low_rank import LowRankConv2d, LowRankLinear
from .quant_linear import QuantLinear
from .sparse_conv import SparseConv2d
from .sparse_linear import SparseLinear

__all__ = ["CompressedModule", "layer_type", "layer_types", "QuantLinear", "FakeQuantLinear", "SparseLinear",
           "SparseConv2d", "HashedLinear", "LowRankLinear", "LowRankConv2d", "WeightFormat", "register_format",
           "weight_format", "weight_formats"]
