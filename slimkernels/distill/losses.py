"""Distillation losses: what a student is trained to match in its teacher.

    kd_loss(student_logits, teacher_logits, labels)      Hinton et al. 2015: soft targets at a temperature
    feature_loss(s_feat, t_feat, projection)             FitNets (Romero et al. 2015): hidden features, through
                                                         a learned projection when the widths differ
    attention_transfer_loss(s_feat, t_feat)              Zagoruyko & Komodakis 2017: where the features are
                                                         active (conv maps), or attention probabilities
    hidden_loss(s_states, t_states, kind="cosine")       embeddings / hidden states of models without logits

Every loss takes (student, teacher) in that order and returns a scalar; the teacher side is never
differentiated (it is detached here, whatever the caller did). Mismatched shapes, devices or dtypes
are a ValueError naming both, never a broadcast.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kd_loss", "feature_loss", "attention_transfer_loss", "hidden_loss", "make_projection", "mean_pool"]

HIDDEN_KINDS = ("mse", "cosine")
ATTENTION_MAPS = ("spatial", "probs")


def _check_tensor(fn: str, name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{fn}: {name} must be floating point, got {value.dtype}")


def _check_pair(fn: str, student: torch.Tensor, teacher: torch.Tensor, what: str = "", same_shape: bool = True) -> None:
    """Both float tensors on one device with one dtype (and, by default, one shape)."""
    _check_tensor(fn, "student" + what, student)
    _check_tensor(fn, "teacher" + what, teacher)
    if same_shape and student.shape != teacher.shape:
        raise ValueError(f"{fn}: student{what} shape {tuple(student.shape)} != teacher{what} shape "
                         f"{tuple(teacher.shape)}")
    if student.device != teacher.device:
        raise ValueError(f"{fn}: student{what} is on {student.device}, teacher{what} on {teacher.device}; "
                         "move both models to one device")
    if student.dtype != teacher.dtype:
        raise ValueError(f"{fn}: student{what} dtype {student.dtype} != teacher{what} dtype {teacher.dtype}; "
                         "cast one of them (e.g. teacher.to(torch.float32))")


def _check_mask(fn: str, mask: Optional[torch.Tensor], states: torch.Tensor) -> Optional[torch.Tensor]:
    """A [B, T] token mask for [B, T, ...] states, as bool; None stays None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or states.dim() < 3 or mask.shape != states.shape[:2]:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{fn}: mask must be a [batch, tokens] tensor matching the states' first two dims "
                         f"{tuple(states.shape[:2])}, got {got}")
    if mask.device != states.device:
        raise ValueError(f"{fn}: mask is on {mask.device}, the states on {states.device}")
    return mask.bool()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor] = None,
            temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    Logits are [..., classes] (a batch, or a batch of sequences: every position is one row); the KL is
    averaged over rows, the T^2 keeps its gradient scale independent of T (Hinton et al.). `labels`
    are class indices of shape logits.shape[:-1]; -100 marks rows without a label (Hugging Face's
    ignore index) for the cross-entropy. Without labels there is no hard term: alpha is ignored and
    the loss is the soft term alone, at full weight (T^2 * KL).
    """
    fn = "kd_loss"
    _check_pair(fn, student_logits, teacher_logits, " logits")
    if student_logits.dim() < 1 or student_logits.shape[-1] < 1:
        raise ValueError(f"kd_loss: logits must be [..., classes], got shape {tuple(student_logits.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"kd_loss: temperature must be a number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss: alpha must be a number in [0, 1], got {alpha!r}")
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes) / temperature
    t = teacher_logits.detach().reshape(-1, classes) / temperature
    soft = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True,
                    reduction="batchmean") * temperature ** 2
    if labels is None:
        return soft
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"kd_loss: labels must be an integer tensor of class indices, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"kd_loss: labels shape {tuple(labels.shape)} must be the logits' shape without the class "
                         f"dim, {tuple(student_logits.shape[:-1])}")
    if labels.device != student_logits.device:
        raise ValueError(f"kd_loss: labels are on {labels.device}, the logits on {student_logits.device}")
    hard = F.cross_entropy(student_logits.reshape(-1, classes), labels.reshape(-1).long(), ignore_index=-100)
    return alpha * hard + (1.0 - alpha) * soft


def make_projection(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> Optional[nn.Module]:
    """The learned map from a student feature to its teacher's width (FitNets' regressor), or None when
    the widths already agree: a 1x1 nn.Conv2d for [N, C, H, W] maps, an nn.Linear over the last dim
    otherwise ([..., C] hidden states). Created on the student feature's device and dtype. Only the
    width may differ: other dims that disagree are a ValueError naming both shapes."""
    _check_pair("make_projection", student_feature, teacher_feature, " feature", same_shape=False)
    s, t = student_feature.shape, teacher_feature.shape
    conv = student_feature.dim() == 4
    width_dim = 1 if conv else -1
    rest_s, rest_t = list(s), list(t)
    if len(s) == 0 or len(s) != len(t):
        raise ValueError(f"make_projection: student feature shape {tuple(s)} and teacher feature shape {tuple(t)} "
                         "must have the same number of dims (at least 1)")
    del rest_s[width_dim], rest_t[width_dim]
    if rest_s != rest_t:
        where = "channel dim (1)" if conv else "last dim"
        raise ValueError(f"make_projection: student feature shape {tuple(s)} and teacher feature shape {tuple(t)} "
                         f"may differ only in the {where}")
    if s[width_dim] == t[width_dim]:
        return None
    kind = dict(device=student_feature.device, dtype=student_feature.dtype)
    if conv:
        return nn.Conv2d(s[1], t[1], kernel_size=1, **kind)
    return nn.Linear(s[-1], t[-1], **kind)


def feature_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor,
                 projection: Optional[nn.Module] = None, kind: str = "mse",
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FitNets hint loss: the student feature, through `projection` when given (see make_projection),
    against the teacher's, by `kind` ("mse" or "cosine", as hidden_loss, with the channels of [N, C, H, W]
    maps as the compared vectors; `mask` as there)."""
    if projection is not None:
        student_feature = projection(student_feature)
    if kind == "cosine" and student_feature.dim() == 4 and teacher_feature.dim() == 4 and mask is None:
        # conv maps: the channels are the vector compared at each position
        student_feature, teacher_feature = student_feature.movedim(1, -1), teacher_feature.movedim(1, -1)
    return hidden_loss(student_feature, teacher_feature, kind=kind, mask=mask, fn="feature_loss")


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse",
                mask: Optional[torch.Tensor] = None, fn: str = "hidden_loss") -> torch.Tensor:
    """Embeddings or hidden states matched directly (models without logits).

    kind="mse": mean squared difference over all entries; "cosine": 1 - cosine similarity along the
    last dim, averaged over the other dims (scale-free: what a sentence-embedding user compares).
    `mask`: optional [B, T] token mask for [B, T, ...] states; entries where it is 0/False (padding)
    are left out of the mean.
    """
    if kind not in HIDDEN_KINDS:
        raise ValueError(f"{fn}: kind must be one of {HIDDEN_KINDS}, got {kind!r}")
    _check_pair(fn, student, teacher, " states")
    keep = _check_mask(fn, mask, student)
    teacher = teacher.detach()
    if keep is not None:
        student, teacher = student[keep], teacher[keep]
        if student.numel() == 0:
            raise ValueError(f"{fn}: the mask keeps no tokens")
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)).mean()


def mean_pool(states: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, T, C] token states -> [B, C], averaged over the tokens `mask` [B, T] keeps (all without one):
    the sentence embedding of mean-pooling models such as all-MiniLM-L6-v2."""
    if states.dim() != 3:
        raise ValueError(f"mean_pool: states must be [batch, tokens, channels], got shape {tuple(states.shape)}")
    keep = _check_mask("mean_pool", mask, states)
    if keep is None:
        return states.mean(1)
    weights = keep.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _spatial_attention(feature: torch.Tensor, p: float) -> torch.Tensor:
    """[N, C, ...] -> [N, prod(...)]: sum over channels of |f|^p, L2-normalized per sample."""
    return F.normalize(feature.abs().pow(p).sum(1).flatten(1), dim=1)


def attention_transfer_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, maps: str = "spatial",
                            average_heads: bool = False) -> torch.Tensor:
    """Attention transfer.

    maps="spatial" (Zagoruyko & Komodakis): for conv features [N, C, H, W] (or any [N, C, ...]), the
    attention map of a sample is sum over channels of |f|^p, flattened and L2-normalized; the loss is
    the L2 distance between the student's and the teacher's maps, averaged over the batch (the paper's
    form; its reference code uses the mean squared difference instead). Channel counts may differ
    (a pruned student needs no projection here); the spatial sizes must agree.

    maps="probs": transformer attention probabilities [B, heads, queries, keys] (what eager attention
    returns): KL(teacher || student) of each query's distribution over the keys, averaged (MiniLM's
    attention loss). With average_heads=True both sides are averaged over heads first, so a student
    with fewer heads (pruned) can learn from its teacher; otherwise the head counts must agree.
    """
    fn = "attention_transfer_loss"
    if maps not in ATTENTION_MAPS:
        raise ValueError(f"{fn}: maps must be one of {ATTENTION_MAPS}, got {maps!r}")
    _check_pair(fn, student, teacher, " features", same_shape=False)
    teacher = teacher.detach()
    if maps == "spatial":
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0):
            raise ValueError(f"{fn}: p must be a number > 0, got {p!r}")
        if student.dim() < 3 or teacher.dim() != student.dim() or student.shape[0] != teacher.shape[0] \
                or student.shape[2:] != teacher.shape[2:]:
            raise ValueError(f"{fn}: spatial maps need [N, C, ...] features with the same N and spatial sizes; got "
                             f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
        return (_spatial_attention(student, p) - _spatial_attention(teacher, p)).norm(dim=1).mean()
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"{fn}: maps='probs' needs [batch, heads, queries, keys] attention probabilities; got "
                         f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    if average_heads:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    if student.shape != teacher.shape:
        hint = " (pass average_heads=True for a student with fewer heads)" if student.shape[1] != teacher.shape[1] else ""
        raise ValueError(f"{fn}: student attention shape {tuple(student.shape)} != teacher attention shape "
                         f"{tuple(teacher.shape)}{hint}")
    log_s = student.clamp(min=1e-12).log()
    log_t = teacher.clamp(min=1e-12).log()
    return (teacher * (log_t - log_s)).sum(-1).mean()
