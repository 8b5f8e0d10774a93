from .fake_quant_linear import FakeQuantLinear
from .quant_linear import QuantLinear

__all__ = ["QuantLinear", "FakeQuantLinear"]
