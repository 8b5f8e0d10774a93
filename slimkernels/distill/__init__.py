"""Knowledge distillation: a frozen teacher's outputs, features and attention as training targets for a
(pruned, quantized or smaller) student, one loss per batch in the user's own training loop.

    distiller = slimkernels.distill.Distiller(teacher, student, kd=dict(temperature=4.0, alpha=0.5))
    loss = distiller(inputs, labels=labels)
"""
from .distiller import Distiller, default_output
from .losses import attention_transfer_loss, feature_loss, hidden_loss, kd_loss, make_projection, mean_pool

__all__ = ["Distiller", "default_output", "kd_loss", "feature_loss", "attention_transfer_loss", "hidden_loss",
           "make_projection", "mean_pool"]
