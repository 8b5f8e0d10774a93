from .config import Int8DynamicConfig, Int8WeightOnlyConfig
from .quantize import HANDLERS, SkipLayer, quantize_, register_handler
from .report import CompressionReport, LayerRecord, module_bytes
from .serialization import load, save

__all__ = [
    "Int8DynamicConfig", "Int8WeightOnlyConfig", "quantize_", "register_handler", "HANDLERS", "SkipLayer",
    "CompressionReport", "LayerRecord", "module_bytes", "save", "load",
]
