"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

Both networks' penultimate features (the pooled `final` map, the classifier's input)
pass through a linear head to `feat_dim` (128) and are L2-normalised: v_s, v_t. Two memory
banks hold one such vector per training sample: M_s (student side) and M_t (teacher side).
For a batch sample i with dataset index n_i, the positive is bank row n_i ("exact" mode) and
the K = nce_k negatives are rows of training samples of other classes, drawn uniformly. The
scores are

    h_s[i, j] = exp(<v_s[i], M_t[idx[i, j]]> / t) / Z_s     (student anchor vs teacher bank)
    h_t[i, j] = exp(<v_t[i], M_s[idx[i, j]]> / t) / Z_t     (teacher anchor vs student bank)

with j = 0 the positive, Z fixed at the first step to mean(exp(...)) * N (N = training set
size), and the NCE loss per direction, with noise probability 1/N,

    L(h) = -(1/B) sum_i [ log(h[i,0] / (h[i,0] + K/N + eps))
                          + sum_{j>0} log((K/N) / (h[i,j] + K/N + eps)) ],   eps = 1e-7.

loss = ce_weight * CE + kd_weight * KD + crd_weight * (L(h_s) + L(h_t)). After the scores,
the banks move towards the batch: M[n_i] <- normalise(mom * M[n_i] + (1 - mom) * v[i]).
Both heads train; the teacher does not.

Facts from RepDistiller / mdistiller (never their code): nce_k 16384, t 0.07, momentum 0.5,
feat_dim 128, CE 1, CRD 0.8, KD 0 (1 for CRD+KD), banks initialised uniformly in
[-s, s] with s = 1 / sqrt(feat_dim / 3). Differences: negatives are drawn *with*
replacement (the reference draws 16384 of 49,500 without; ~15 % of ours repeat), by a
counter-based hash of (run seed, step, sample index, k) computed on the device, so no host
work or RNG state is needed and a resumed run draws exactly what an uninterrupted one would;
scores are computed as one (B x N) product with the whole bank and then gathered, which is
the same numbers as gathering the (B x K+1 x 128) rows first, in far less memory. Banks,
normalisers, step counter and seed are buffers: they live in the run's checkpoint.

On several processes (DDP) each rank scores its shard of the batch against the same banks,
then every rank moves the banks towards *all* ranks' rows (gathered), and Z is fixed from
the mean over all ranks' scores: the banks stay equal on every rank and evolve exactly as
in one process training on the concatenated batch (the effective batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed
from engine.distill.base import Distiller, feature_shapes
from engine.distill.losses import kd_kl

EPS = 1e-7
_M32 = 0xFFFFFFFF


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x, c < 2^32 in int64 without overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (lowbias32), on int64 tensors in [0, 2^32)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def class_tables(labels: torch.Tensor, num_classes: int):
    """Indices sorted by class, each class's first position in that order and its size."""
    labels = labels.cpu().long()
    order = torch.argsort(labels, stable=True)
    count = torch.bincount(labels, minlength=num_classes)
    start = torch.cumsum(count, 0) - count
    return order, start, count


def draw_negatives(
    seed: torch.Tensor,
    step: torch.Tensor,
    index: torch.Tensor,
    y: torch.Tensor,
    k: int,
    order: torch.Tensor,
    start: torch.Tensor,
    count: torch.Tensor,
) -> torch.Tensor:
    """(B, k) dataset indices of training samples of classes other than y, uniform.

    A pure function of (seed, step, sample index, j): the j-th draw is a hash of those four
    numbers reduced modulo the number of other-class samples, then mapped past the block of
    y's own class in the class-sorted order.
    """
    base = mix32(mix32(seed ^ mix32(step)) ^ (index & _M32))  # (B,)
    j = torch.arange(k, device=index.device, dtype=torch.int64)
    h = mix32(base[:, None] ^ mix32(j + 0x9E3779B9)[None, :])  # (B, k)
    n_other = order.shape[0] - count[y]  # (B,)
    r = h % n_other[:, None]
    r = r + count[y][:, None] * (r >= start[y][:, None]).long()
    return order[r]


def nce_loss(scores: torch.Tensor, num_samples: int) -> torch.Tensor:
    """NCE loss of (B, K+1) scores whose column 0 is the positive (formula in the docstring)."""
    b, k = scores.shape[0], scores.shape[1] - 1
    noise = k / num_samples
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + EPS))
    log_d0 = torch.log(noise / (neg + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / b


class Embed(nn.Module):
    """Linear to feat_dim, then L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1).float()), dim=1)


class ContrastMemory(nn.Module):
    """The two memory banks and their normalisers, all buffers (saved with the checkpoint)."""

    def __init__(self, dim: int, num_samples: int):
        super().__init__()
        s = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student_bank", torch.rand(num_samples, dim) * (2 * s) - s)
        self.register_buffer("teacher_bank", torch.rand(num_samples, dim) * (2 * s) - s)
        self.register_buffer("z_student", torch.tensor(-1.0))  # set at the first step
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    @torch.no_grad()
    def update(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor, momentum):
        group = distributed.current()
        if group.parallel:  # every rank's rows, so every rank's banks stay the same
            index = distributed.all_gather_rows(group, index)
            v_s = distributed.all_gather_rows(group, v_s.detach())
            v_t = distributed.all_gather_rows(group, v_t.detach())
        for bank, v in ((self.student_bank, v_s), (self.teacher_bank, v_t)):
            rows = bank.index_select(0, index) * momentum + v.detach() * (1 - momentum)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))


def _scores(anchor: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, t: float):
    """exp(<anchor_i, bank[idx[i, j]]> / t): one (B x N) product, then a gather.

    The product keeps a copy of the bank for its backward pass, because the bank itself is
    updated in place right after (N x feat_dim floats: 25 MB for CIFAR, instead of the
    B x (K+1) x feat_dim rows, 0.5 GB at batch 64, that gathering first would hold).
    """
    return torch.exp((anchor @ bank.detach().clone().t()).gather(1, idx) / t)


def _normalised(
    scores: torch.Tensor, z: torch.Tensor, num_samples: int, everywhere: bool = False
) -> torch.Tensor:
    """scores / Z; Z is fixed at the first step to mean(scores) * N (the buffer keeps it).

    everywhere: the mean over every rank's scores (equal shard sizes: the mean of means)."""
    with torch.no_grad():
        mean = scores.mean()
        if everywhere:
            group = distributed.current()
            mean = distributed.all_sum(group, mean.detach().clone()) / group.world
        z.copy_(torch.where(z < 0, mean * num_samples, z))
    return scores / z


class CRD(Distiller):
    needs_train_labels = True  # negatives come from other classes: build_distiller passes them

    def __init__(
        self,
        student,
        teacher,
        options,
        *,
        num_classes,
        input_shape=(1, 3, 32, 32),
        train_labels: torch.Tensor,
    ):
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )
        o = self.options
        labels = train_labels.cpu().long()
        self.num_samples = int(labels.shape[0])
        order, start, count = class_tables(labels, num_classes)
        if int((count > 0).sum()) < 2:
            raise ValueError("crd needs training samples of at least 2 classes (negatives)")
        s_dim = feature_shapes(student, input_shape).final[0]  # the classifier's input width
        t_dim = feature_shapes(teacher, input_shape).final[0]
        self.embed_s = Embed(s_dim, o["feat_dim"])
        self.embed_t = Embed(t_dim, o["feat_dim"])
        self.memory = ContrastMemory(o["feat_dim"], self.num_samples)
        # derived from the data set: rebuilt at construction, never read from a checkpoint
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("class_start", start, persistent=False)
        self.register_buffer("class_count", count, persistent=False)
        # what makes the negatives of every step reproducible, resumed runs included
        self.register_buffer("seed", torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.use_kd = o["kd_weight"] > 0  # a structural choice, fixed per run
        self._z_agreed = False  # on several processes: Z taken from every rank's scores

    def negatives(self, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return draw_negatives(
            self.seed,
            self.step,
            index,
            y,
            self.options["nce_k"],
            self.order,
            self.class_start,
            self.class_count,
        )

    def forward_train(self, batch, teacher):
        o = self.hp
        x, y, index = batch.x, batch.y, batch.index
        final = self.student.forward_features(x).final
        logits = self.student.forward_head(final)
        f_s = self.student.pool(final)  # penultimate features: what each classifier reads
        f_t = self.teacher.pool(teacher.feats.final)
        with torch.autocast(x.device.type, enabled=False):  # exp(<., .> / 0.07) wants fp32
            v_s = self.embed_s(f_s)
            v_t = self.embed_t(f_t)
            idx = torch.cat([index[:, None], self.negatives(index, y)], dim=1)  # (B, K+1)
            mem = self.memory
            # the first step of a run on several processes (a collective: Python decides)
            agree = distributed.current().parallel and not self._z_agreed
            if agree:
                self._z_agreed = True
            h_s = _normalised(
                _scores(v_s, mem.teacher_bank, idx, o["nce_t"]),
                mem.z_student,
                self.num_samples,
                agree,
            )
            h_t = _normalised(
                _scores(v_t, mem.student_bank, idx, o["nce_t"]),
                mem.z_teacher,
                self.num_samples,
                agree,
            )
            crd = nce_loss(h_s, self.num_samples) + nce_loss(h_t, self.num_samples)
            mem.update(index, v_s, v_t, o["nce_momentum"])
        with torch.no_grad():
            self.step.add_(1)
        losses = {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "crd": o["crd_weight"] * crd,
        }
        if self.use_kd:
            losses["kd"] = o["kd_weight"] * kd_kl(logits, teacher.logits, o["temperature"])
        return logits, losses
