"""Distiller: one loss per batch for training a student against a frozen teacher, in the user's own loop.

    distiller = Distiller(teacher, student, kd=dict(temperature=4.0, alpha=0.5),
                          features={"layer3": "layer3"}, example_inputs=(images[:2],))
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=1e-4)   # the student + the projections
    for images, labels in loader:
        loss = distiller(images, labels=labels)       # distiller.last_losses: the parts, for logging
        optimizer.zero_grad(); loss.backward(); optimizer.step()

The teacher stays out of the distiller's module tree: it is frozen (requires_grad False), kept in eval
mode (distiller.train() trains the student only) and run under torch.no_grad; distiller.parameters()
and state_dict() hold the student and the learned projections, while .to() / .half() move the teacher
too. Intermediate outputs are captured with forward hooks that exist only during a distiller call,
looked up by module name at each call: nothing stays attached to either model, and a student whose
layers a pass replaced after the Distiller was built (prepare_qat_, a pruning pass) is hooked where its
layers now are.

Learned projections (FitNets) map a student feature to the teacher's width when the two differ (a
pruned student): an nn.Linear for [..., C] features, a 1x1 nn.Conv2d for [N, C, H, W] maps. Their
shapes come from a first batch: pass example_inputs= (or call build(...)) before making the
optimizer; a projection that the first training call had to create is announced with a warning,
since an optimizer made earlier would never train it.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import nn

from .losses import ATTENTION_MAPS, HIDDEN_KINDS, attention_transfer_loss, feature_loss, hidden_loss, kd_loss, make_projection, mean_pool

__all__ = ["Distiller", "default_output"]

POOLS = (None, "mean")


def default_output(outputs: Any) -> torch.Tensor:
    """What a model (or a hooked submodule) produced, as one tensor: the tensor itself, a Hugging Face
    output's `.logits` or else `.last_hidden_state`, or the first element of a tuple/list."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    for attr in ("logits", "last_hidden_state"):
        value = getattr(outputs, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(f"Distiller: cannot find a tensor in a {type(outputs).__name__} output; pass output=<callable> "
                    "that picks it")


def _attention_probs(outputs: Any, name: str) -> torch.Tensor:
    """Attention probabilities from an attention module's output: the tensor itself or, as Hugging Face
    attention modules return (context, probabilities), the second element."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, (tuple, list)) and len(outputs) > 1 and isinstance(outputs[1], torch.Tensor):
        return outputs[1]
    raise ValueError(f"Distiller: module {name!r} returned no attention probabilities; a Hugging Face model must run "
                     "eager attention (from_pretrained(..., attn_implementation='eager')) for them to exist")


def _model_device(model: nn.Module) -> Optional[torch.device]:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _check_names(what: str, mapping, student: nn.Module, teacher: nn.Module) -> dict[str, str]:
    """{student module name: teacher module name}, both existing."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise TypeError(f"Distiller: {what} must be a dict {{student module name: teacher module name}}, got "
                        f"{type(mapping).__name__}")
    for model_name, model, names in (("student", student, mapping.keys()), ("teacher", teacher, mapping.values())):
        known = dict(model.named_modules())
        for name in names:
            if not isinstance(name, str) or name not in known:
                near = [k for k in known if isinstance(name, str) and k and (name in k or k in name)][:5]
                raise ValueError(f"Distiller: {what}: the {model_name} has no module named {name!r}"
                                 + (f"; similar: {near}" if near else ""))
    return dict(mapping)


class Distiller(nn.Module):
    """Distillation of `student` from `teacher`; `loss = distiller(*inputs, labels=None, **kw)`.

    Both models are called as model(*inputs, **kw). Loss terms (any combination; each is a part of
    `last_losses`, named as below, and the total is their weighted sum):
      kd        dict(temperature=4.0, alpha=0.5) (or True): kd_loss on the picked outputs (logits),
                with `labels` for the hard term. The default when no term is named at all.
      hidden    "mse" | "cosine": hidden_loss on the picked outputs, for models without logits;
                pool="mean" compares mean-pooled [B, C] embeddings of [B, T, C] outputs instead.
      features  {student module: teacher module}: feature_loss (kind `feature_loss`) of their outputs,
                through a learned projection where the widths differ. Parts "feature:<student module>".
      attention {student module: teacher module}: attention_transfer_loss of their outputs with
                `attention_maps` ("spatial": conv features; "probs": attention probabilities, averaged
                over heads when `average_heads`). Parts "attention:<student module>".
    weights: {part or kind: factor}; a part's weight is weights[part], else weights[kind] ("kd",
    "hidden", "features", "attention"), else 1.
    output: picks the tensor the kd/hidden terms compare from a model's output (default_output:
    .logits, else .last_hidden_state, else the tensor or the first element).
    token_mask: name of the keyword input holding the [B, T] token mask (Hugging Face:
    "attention_mask"); padding tokens are then left out of hidden/feature terms on [B, T, ...] tensors
    and out of the mean pooling.
    example_inputs: a tuple of positional inputs or a dict of keyword inputs, run once now (build) to
    create the learned projections before an optimizer is made.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, kd=None, hidden: Optional[str] = None,
                 pool: Optional[str] = None, features: Optional[dict] = None, feature_loss: str = "mse",
                 attention: Optional[dict] = None, attention_maps: str = "spatial", attention_p: float = 2.0,
                 average_heads: bool = False, weights: Optional[dict] = None,
                 output: Optional[Callable[[Any], torch.Tensor]] = None, token_mask: Optional[str] = None,
                 example_inputs=None):
        super().__init__()
        for name, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, nn.Module):
                raise TypeError(f"Distiller: {name} must be an nn.Module, got {type(model).__name__}")
        if teacher is student:
            raise ValueError("Distiller: teacher and student are the same module; distill into a copy "
                             "(copy.deepcopy(model)) that you then compress")
        if kd is True:
            kd = {}
        if kd is not None and not isinstance(kd, dict):
            raise TypeError(f"Distiller: kd must be None, True or a dict(temperature=, alpha=), got {type(kd).__name__}")
        if kd is not None and set(kd) - {"temperature", "alpha"}:
            raise ValueError(f"Distiller: kd takes only 'temperature' and 'alpha', got {sorted(kd)}")
        if hidden is not None and hidden not in HIDDEN_KINDS:
            raise ValueError(f"Distiller: hidden must be None or one of {HIDDEN_KINDS}, got {hidden!r}")
        if kd is not None and hidden is not None:
            raise ValueError("Distiller: kd and hidden both compare the models' outputs; choose one")
        if pool not in POOLS:
            raise ValueError(f"Distiller: pool must be one of {POOLS}, got {pool!r}")
        if pool is not None and hidden is None:
            raise ValueError("Distiller: pool applies to the hidden term; pass hidden='mse' or 'cosine' too")
        if feature_loss not in HIDDEN_KINDS:
            raise ValueError(f"Distiller: feature_loss must be one of {HIDDEN_KINDS}, got {feature_loss!r}")
        if attention_maps not in ATTENTION_MAPS:
            raise ValueError(f"Distiller: attention_maps must be one of {ATTENTION_MAPS}, got {attention_maps!r}")
        if output is not None and not callable(output):
            raise TypeError(f"Distiller: output must be a callable picking a tensor from a model output, got "
                            f"{type(output).__name__}")
        if token_mask is not None and not isinstance(token_mask, str):
            raise TypeError(f"Distiller: token_mask must be the name of a keyword input, got {type(token_mask).__name__}")
        self.features = _check_names("features", features, student, teacher)
        self.attention = _check_names("attention", attention, student, teacher)
        if kd is None and hidden is None and not self.features and not self.attention:
            kd = {}  # nothing named: plain Hinton distillation of the logits
        self.kd, self.hidden, self.pool = kd, hidden, pool
        self.feature_kind, self.attention_maps = feature_loss, attention_maps
        self.attention_options = dict(p=attention_p, maps=attention_maps, average_heads=average_heads)
        self.output, self.token_mask = output or default_output, token_mask
        self.weights = self._check_weights(weights)

        self.student = student
        self.__dict__["teacher"] = teacher  # not a submodule: out of parameters(), state_dict() and train()
        teacher.eval().requires_grad_(False)
        self.projections = nn.ModuleDict()
        self._building = False
        self.last_losses: dict[str, float] = {}
        if example_inputs is not None:
            if isinstance(example_inputs, dict):
                self.build(**example_inputs)
            elif isinstance(example_inputs, tuple):
                self.build(*example_inputs)
            else:
                raise TypeError("Distiller: example_inputs must be a tuple of positional inputs or a dict of keyword "
                                f"inputs, got {type(example_inputs).__name__}")

    def _check_weights(self, weights) -> dict[str, float]:
        if weights is None:
            return {}
        if not isinstance(weights, dict):
            raise TypeError(f"Distiller: weights must be a dict {{part or kind: factor}}, got {type(weights).__name__}")
        known = {"kd", "hidden", "features", "attention"} | {f"feature:{n}" for n in self.features} \
            | {f"attention:{n}" for n in self.attention}
        for key, value in weights.items():
            if key not in known:
                raise ValueError(f"Distiller: weights has an unknown key {key!r}; known: {sorted(known)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Distiller: weights[{key!r}] must be a number >= 0, got {value!r}")
        return dict(weights)

    def _weight(self, part: str, kind: str) -> float:
        return float(self.weights.get(part, self.weights.get(kind, 1.0)))

    # ---- modules: the teacher follows .to()/.half(), never .train() --------------------------------
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer should update: the student's and the projections' trainable parameters."""
        return [p for p in self.parameters() if p.requires_grad]

    # ---- one batch ---------------------------------------------------------------------------------
    def _run(self, model: nn.Module, names: dict[str, str], inputs, kw) -> tuple[Any, dict[str, Any]]:
        """model(*inputs, **kw) with the named modules' outputs captured: (output, {name: output})."""
        captured: dict[str, Any] = {}
        handles = []
        try:
            for key, name in names.items():
                def hook(_module, _args, out, key=key):
                    captured[key] = out  # a module run twice: its last output
                handles.append(model.get_submodule(name).register_forward_hook(hook))
            out = model(*inputs, **kw)
        finally:
            for handle in handles:
                handle.remove()
        missing = [names[k] for k in names if k not in captured]
        if missing:
            raise ValueError(f"Distiller: modules {missing} did not run in the forward pass (were they replaced or "
                             "removed? names are looked up at each call)")
        return out, captured

    def _outputs(self, inputs, kw):
        """Both models on one batch: (student output, teacher output, student captures, teacher captures)."""
        teacher, student = self.teacher, self.student
        t_dev, s_dev = _model_device(teacher), _model_device(student)
        if t_dev is not None and s_dev is not None and t_dev != s_dev:
            raise ValueError(f"Distiller: the teacher is on {t_dev} and the student on {s_dev}; move both to one "
                             "device (distiller.to(device) moves both)")
        if teacher.training:
            teacher.eval()  # someone called teacher.train(): dropout would make the targets noisy
        wanted = [("feature:", self.features), ("attention:", self.attention)]
        s_names = {prefix + s: s for prefix, mapping in wanted for s in mapping}
        t_names = {prefix + s: t for prefix, mapping in wanted for s, t in mapping.items()}
        with torch.no_grad():
            t_out, t_cap = self._run(teacher, t_names, inputs, kw)
        s_out, s_cap = self._run(student, s_names, inputs, kw)
        return s_out, t_out, s_cap, t_cap

    def _projection(self, name: str, s_feat: torch.Tensor, t_feat: torch.Tensor) -> Optional[nn.Module]:
        key = name.replace(".", "/")  # ModuleDict keys cannot hold dots
        if key in self.projections:
            return self.projections[key]
        projection = make_projection(s_feat, t_feat)
        if projection is None:
            return None
        if not self._building:
            warnings.warn(f"Distiller: created a learned projection for feature {name!r} "
                          f"({tuple(s_feat.shape)} -> {tuple(t_feat.shape)}) at the first batch; an optimizer made "
                          "before this call does not train it: pass example_inputs= (or call build()) before making "
                          "the optimizer", UserWarning, stacklevel=4)
        self.projections[key] = projection
        return projection

    def build(self, *inputs, **kw) -> "Distiller":
        """Run one batch without gradients to create the learned projections (their shapes are measured
        on it); call before making the optimizer. Returns self."""
        self._building = True
        try:
            with torch.no_grad():
                _, _, s_cap, t_cap = self._outputs(inputs, kw)
                for s_name in self.features:
                    key = "feature:" + s_name
                    self._projection(s_name, default_output(s_cap[key]), default_output(t_cap[key]))
        finally:
            self._building = False
        return self

    def forward(self, *inputs, labels: Optional[torch.Tensor] = None, **kw) -> torch.Tensor:
        if labels is not None and self.kd is None:
            raise ValueError("Distiller: labels were given but there is no kd term to use them; pass kd=dict(alpha=...)")
        s_out, t_out, s_cap, t_cap = self._outputs(inputs, kw)
        mask = kw.get(self.token_mask) if self.token_mask is not None else None
        if self.token_mask is not None and mask is None:
            raise ValueError(f"Distiller: token_mask={self.token_mask!r} but the call has no keyword input of that name")

        def token_mask_for(tensor):
            return mask if mask is not None and tensor.dim() >= 3 and tensor.shape[:2] == mask.shape else None

        parts: dict[str, tuple[torch.Tensor, float]] = {}
        if self.kd is not None:
            parts["kd"] = (kd_loss(self.output(s_out), self.output(t_out), labels, **self.kd), self._weight("kd", "kd"))
        if self.hidden is not None:
            s_states, t_states = self.output(s_out), self.output(t_out)
            if self.pool == "mean":
                s_states, t_states = mean_pool(s_states, mask), mean_pool(t_states, mask)
            loss = hidden_loss(s_states, t_states, kind=self.hidden, mask=token_mask_for(s_states))
            parts["hidden"] = (loss, self._weight("hidden", "hidden"))
        for s_name in self.features:
            key = "feature:" + s_name
            s_feat, t_feat = default_output(s_cap[key]), default_output(t_cap[key])
            loss = feature_loss(s_feat, t_feat, self._projection(s_name, s_feat, t_feat), kind=self.feature_kind,
                                mask=token_mask_for(t_feat))
            parts[key] = (loss, self._weight(key, "features"))
        for s_name, t_name in self.attention.items():
            key = "attention:" + s_name
            pick = _attention_probs if self.attention_maps == "probs" else (lambda out, _name: default_output(out))
            loss = attention_transfer_loss(pick(s_cap[key], s_name), pick(t_cap[key], t_name), **self.attention_options)
            parts[key] = (loss, self._weight(key, "attention"))
        self.last_losses = {name: float(loss.detach()) for name, (loss, _) in parts.items()}
        total = sum(weight * loss for loss, weight in parts.values())
        self.last_losses["total"] = float(total.detach())
        return total
