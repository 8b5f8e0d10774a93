from .config import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig
from .qat import convert_, prepare_qat_
from .quantize import HANDLERS, SkipLayer, quantize_, register_handler
from .report import CompressionReport, LayerRecord, module_bytes
from .serialization import load, save

__all__ = [
    "Int8DynamicConfig", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "CodebookConfig", "quantize_",
    "prepare_qat_", "convert_", "register_handler", "HANDLERS", "SkipLayer", "CompressionReport", "LayerRecord",
    "module_bytes", "save", "load",
]
