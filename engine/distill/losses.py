"""Loss functions shared by several methods, written against the formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), Hinton et al. 2015.

    reduction="none" gives one value per sample (used for masking).
    """
    T = temperature
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * (T * T)
    if reduction == "none":
        return per_sample
    return per_sample.mean()


def masked_mean(per_sample: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the kept samples (0 when none is kept, with a zero gradient)."""
    if mask is None:
        return per_sample.mean()
    mask = mask.to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp_min(1.0)
