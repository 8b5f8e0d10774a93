from .calibration import (
    ActivationStats, ActivationStatsCollector, BlockStatistics, CalibrationWarning, Collector, HessianCollector,
    InputNormCollector, InputRows, InputRowsCollector, OutputCollector, UnfoldedConvCollector, conv_aware,
    run_calibration,
)
from .config import (
    CodebookConfig, CompressionConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, QuantizationConfig,
    SparsityConfig, config_for_mode, config_suggestion,
)
from .hashing import HashingConfig, hash_, hash_layer
from .passes import HANDLERS, convert_layer, register_handler, run_pass
from .qat import convert_, prepare_qat_
from .quantize import quantize_, quantize_layer
from .report import CompressionReport, LayerRecord, module_bytes
from .serialization import inspect_checkpoint, load, read_info, save
from .low_rank import LowRankConfig, low_rank_, low_rank_layer
from .recipe import Recipe, Rule, Step, apply_recipe
from .budget import BudgetPlan, plan_for_budget
from .sparsify import allocate_sparsity, sparsify_, sparsify_layer
from .text import calibration_text
from .skip import SkipLayer, candidate_layers, check_layer, skip_reason

__all__ = [
    "CompressionConfig", "QuantizationConfig", "Int8DynamicConfig", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig",
    "CodebookConfig", "config_for_mode", "config_suggestion", "quantize_", "quantize_layer", "prepare_qat_", "convert_",
    "register_handler", "HANDLERS", "convert_layer", "run_pass", "SkipLayer", "skip_reason", "check_layer",
    "candidate_layers", "run_calibration", "BlockStatistics", "Collector", "HessianCollector", "InputNormCollector",
    "InputRowsCollector", "InputRows", "CalibrationWarning",
    "ActivationStatsCollector", "ActivationStats", "OutputCollector", "CompressionReport", "LayerRecord",
    "module_bytes", "save", "load", "SparsityConfig", "sparsify_", "sparsify_layer", "allocate_sparsity",
    "calibration_text", "UnfoldedConvCollector", "conv_aware", "HashingConfig", "hash_", "hash_layer",
    "LowRankConfig", "low_rank_", "low_rank_layer", "Recipe", "Rule", "Step", "apply_recipe",
    "read_info", "inspect_checkpoint", "BudgetPlan", "plan_for_budget",
]
