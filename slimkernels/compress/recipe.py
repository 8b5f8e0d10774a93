"""Recipes: which compression passes each layer gets, by layer-name pattern, applied in one call.

    recipe = Recipe.from_toml("recipe.toml")       # or Recipe.from_dict({...}) with the same shape
    plan = recipe.plan(model)                      # {layer name: [Step, ...]}
    reports = apply_recipe(model, recipe, calibration=batches)

The TOML shape (examples/recipe.toml is a documented example):

    [[rule]]
    pattern = "*.attention.*"                 # fnmatch over the names of model.named_modules()
    quantize = { mode = "w8a8" }
    [[rule]]
    pattern = "*"                             # every convertible layer (nn.Linear, nn.Conv2d) not taken above
    quantize = { mode = "w4a16", group_size = 128, method = "gptq" }

A rule holds a `pattern` and any of the pass tables below, each the keyword arguments of its config:
  prune     StructuredPruningConfig  (ratio, importance, unit, ...): structured pruning of the coupled groups
            whose root layer the rule matches; traced on the first calibration batch
  low_rank  LowRankConfig            (rank | energy | params, method, allocation, ...)
  sparsify  SparsityConfig           (sparsity, pattern, method, ...)
  hash      HashingConfig            (compression, seed)
  quantize  by `mode`: "w8a8" Int8DynamicConfig, "w8a16" Int8WeightOnlyConfig, "w4a16" Int4WeightOnlyConfig,
            "codebook" CodebookConfig; the other keys are that config's fields (act = "int8" with
            "w4a16" gives w4a8, with "w8a16" w8a8)
  distill   DistillConfig            (steps, lr, hidden | kd, pool, token_mask): after every other pass, the
            whole model is fine-tuned towards the float teacher (slimkernels.distill.Distiller); needs
            apply_recipe(teacher=, train_data=)
A rule without pass tables leaves the layers it matches in float (useful before a "*" rule). A layer
gets the steps of the FIRST rule that matches it; a rule that matches no layer (or only layers taken by
earlier rules) is an error, as are unknown pass names and unknown options.

The order of the tables inside a rule does not matter: the passes always run in the fixed order
prune, low_rank, sparsify, hash, quantize, then distill. Each pass runs once per distinct config, on the
set of layers that asked for it. Two tables in one rule that would both replace the layer are combined
where a format holds both, else rejected:
  low_rank + quantize  -> LowRankLinear with quantized factors (LowRankConfig(factors=...): round to
                          nearest, so quantize's method must be "rtn"); conv layers keep float factors.
  sparsify + quantize  -> SparseLinear with int8 values and per-row scales (SparsityConfig(values="int8"));
                          activations stay float, so only quantize mode "w8a16" fits this format.
  hash with low_rank, sparsify or quantize, and low_rank with sparsify: rejected (no format holds both).
"""
from __future__ import annotations

import copy
import fnmatch
import json
import sys
from dataclasses import dataclass, field, fields, replace
from numbers import Real
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig
from .config import SparsityConfig
from .hashing import HashingConfig
from .low_rank import LowRankConfig
from .report import CompressionReport

__all__ = ["Step", "Rule", "Recipe", "DistillConfig", "apply_recipe", "PASS_ORDER", "QUANTIZE_MODES"]

PASS_ORDER = ("prune", "low_rank", "sparsify", "hash", "quantize", "distill")
QUANTIZE_MODES = {"w8a8": Int8DynamicConfig, "w8a16": Int8WeightOnlyConfig, "w4a16": Int4WeightOnlyConfig,
                  "codebook": CodebookConfig}
LAYER_TYPES = (nn.Linear, nn.Conv2d)  # what "*" matches: the layers the passes convert


@dataclass(frozen=True)
class DistillConfig:
    """The `distill` step: after the other passes, fine-tune the compressed model towards the float
    teacher with slimkernels.distill.Distiller for `steps` optimizer steps of AdamW at `lr` over
    apply_recipe's train_data (batches of model inputs, cycled).

    hidden: "mse" | "cosine" compares the models' outputs (last_hidden_state: for encoders without logits);
      None uses kd (Hinton's loss on the logits, `kd` = dict(temperature=, alpha=)).
    pool: "mean" compares mean-pooled embeddings (with hidden); token_mask: the keyword input holding the
      [B, T] token mask ("attention_mask" for Hugging Face models).
    """

    steps: int = 100
    lr: float = 1e-4
    hidden: Optional[str] = None
    kd: Optional[dict] = None
    pool: Optional[str] = None
    token_mask: Optional[str] = None

    def __post_init__(self):
        name = "DistillConfig"
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"{name}.steps must be an int >= 1, got {self.steps!r}")
        if not isinstance(self.lr, Real) or isinstance(self.lr, bool) or not self.lr > 0:
            raise ValueError(f"{name}.lr must be a number > 0, got {self.lr!r}")
        if self.kd is not None and not isinstance(self.kd, dict):
            raise ValueError(f"{name}.kd must be a table (temperature=, alpha=) or absent, got {self.kd!r}")

    def describe(self) -> str:
        return f"distill {self.steps} steps lr {self.lr:g}" + (f" {self.hidden}" if self.hidden else " kd")

    def __hash__(self):
        return hash((self.steps, self.lr, self.hidden, json.dumps(self.kd, sort_keys=True), self.pool, self.token_mask))


def _prune_config_class():
    from ..prune.api import StructuredPruningConfig  # prune imports compress: imported late

    return StructuredPruningConfig


def _config_class(pass_name: str, options: dict):
    if pass_name == "quantize":
        mode = options.get("mode")
        if mode not in QUANTIZE_MODES:
            raise ValueError(f"recipe: quantize needs mode = one of {sorted(QUANTIZE_MODES)}, got {mode!r}")
        return QUANTIZE_MODES[mode]
    return {"prune": _prune_config_class, "low_rank": lambda: LowRankConfig, "sparsify": lambda: SparsityConfig,
            "hash": lambda: HashingConfig, "distill": lambda: DistillConfig}[pass_name]()


def _freeze(value):
    """A hashable stand-in for an option value (dicts and lists from TOML)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Step:
    """One pass applied to one layer: `pass_name` (one of PASS_ORDER) and its config's keyword arguments
    (for quantize, `mode` picks the config class). Steps with equal pass and options are equal (and hash
    alike), so apply_recipe runs each distinct step once over all its layers."""

    pass_name: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.pass_name not in PASS_ORDER:
            raise ValueError(f"recipe: unknown pass {self.pass_name!r}; passes: {', '.join(PASS_ORDER)}")
        if not isinstance(self.options, dict):
            raise ValueError(f"recipe: the options of {self.pass_name} must be a table (dict), got "
                             f"{type(self.options).__name__}")

    def __hash__(self):
        return hash((self.pass_name, _freeze(self.options)))

    def config(self):
        """The pass's config object built from the options; ValueError naming the pass for an unknown
        option or a bad value (the config's own message)."""
        cls = _config_class(self.pass_name, self.options)
        kwargs = {k: v for k, v in self.options.items() if not (self.pass_name == "quantize" and k == "mode")}
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"recipe: {self.pass_name} ({cls.__name__}) has no option "
                             f"{', '.join(map(repr, unknown))}; its options: {', '.join(known)}")
        if self.pass_name == "low_rank" and isinstance(kwargs.get("factors"), dict):
            kwargs["factors"] = Step("quantize", kwargs["factors"]).config()
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"recipe: {self.pass_name}: {exc}") from None

    def describe(self) -> str:
        config = self.config()
        return config.describe() if hasattr(config, "describe") else f"{self.pass_name} {self.options}"


@dataclass
class Rule:
    """The layers whose names match `pattern` (fnmatch; "*": every convertible layer) get `steps`."""

    pattern: str
    steps: list = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"recipe: a rule's pattern must be a non-empty string, got {self.pattern!r}")
        self.steps = [s if isinstance(s, Step) else Step(*s) for s in self.steps]

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, **{s.pass_name: copy.deepcopy(s.options) for s in self.steps}}


def _load_toml(path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"recipe: no such file {str(path)!r}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipe: {str(path)!r} is not valid TOML: {exc}") from None


def _layer_names(model: nn.Module) -> list[str]:
    """The layers a recipe can name: nn.Linear / nn.Conv2d, not inside an already compressed module."""
    from ..nn.base import CompressedModule

    inside = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, CompressedModule) and name)
    return [name for name, m in model.named_modules()
            if type(m) in LAYER_TYPES and name and not name.startswith(inside)]


@dataclass
class Recipe:
    """Rules, first match wins (see the module docstring for the TOML shape and what the passes mean)."""

    rules: list = field(default_factory=list)

    def __post_init__(self):
        if not self.rules:
            raise ValueError("recipe: no rules; a recipe needs at least one [[rule]] with a pattern")

    @classmethod
    def from_toml(cls, path) -> "Recipe":
        return cls.from_dict(_load_toml(Path(path)))

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """{"rule": [{"pattern": ..., "<pass>": {options}, ...}, ...]} (what the TOML file parses to)."""
        if not isinstance(data, dict):
            raise ValueError(f"recipe: expected a table with a [[rule]] list, got {type(data).__name__}")
        extra = sorted(set(data) - {"rule"})
        if extra:
            raise ValueError(f"recipe: unknown top-level key(s) {', '.join(map(repr, extra))}; a recipe is a list of "
                             "[[rule]] tables")
        rules_data = data.get("rule")
        if not isinstance(rules_data, list) or not all(isinstance(r, dict) for r in rules_data):
            raise ValueError("recipe: expected [[rule]] tables (a list of rules), each with a pattern")
        rules = []
        for i, entry in enumerate(rules_data):
            if "pattern" not in entry:
                raise ValueError(f"recipe: rule {i + 1} has no pattern")
            unknown = sorted(set(entry) - {"pattern"} - set(PASS_ORDER))
            if unknown:
                raise ValueError(f"recipe: rule {i + 1} ({entry['pattern']!r}): unknown pass "
                                 f"{', '.join(map(repr, unknown))}; passes: {', '.join(PASS_ORDER)}")
            steps = [Step(name, entry[name]) for name in PASS_ORDER if name in entry]
            rule = Rule(entry["pattern"], steps)
            _combined(rule.steps, f"rule {i + 1} ({rule.pattern!r})")  # every option checked now, not mid-model
            rules.append(rule)
        return cls(rules)

    def to_dict(self) -> dict:
        return {"rule": [r.to_dict() for r in self.rules]}

    def plan(self, model: nn.Module) -> dict[str, list[Step]]:
        """{layer name: its steps in pass order} for the model's nn.Linear / nn.Conv2d layers, each by the
        first rule whose pattern matches its name (layers no rule matches, or matched by a rule without
        passes, are left out). ValueError naming a rule that matches no layer."""
        names = _layer_names(model)
        taken: dict[str, list[Step]] = {}
        for i, rule in enumerate(self.rules):
            matched = [n for n in names if fnmatch.fnmatchcase(n, rule.pattern)]
            fresh = [n for n in matched if n not in taken]
            if not fresh:
                why = ("matches no layer" if not matched
                       else f"matches only layers that earlier rules take ({matched[0]!r}, ...)")
                example = ", ".join(repr(n) for n in names[:3])
                raise ValueError(f"recipe: rule {i + 1} (pattern {rule.pattern!r}) {why}; the layers are named like "
                                 f"{example} ({len(names)} nn.Linear / nn.Conv2d layers)")
            ordered = sorted(rule.steps, key=lambda s: PASS_ORDER.index(s.pass_name))
            for n in fresh:
                taken[n] = ordered
        return {n: steps for n, steps in taken.items() if steps}


def _combined(steps: list[Step], where: str) -> dict[str, Any]:
    """{pass: config} for one layer's steps, with the pairs that one format holds merged (module
    docstring) and the others rejected with a ValueError naming `where`."""
    configs = {s.pass_name: s.config() for s in steps}
    if len(configs) != len(steps):
        raise ValueError(f"recipe: {where} names a pass twice")
    replacing = [p for p in ("low_rank", "sparsify", "hash", "quantize") if p in configs]
    if "quantize" in configs and "low_rank" in configs and "hash" not in configs and "sparsify" not in configs:
        quant = configs.pop("quantize")
        if getattr(quant, "method", "rtn") != "rtn":
            raise ValueError(f"recipe: {where}: low_rank + quantize quantizes the factors by round to nearest; use "
                             f"method = \"rtn\" in quantize (got {quant.method!r})")
        if configs["low_rank"].factors is not None:
            raise ValueError(f"recipe: {where}: low_rank has factors= and a quantize table; give one of them")
        configs["low_rank"] = replace(configs["low_rank"], factors=quant)
    elif "quantize" in configs and "sparsify" in configs and len(replacing) == 2:
        quant = configs.pop("quantize")
        if not isinstance(quant, Int8WeightOnlyConfig):
            raise ValueError(f"recipe: {where}: sparsify + quantize stores int8 values with per-row scales and float "
                             f"activations (SparsityConfig(values='int8')): use quantize mode \"w8a16\", got "
                             f"{quant.describe()!r}")
        configs["sparsify"] = replace(configs["sparsify"], values="int8")
    elif len(replacing) > 1:
        raise ValueError(f"recipe: {where}: {' + '.join(replacing)} both replace the layer and no format holds both; "
                         "combinable: low_rank + quantize (quantized factors), sparsify + quantize w8a16 (int8 values)")
    return configs


def _first_batch(calibration: Optional[list], what: str):
    if not calibration:
        raise ValueError(f"apply_recipe: {what} needs calibration= batches (the first one traces the model)")
    return calibration[0]


def _call(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _distill(model: nn.Module, config: DistillConfig, teacher: nn.Module, train_data: list, progress: bool) -> None:
    """Fine-tune `model` towards `teacher` for config.steps AdamW steps over train_data (cycled)."""
    from ..distill import Distiller

    options = dict(hidden=config.hidden, pool=config.pool, token_mask=config.token_mask)
    if config.hidden is None:
        options["kd"] = dict(config.kd or {})
    distiller = Distiller(teacher, model, **options)
    params = [p for p in distiller.trainable_parameters() if p.is_floating_point()]
    if not params:
        raise ValueError("apply_recipe: distill found no trainable float parameters in the compressed model")
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    was_training = model.training
    model.train()
    with torch.enable_grad():
        for step in tqdm(range(config.steps), desc="distill", unit="step", disable=not progress):
            batch = train_data[step % len(train_data)]
            loss = _call(distiller, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.train(was_training)


def apply_recipe(model: nn.Module, recipe: Union["Recipe", dict], calibration: Optional[Iterable] = None,
                 teacher: Optional[nn.Module] = None, train_data: Optional[Iterable] = None,
                 progress: bool = True) -> list[CompressionReport]:
    """Compress `model` in place as `recipe` says (a Recipe, or a plan {layer name: [Step, ...]} such as
    Recipe.plan or a budget search gives). Each distinct config runs once over the layers that asked for
    it, the passes in the order prune, low_rank, sparsify, hash, quantize; then distill, which needs
    `teacher` (the float model) and `train_data` (batches of model inputs). Returns the passes' reports.

    calibration: batches of model inputs (model(*batch) for a tuple/list, model(**batch) for a mapping,
      model(batch) otherwise), for the passes that need data (gptq, wanda, sparsegpt, asvd, svd-llm) and
      for prune (the first batch traces the model)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_recipe: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(recipe, Recipe):
        plan = recipe.plan(model)
    elif isinstance(recipe, dict):
        plan = recipe
        known = set(_layer_names(model))
        missing = [n for n in plan if n not in known]
        if missing:
            raise ValueError(f"apply_recipe: the plan names {len(missing)} layer(s) the model has no nn.Linear / "
                             f"nn.Conv2d under: {', '.join(map(repr, missing[:3]))}")
    else:
        raise TypeError(f"apply_recipe: recipe must be a Recipe or a plan {{layer name: [Step, ...]}}, got "
                        f"{type(recipe).__name__}")
    calibration = None if calibration is None else list(calibration)
    # pass -> config -> the layers that asked for it (dicts keep the order configs first appear in)
    by_pass: dict[str, dict[Any, list[str]]] = {p: {} for p in PASS_ORDER}
    for name, steps in plan.items():
        steps = [s if isinstance(s, Step) else Step(*s) for s in steps]
        for pass_name, config in _combined(steps, f"layer {name!r}").items():
            by_pass[pass_name].setdefault(config, []).append(name)
    if by_pass["distill"] and (teacher is None or not train_data):
        raise ValueError("apply_recipe: the recipe asks for distill, which needs teacher= (the float model) and "
                         "train_data= (batches of model inputs)")
    if len(by_pass["distill"]) > 1:
        raise ValueError("apply_recipe: distill fine-tunes the whole model once; give every rule the same distill "
                         f"options (got {len(by_pass['distill'])} different ones)")
    from ..prune.api import prune_
    from .hashing import hash_
    from .low_rank import low_rank_
    from .quantize import quantize_
    from .sparsify import sparsify_

    reports: list[CompressionReport] = []
    for pass_name in PASS_ORDER[:-1]:
        for config, names in by_pass[pass_name].items():
            layer_set = frozenset(names)

            def filter_fn(module, name, layer_set=layer_set):
                return name in layer_set

            if pass_name == "prune":
                example = _first_batch(calibration, "prune")
                example = tuple(example) if isinstance(example, list) else example
                reports.append(prune_(model, config, example, calibration=calibration,
                                      filter_fn=lambda g, layer_set=layer_set: g.root in layer_set, progress=progress))
            elif pass_name == "low_rank":
                reports.append(low_rank_(model, config, calibration, filter_fn, progress))
            elif pass_name == "sparsify":
                reports.append(sparsify_(model, config, filter_fn, calibration, progress))
            elif pass_name == "hash":
                reports.append(hash_(model, config, filter_fn=filter_fn, progress=progress))
            else:
                reports.append(quantize_(model, config, filter_fn, progress, calibration))
    for config in by_pass["distill"]:
        _distill(model, config, teacher, list(train_data), progress)
    return reports
