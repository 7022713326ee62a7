"""Decoupled KD (Zhao et al., CVPR 2022): CE + warm-up * (a * TCKD + b * NCKD).

The warm-up factor is applied by the trainer (`loss_scales`), outside the compiled step.

TCKD: T^2 KL between the binary (target, rest) distributions of teacher
and student. NCKD: T^2 KL between their distributions over the non-target
classes only. Per sample, KD = TCKD + (1 - teacher's target prob) * NCKD.
Log-probabilities come from log-sum-exp, never log(softmax), so nothing
overflows to -inf; NCKD needs at least two non-target classes.

With `logit_stand` (Sun et al., CVPR 2024) both logits are z-scored per sample before
TCKD and NCKD (T is then the base temperature); CE keeps the raw logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.distill.base import Distiller
from engine.distill.losses import maybe_standardize


def dkd_parts(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), both T^2-scaled."""
    T = temperature
    s, t = s_logits.float() / T, t_logits.float() / T
    gt = F.one_hot(y, s.shape[1]).bool()

    def binary_log_probs(z):  # log p(target), log p(rest)
        lse = torch.logsumexp(z, dim=1)
        log_target = z.gather(1, y[:, None]).squeeze(1) - lse
        log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - lse
        return torch.stack([log_target, log_rest], dim=1)

    log_bs, log_bt = binary_log_probs(s), binary_log_probs(t)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(dim=1)
    log_ns = F.log_softmax(s.masked_fill(gt, float("-inf")), dim=1)
    log_nt = F.log_softmax(t.masked_fill(gt, float("-inf")), dim=1)
    terms = torch.where(gt, torch.zeros_like(log_nt), log_nt.exp() * (log_nt - log_ns))
    nckd = terms.sum(dim=1)
    return tckd * T * T, nckd * T * T


class DKD(Distiller):
    def __init__(self, student, teacher, options, *, num_classes, input_shape=(1, 3, 32, 32)):
        if num_classes < 3:
            raise ValueError(
                f"dkd needs at least 3 classes but the data set has {num_classes}: NCKD "
                "(KL over the non-target classes) is undefined with fewer than two "
                "non-target classes; use kd instead"
            )
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )

    def warmup_factor(self, epoch: int) -> float:
        """min(epoch / warmup, 1) with 1-based epochs, as in the reference code."""
        w = self.options["warmup"]
        return 1.0 if w <= 0 else min((epoch + 1) / w, 1.0)

    def loss_scales(self, epoch: int) -> dict[str, float]:
        return {"dkd": self.warmup_factor(epoch)}

    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        o = self.hp
        logits = self.student(x)
        s, t = maybe_standardize(logits, teacher.logits, o["logit_stand"])
        tckd, nckd = dkd_parts(s, t, y, o["temperature"])
        dkd = o["tckd_weight"] * tckd.mean() + o["nckd_weight"] * nckd.mean()
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "dkd": dkd,
        }
