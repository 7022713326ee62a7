"""Multi-level logit distillation (Jin, Wang & Lin, CVPR 2023).

The student sees a weak view w (the CIFAR crop + flip) and a strong view s (its own crop +
flip, RandAugment and Cutout: `[data] strong_view`, engine/strong_aug.py) of every image;
the teacher's logits on both come from the trainer (`TeacherOut.logits`,
`TeacherOut.strong_logits`). With P_T = softmax(z / T) over the temperatures 𝒯 (prediction
augmentation, default {4, 3, 5, 2, 6}) and w_kd the alignment weight:

    ce       = ce_weight * (CE(z_w, y) + CE(z_s, y))
    instance = w_kd * sum_T [ m * KD_T(w) + KD_T(s) ]       KD_T = T^2 KL(P_T(t) || P_T(s))
    batch    = w_kd * sum_T   m * sum((P_T(t) P_T(t)^T - P_T(s) P_T(s)^T)^2) / B   (on w)
    class    = w_kd * sum_T   c * sum((P_T(t)^T P_T(t) - P_T(s)^T P_T(s))^2) / C   (on w)

Confidence masking, as the reference code computes it (the code behind the published
figures): the teacher's weak-view confidence max_k softmax(t_w)_k is compared with its batch
median (linear interpolation, np.percentile's rule) and m is the *fraction* of samples at or
below it; c is the fraction of classes whose summed teacher probability over the batch is at
or below the median class sum. Each KD_T is a batch mean before it is multiplied by m, so the
mask scales the weak-view terms (by about 1/2, more when confidences tie) rather than
selecting samples. Also as in the reference, the strong view's instance terms at the 4th and
5th temperatures read the weak view (`reference_strong_terms = false` uses the strong view
at every temperature). The reference computes the strong view's batch and class terms but
leaves them out of the loss; so does this.

`logit_stand` (Sun et al., CVPR 2024) z-scores the logits of the instance-level terms only,
as the LS code does. Train logits (for the train accuracy) are those of the weak view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.distill.base import Distiller
from engine.distill.losses import batch_gram_loss, class_gram_loss, kd_kl, maybe_standardize


def fraction_at_or_below_median(values: torch.Tensor) -> torch.Tensor:
    """Share of the entries <= their median (np.percentile(values, 50)), on the device."""
    return values.le(torch.quantile(values, 0.5)).float().mean()


def mlkd_masks(t_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample fraction m, class fraction c) from the teacher's weak-view logits."""
    p = F.softmax(t_weak.float(), dim=1)
    return fraction_at_or_below_median(p.max(dim=1).values), fraction_at_or_below_median(
        p.sum(dim=0)
    )


class MLKD(Distiller):
    def __init__(self, student, teacher, options, *, num_classes, input_shape=(1, 3, 32, 32)):
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )
        self.temperatures = [float(t) for t in self.options["temperatures"]]

    def forward_train(self, batch, teacher):
        if batch.strong is None or teacher.strong_logits is None:
            raise RuntimeError(
                "mlkd needs the strong view of every image and the teacher's logits on it: "
                'set [data] strong_view = "auto" (the default) and use a loader that yields it'
            )
        o = self.hp
        y = batch.y
        z_w = self.student(batch.x)
        z_s = self.student(batch.strong)  # separate passes: BN statistics per view, as published
        t_w, t_s = teacher.logits, teacher.strong_logits
        m, c = mlkd_masks(t_w)
        ls = o["logit_stand"]
        zw_i, tw_i = maybe_standardize(z_w, t_w, ls)
        zs_i, ts_i = maybe_standardize(z_s, t_s, ls)
        instance = batch_term = class_term = 0.0
        for k, T in enumerate(self.temperatures):
            weak_kd = kd_kl(zw_i, tw_i, T)
            if o["reference_strong_terms"] and k in (3, 4):
                strong_kd = weak_kd
            else:
                strong_kd = kd_kl(zs_i, ts_i, T)
            instance = instance + m * weak_kd + strong_kd
            batch_term = batch_term + m * batch_gram_loss(z_w, t_w, T)
            class_term = class_term + c * class_gram_loss(z_w, t_w, T)
        w = o["kd_weight"]
        return z_w, {
            "ce": o["ce_weight"] * (F.cross_entropy(z_w, y) + F.cross_entropy(z_s, y)),
            "instance": w * instance,
            "batch": w * batch_term,
            "class": w * class_term,
        }
