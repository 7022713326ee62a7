"""Loss functions shared by several methods, written against the formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor,
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


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardization (Sun et al., CVPR 2024): (z - mean(z)) / (eps + std(z)) per sample.

    std is the sample standard deviation (Bessel-corrected, torch's default), as in the
    reference code; after it the temperature is the "base temperature" of the paper.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (eps + z.std(dim=1, keepdim=True))


def maybe_standardize(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, on: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides z-scored when `on` (the `logit_stand` option), else unchanged."""
    if not on:
        return student_logits, teacher_logits
    return standardize(student_logits), standardize(teacher_logits)


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (DIST's eps)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DIST (Huang et al., NeurIPS 2022): (inter, intra), both T^2-scaled.

    With p = softmax(z / T) per sample: inter-class relation = 1 - mean over samples of the
    Pearson correlation between the student's and the teacher's class distributions;
    intra-class relation = the same over classes, each class's column of probabilities
    across the batch.
    """
    T = temperature
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    inter = 1 - pearson_rows(p_s, p_t).mean()
    intra = 1 - pearson_rows(p_s.t(), p_t.t()).mean()
    return inter * (T * T), intra * (T * T)


def batch_gram_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MLKD's batch level: sum((P_t P_t^T - P_s P_s^T)^2) / B with P = softmax(z / T), B x B."""
    T = temperature
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / p_s.shape[0]


def class_gram_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MLKD's class level: sum((P_t^T P_t - P_s^T P_s)^2) / C with P = softmax(z / T), C x C."""
    T = temperature
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / p_s.shape[1]
