"""Mixup (per-sample lambda, max(lam, 1 - lam), returns what the loss needs) and SpecAugment."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssondo_distill.augment import SpecAugment, mixup, mixup_label_loss


def test_mixup_mixes_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 12)
    mixed, perm, lam = mixup(x, alpha=0.3)
    assert sorted(perm.tolist()) == list(range(16))
    assert lam.shape == (16,) and lam.dtype == torch.float32
    assert ((lam >= 0.5) & (lam <= 1.0)).all()
    assert len(set(lam.tolist())) > 1  # one lambda per sample, not one per batch
    for i in range(16):
        torch.testing.assert_close(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])
    audio_mixed, _, _ = mixup(torch.randn(4, 1000), alpha=0.3)  # works on audio (B, S) too
    assert audio_mixed.shape == (4, 1000)


def test_mixup_follows_beta_and_is_reproducible() -> None:
    x = torch.randn(4000, 1)
    _, _, lam_peaky = mixup(x, alpha=0.05, generator=torch.Generator().manual_seed(1))
    _, _, lam_flat = mixup(x, alpha=200.0, generator=torch.Generator().manual_seed(1))
    assert lam_peaky.mean() > 0.9  # Beta(0.05, 0.05) lives near 0 and 1 -> max near 1
    assert lam_flat.mean() < 0.53  # Beta(200, 200) concentrates at 0.5
    # E[max(L, 1 - L)] for L ~ Beta(1, 1) = 3/4
    _, _, lam_uniform = mixup(x, alpha=1.0, generator=torch.Generator().manual_seed(2))
    assert abs(lam_uniform.mean().item() - 0.75) < 0.02
    a = mixup(x, 0.3, generator=torch.Generator().manual_seed(5))
    b = mixup(x, 0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, alpha=0.0)


def test_mixup_label_loss_is_lambda_weighted() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g)
    labels = (torch.rand(5, 7, generator=g) > 0.6).float()
    perm, lam = torch.tensor([2, 0, 1, 4, 3]), torch.tensor([0.9, 0.6, 0.5, 1.0, 0.75])
    ref = (
        sum(
            lam[i] * F.binary_cross_entropy_with_logits(logits[i], labels[i])
            + (1 - lam[i]) * F.binary_cross_entropy_with_logits(logits[i], labels[perm[i]])
            for i in range(5)
        )
        / 5
    )
    assert mixup_label_loss(logits, labels, perm, lam).item() == pytest.approx(ref.item(), rel=1e-6)


def test_specaugment_masks_spans_in_training_only() -> None:
    torch.manual_seed(0)
    mel = torch.randn(8, 1, 32, 100) + 10.0  # no natural zeros
    aug = SpecAugment(freq_mask=8, time_mask=20, mask_value=0.0)
    assert torch.equal(aug.eval()(mel), mel)
    out = aug.train()(mel)
    zero = out == 0
    freq_masked = zero.all(dim=3)[:, 0]  # (B, F): bands masked over all time
    time_masked = zero.all(dim=2)[:, 0]  # (B, T): frames masked over all bands
    # everything zeroed is explained by a band mask or a frame mask
    assert torch.equal(zero[:, 0], freq_masked[:, :, None] | time_masked[:, None, :])
    for b in range(8):
        for m, limit in ((freq_masked[b], 8), (time_masked[b], 20)):
            idx = m.nonzero().flatten()
            assert len(idx) < limit
            if len(idx):
                assert idx[-1] - idx[0] + 1 == len(idx)  # one contiguous span
    assert freq_masked.sum() > 0 and time_masked.sum() > 0
    assert not torch.equal(time_masked[0], time_masked[1]) or not torch.equal(freq_masked[0], freq_masked[1])
    torch.testing.assert_close(out[~zero], mel[~zero])
