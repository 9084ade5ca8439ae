"""Distillation losses, by name (``LOSSES``; ``build_loss(name, **opts)``).

Every loss maps student predictions ``pred (B, D)`` and cached teacher targets
``target (B, D)`` to a scalar, and exposes ``per_sample(pred, target, **extra) -> (B,)``
whose mean is that scalar. ``per_sample`` is what makes mixup work without touching the
cached targets: ``mixup_loss`` scores the mixed input against both original targets and
weights the two per-sample losses with the per-sample lambda (as the paper does).

The paper's ranking (mean over 7 tasks): cosine 72.7 > CLAP 72.3 > KL 66.2 > L1 65.6 > MSE 62.7.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssondo_cache.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


def _f32(x: Tensor) -> Tensor:
    """At least fp32 (bf16/fp16 predictions under autocast), fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class DistillLoss(nn.Module):
    """Base: ``forward(pred (B, D), target (B, D), **extra) -> scalar = per_sample(...).mean()``."""

    # False for the contrastive losses: mixup's second term scores a mixed sample against the
    # permuted targets, where its own target is one of the negatives (the reference mixes only
    # the regression-style losses)
    mixup_ok = True

    def per_sample(self, pred: Tensor, target: Tensor, **extra: Any) -> Tensor:  # -> (B,)
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, **extra: Any) -> Tensor:
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(
                f"{type(self).__name__}: pred {tuple(pred.shape)} and target "
                f"{tuple(target.shape)} must both be (B, D)"
            )
        return self.per_sample(pred, target, **extra).mean()


@LOSSES.register("cosine")
class CosineLoss(DistillLoss):
    """1 - cos(pred_i, target_i), averaged over the batch (the default; the paper's best).

    pred, target: (B, D) -> per_sample: (B,)
    """

    def per_sample(self, pred: Tensor, target: Tensor, **extra: Any) -> Tensor:
        return 1.0 - F.cosine_similarity(_f32(pred), _f32(target), dim=-1, eps=1e-8)


@LOSSES.register("mse")
class MSELoss(DistillLoss):
    """mean_d (pred - target)^2 per sample, averaged over the batch (= torch's MSE).

    pred, target: (B, D) -> per_sample: (B,)
    """

    def per_sample(self, pred: Tensor, target: Tensor, **extra: Any) -> Tensor:
        return (_f32(pred) - _f32(target)).square().mean(dim=-1)


@LOSSES.register("l1")
class L1Loss(DistillLoss):
    """mean_d |pred - target| per sample, averaged over the batch (= torch's L1).

    pred, target: (B, D) -> per_sample: (B,)
    """

    def per_sample(self, pred: Tensor, target: Tensor, **extra: Any) -> Tensor:
        return (_f32(pred) - _f32(target)).abs().mean(dim=-1)


@LOSSES.register("kl")
class KLLoss(DistillLoss):
    """KL(softmax(target / T) || softmax(pred / T)) * T^2 / D: the KL terms averaged over the D
    embedding dimensions, as the reference does (KLDivLoss(reduction="none") then a mean), not
    summed (D times larger, which also changes what grad_clip does). The embeddings are turned
    into distributions by a softmax; T^2 keeps gradient scale comparable across temperatures
    (Hinton et al.).

    pred, target: (B, D) -> per_sample: (B,)
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def per_sample(self, pred: Tensor, target: Tensor, **extra: Any) -> Tensor:
        t = self.temperature
        log_p_student = F.log_softmax(_f32(pred) / t, dim=-1)
        log_p_teacher = F.log_softmax(_f32(target) / t, dim=-1)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).mean(dim=-1)
        return kl * t * t


def _info_nce(pred: Tensor, target: Tensor, temperature: float, mask: Tensor | None) -> Tensor:
    """Symmetric InfoNCE per pair i: (CE over row i + CE over column i) / 2.

    logits[i, j] = cos(pred_i, target_j) / temperature; the positive is j = i; ``mask`` (B, B)
    bool marks pairs removed from the denominators (never the diagonal).
    """
    p = F.normalize(_f32(pred), dim=-1)
    t = F.normalize(_f32(target), dim=-1)
    logits = p @ t.T / temperature  # (B, B)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    s2t = F.cross_entropy(logits, labels, reduction="none")  # student i -> all teachers
    t2s = F.cross_entropy(logits.T, labels, reduction="none")  # teacher i -> all students
    return 0.5 * (s2t + t2s)


@LOSSES.register("clap")
class CLAPLoss(DistillLoss):
    """CLAP-style symmetric InfoNCE between student and teacher embeddings: each student
    embedding must pick its own teacher embedding among the batch's, and vice versa.

    pred, target: (B, D) -> per_sample: (B,); needs B >= 2.
    """

    mixup_ok = False

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def per_sample(self, pred: Tensor, target: Tensor, **extra: Any) -> Tensor:
        return _info_nce(pred, target, self.temperature, None)


@LOSSES.register("cluster_contrastive")
class ClusterContrastiveLoss(DistillLoss):
    """Symmetric InfoNCE where clips of the SAME k-means cluster are not negatives: pair
    (i, j != i) is dropped from the denominators when clusters[i] == clusters[j].

    pred, target: (B, D); clusters: (B,) int (the sampling manifest's ``cluster``)
    -> per_sample: (B,)
    """

    mixup_ok = False

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @staticmethod
    def negatives_mask(clusters: Tensor) -> Tensor:  # (B,) -> (B, B) bool, True = not a negative
        same = clusters[:, None] == clusters[None, :]
        return same & ~torch.eye(len(clusters), dtype=torch.bool, device=clusters.device)

    def per_sample(
        self, pred: Tensor, target: Tensor, clusters: Tensor | None = None, **extra: Any
    ) -> Tensor:
        if clusters is None:
            raise ValueError("cluster_contrastive needs clusters=(B,) cluster ids (use a balanced manifest)")
        if clusters.shape != (pred.shape[0],):
            raise ValueError(f"clusters must be ({pred.shape[0]},), got {tuple(clusters.shape)}")
        return _info_nce(pred, target, self.temperature, self.negatives_mask(clusters))


def build_loss(name: str, **opts: Any) -> DistillLoss:
    """The loss registered as ``name`` (cosine, mse, l1, kl, clap, cluster_contrastive)."""
    return LOSSES.build(name, **opts)  # type: ignore[return-value]


def mixup_loss(
    loss: DistillLoss, pred: Tensor, target: Tensor, perm: Tensor, lam: Tensor, **extra: Any
) -> Tensor:
    """Loss of predictions on mixed inputs x_i' = lam_i x_i + (1 - lam_i) x_perm[i]:

        mean_i [ lam_i * l_i(pred, target) + (1 - lam_i) * l_i(pred, target[perm]) ]

    pred, target: (B, D); perm: (B,) long; lam: (B,). Per-sample tensors in ``extra``
    (e.g. clusters (B,)) follow their targets: they are permuted for the second term.
    """
    if not loss.mixup_ok:
        raise ValueError(f"{type(loss).__name__} is contrastive: mixup cannot be used with it")
    b = pred.shape[0]
    if perm.shape != (b,) or lam.shape != (b,):
        raise ValueError(f"perm and lam must be ({b},), got {tuple(perm.shape)} and {tuple(lam.shape)}")
    extra_perm = {
        k: v[perm] if isinstance(v, Tensor) and v.shape[:1] == (b,) else v for k, v in extra.items()
    }
    lam = _f32(lam)
    first = loss.per_sample(pred, target, **extra)
    second = loss.per_sample(pred, target[perm], **extra_perm)
    return (lam * first + (1.0 - lam) * second).mean()
