"""slimkernels: kernels, drop-in modules and passes that make neural networks smaller and faster.

    import slimkernels
    report = slimkernels.quantize_(model, slimkernels.Int8DynamicConfig())
    # or: slimkernels.sparsify_(model, slimkernels.SparsityConfig(0.5, method="wanda"), calibration=batches)
    # or: slimkernels.prune_(model, slimkernels.StructuredPruningConfig(0.5), example_inputs)  (smaller dense layers)
    slimkernels.save(model, "model.safetensors")

Training-time compression: slimkernels.PruningSchedule (masks ramped while you fine-tune),
slimkernels.StructuredPruningSchedule, and slimkernels.Distiller (a teacher's outputs as the loss).
"""
from . import _native, ops
from .backends import (
    get_backend, get_cpu_amx, get_cpu_isa, set_backend, set_cpu_amx, set_cpu_isa, use_backend, use_cpu_amx,
    use_cpu_isa,
)
from ._switch import get_cpu_bf16, set_cpu_bf16, use_cpu_bf16
from .compress import (
    CodebookConfig,
    CompressionReport,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8WeightOnlyConfig,
    SparsityConfig,
    calibration_text,
    convert_,
    load,
    prepare_qat_,
    quantize_,
    save,
    sparsify_,
)
from .compress import HashingConfig, LowRankConfig, hash_, low_rank_
from .compress import Recipe, apply_recipe
from .compress import inspect_checkpoint, read_info
from .nn import FakeQuantLinear, HashedLinear, LowRankConv2d, LowRankLinear, QuantLinear, SparseConv2d, SparseLinear
from .distill import Distiller
from .prune import PruningSchedule, StructuredPruningConfig, StructuredPruningSchedule, prune_

__version__ = "0.1.0"
info = _native.info

from . import integrations  # noqa: E402  (after __version__: the transformers integration reads it)

# Hugging Face transformers: register quant_method "slimkernels" (save_pretrained / from_pretrained of
# compressed models) once transformers loads its quantizer registry; imports nothing now.
integrations.install()

__all__ = [
    "ops", "QuantLinear", "FakeQuantLinear", "SparseLinear", "SparseConv2d", "quantize_", "sparsify_", "SparsityConfig",
    "calibration_text", "prepare_qat_", "convert_", "Int8DynamicConfig", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "CodebookConfig", "CompressionReport",
    "save", "load", "set_backend", "use_backend", "get_backend", "set_cpu_isa", "use_cpu_isa", "get_cpu_isa",
    "set_cpu_amx", "use_cpu_amx", "get_cpu_amx", "set_cpu_bf16", "use_cpu_bf16", "get_cpu_bf16", "info", "__version__", "prune_", "StructuredPruningConfig",
    "PruningSchedule", "StructuredPruningSchedule", "Distiller", "LowRankLinear", "LowRankConv2d", "LowRankConfig",
    "low_rank_", "HashedLinear", "hash_", "HashingConfig", "Recipe", "apply_recipe",
    "read_info", "inspect_checkpoint",
]
