"""MATPAC pretraining pieces: masking and prediction shapes, what the online branch may see, the
classification loss against its plain formula, the centre and EMA updates, MATPAC++'s best-head
assignment, and the encoder in the official MATPAC++ layout (the MATPAC teacher's own module)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_cache.teachers.matpac import MatpacTeacher, build_matpac
from ssondo_distill.pretrain.config import (
    EncoderConfig,
    MclConfig,
    PredictorConfig,
    PretrainConfig,
    PrototypeConfig,
)
from ssondo_distill.pretrain.ema import annealed, ema_update
from ssondo_distill.pretrain.masking import gather_tokens, random_mask, sincos_2d
from ssondo_distill.pretrain.model import MatpacModel, patch_tokens, run_blocks, with_cls
from ssondo_distill.pretrain.prototypes import classification_loss, collapse_stats, teacher_distribution

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "matpac_tiny_official.pt"


def tiny(heads: int = 0, frames: int = 128, **over) -> PretrainConfig:
    base = dict(
        encoder=EncoderConfig(embed_dim=64, depth=2, num_heads=1, frames=frames),
        predictor=PredictorConfig(embed_dim=32, depth=1, num_heads=2),
        prototypes=PrototypeConfig(prototypes=64, hidden_dim=64, bottleneck_dim=32),
        mcl=MclConfig(enabled=heads > 0, heads=max(heads, 2)),
        samples_per_epoch=64,
        batch_size=8,
    )
    return PretrainConfig(**{**base, **over})


def model_and_input(cfg: PretrainConfig, batch: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = MatpacModel(cfg)
    mel = torch.randn(batch, 80, cfg.encoder.frames)
    return model, mel, model.make_mask(batch, torch.Generator().manual_seed(seed))


def test_mask_partitions_the_tokens_and_restore_inverts_the_shuffle():
    mask = random_mask(5, 40, 0.7, torch.Generator().manual_seed(1))
    assert mask.keep.shape == (5, 12) and mask.masked.shape == (5, 28)  # int(40 * 0.3) visible
    both = torch.cat([mask.keep, mask.masked], dim=1)
    assert torch.equal(both.sort(dim=1).values, torch.arange(40).expand(5, -1))  # disjoint, complete
    assert torch.equal(torch.gather(both, 1, mask.restore), torch.arange(40).expand(5, -1))
    assert not torch.equal(mask.keep[0], mask.keep[1])  # each sample its own draw
    with pytest.raises(ValueError, match="visible"):
        random_mask(2, 3, 0.9, torch.Generator())


def test_sincos_positions_are_fixed_distinct_and_cls_is_zero():
    pos = sincos_2d(32, (5, 8))
    assert pos.shape == (1, 41, 32) and not pos[0, 0].any()
    assert torch.unique(pos[0, 1:], dim=0).shape[0] == 40
    model = MatpacModel(tiny())
    assert torch.equal(model.online.encoder.pos_embed, sincos_2d(64, (5, 8)))
    assert not model.online.encoder.pos_embed.requires_grad


@pytest.mark.parametrize("heads", [0, 3])
def test_prediction_shapes_and_the_online_branch_never_sees_masked_patches(heads):
    cfg = tiny(heads)
    model, mel, mask = model_and_input(cfg)
    enc = model.online.encoder
    n_mask = mask.masked.shape[1]
    z_v = run_blocks(enc.blocks, enc.norm, with_cls(enc, gather_tokens(patch_tokens(enc, mel), mask.keep)))
    z_hat = model.predictor(z_v, mask)
    assert z_v.shape == (3, 1 + mask.n_keep, 64)
    assert z_hat.shape == (3, n_mask, max(heads, 1), 64)
    # change only the masked patches: the prediction stays, the target changes
    grid_t = cfg.encoder.vit().grid[1]
    other = mel.clone()
    for b in range(3):
        for token in mask.masked[b].tolist():
            f, t = divmod(token, grid_t)
            other[b, f * 16 : (f + 1) * 16, t * 16 : (t + 1) * 16] = torch.randn(16, 16)
    z_v2 = run_blocks(enc.blocks, enc.norm, with_cls(enc, gather_tokens(patch_tokens(enc, other), mask.keep)))
    assert torch.equal(model.predictor(z_v2, mask), z_hat)
    target = lambda x: run_blocks(  # noqa: E731
        model.target.blocks,
        model.target.norm,
        with_cls(enc, gather_tokens(patch_tokens(enc, x), mask.masked)),
    )
    assert not torch.allclose(target(other), target(mel))
    loss, stats = model(mel, mask, step=0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(stats) == {"loss_pred", "loss_cls", "usage_entropy", "target_entropy", "latent_std"}


def test_predictor_puts_mask_tokens_at_the_masked_positions():
    """Without blocks a masked token's prediction is head(norm(mask_token + its position))."""
    cfg = tiny(predictor=PredictorConfig(embed_dim=32, depth=0, num_heads=2))
    model, mel, mask = model_and_input(cfg)
    p = model.predictor
    z_v = torch.randn(3, 1 + mask.n_keep, 64)
    got = p(z_v, mask)[:, :, 0]  # (B, n_mask, D)
    pos = p.pos_embed[0, 1:]  # (N, d)
    want = p.heads[0](p.norm(p.mask_token[0] + pos[mask.masked]))  # (B, n_mask, D)
    assert torch.allclose(got, want, atol=1e-6)


def test_classification_loss_matches_the_plain_formula():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(4, 6, 10, generator=g), torch.randn(4, 6, 10, generator=g)
    center = torch.randn(10, generator=g) * 0.1
    q = teacher_distribution(teacher, center, 0.05)
    got = classification_loss(student, q, 0.1)
    s, t, c = student.double().numpy(), teacher.double().numpy(), center.double().numpy()
    total = 0.0
    for i in range(4):
        for j in range(6):
            qe = np.exp((t[i, j] - c) / 0.05)
            qe /= qe.sum()
            pe = np.exp(s[i, j] / 0.1)
            total += -sum(qe[k] * math.log(pe[k] / pe.sum()) for k in range(10))
    assert got.item() == pytest.approx(total / 24, rel=1e-5)
    assert torch.allclose(q.sum(-1), torch.ones(4, 6))


def test_collapse_statistics_of_known_distributions():
    k = 16
    one_hot = torch.zeros(32, k)
    one_hot[:, 3] = 1.0
    uniform = torch.full((32, k), 1.0 / k)
    spread = torch.eye(k).repeat(2, 1)  # every prototype used equally, each token sure of one
    same = torch.ones(32, 8)
    iso = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))
    s = collapse_stats(one_hot, same)
    assert s["usage_entropy"] < 1e-6 and s["target_entropy"] < 1e-6 and s["latent_std"] < 1e-6
    s = collapse_stats(uniform, iso)
    assert s["usage_entropy"] == pytest.approx(1.0) and s["target_entropy"] == pytest.approx(1.0)
    assert s["latent_std"] == pytest.approx(1.0, abs=0.05)
    s = collapse_stats(spread, iso)
    assert s["usage_entropy"] == pytest.approx(1.0) and s["target_entropy"] < 1e-6


def test_centre_is_a_running_mean_of_the_teacher_distribution():
    model, mel, mask = model_and_input(tiny())
    assert not model.center.any()
    with torch.no_grad():
        enc = model.online.encoder
        z_m = run_blocks(
            model.target.blocks,
            model.target.norm,
            with_cls(enc, gather_tokens(patch_tokens(enc, mel), mask.masked)),
        )[:, 1:]
        q = teacher_distribution(model.teacher_head(z_m), model.center, model.teacher_temp(0))
    model(mel, mask, step=0)
    assert torch.allclose(model.center, 0.1 * q.reshape(-1, 64).mean(0), atol=1e-7)
    model.eval()
    before = model.center.clone()
    model(mel, mask, step=0)
    assert torch.equal(model.center, before)  # evaluation leaves it


def test_ema_update_and_schedules():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    o, t = (
        [p.detach().clone() for p in online.parameters()],
        [p.detach().clone() for p in target.parameters()],
    )
    ema_update(target, online, 0.9)
    for new, a, b in zip(target.parameters(), t, o, strict=True):
        assert torch.allclose(new, 0.9 * a + 0.1 * b, atol=1e-7)
    assert annealed(0.99995, 0.99999, 0, 100) == 0.99995 and annealed(0.99995, 0.99999, 100, 100) == 0.99999
    assert annealed(0.0, 1.0, 25, 100) == pytest.approx(0.25)

    cfg = tiny(ema_decay=0.5, ema_end_decay=0.5)
    model = MatpacModel(cfg)
    enc = model.online.encoder
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            model.target.parameters(), [*enc.blocks.parameters(), *enc.norm.parameters()], strict=True
        )
    )
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    target_before = [p.clone() for p in model.target.blocks.parameters()]
    head_before = [p.clone() for p in model.teacher_head.parameters()]
    model.momentum_update(1)
    for new, old, cur in zip(
        model.target.blocks.parameters(), target_before, enc.blocks.parameters(), strict=True
    ):
        assert torch.allclose(new, 0.5 * old + 0.5 * cur, atol=1e-6)
    d = model.head_decay(1)
    for new, old, cur in zip(
        model.teacher_head.parameters(), head_before, model.student_head.parameters(), strict=True
    ):
        assert torch.allclose(new, d * old + (1 - d) * cur, atol=1e-7)
    assert not any(p.requires_grad for p in [*model.target.parameters(), *model.teacher_head.parameters()])
    assert model.teacher_temp(0) == 0.04 and model.teacher_temp(10 * cfg.steps_per_epoch) == 0.07


def test_mcl_gives_each_token_to_its_best_head():
    cfg = tiny(heads=3)
    model = MatpacModel(cfg)
    z_hat = torch.randn(2, 5, 3, 64, requires_grad=True)
    z_m = torch.randn(2, 5, 64)
    per = 2 - 2 * torch.nn.functional.cosine_similarity(z_hat, z_m.unsqueeze(2), dim=-1)  # (2, 5, 3)
    hard_step = (
        math.ceil(
            math.log(cfg.mcl.temperature_end / cfg.mcl.temperature_start) / math.log(cfg.mcl.decay_rate)
        )
        + 1
    )
    loss, best = model._prediction_loss(z_hat, z_m, hard_step)
    assert torch.equal(best, per.argmin(-1))
    assert loss.item() == pytest.approx(per.min(-1).values.mean().item(), rel=1e-5)
    loss.backward()
    grads = z_hat.grad.abs().sum(-1)  # (2, 5, 3): only the best head of each token
    assert torch.equal(grads > 0, torch.nn.functional.one_hot(best, 3).bool())
    soft, _ = model._prediction_loss(z_hat, z_m, 0)
    w = torch.softmax(-per / cfg.mcl.temperature_start, dim=-1)
    assert soft.item() == pytest.approx((w * per).sum(-1).mean().item(), rel=1e-5)


def test_the_encoder_is_the_matpac_teacher_module():
    model, mel, _ = model_and_input(tiny())
    assert isinstance(model.online, MatpacTeacher)
    enc = model.online.encoder
    whole = run_blocks(enc.blocks, enc.norm, with_cls(enc, patch_tokens(enc, mel)))
    assert torch.allclose(enc(mel.unsqueeze(1))[:, 0], whole, atol=1e-6)


def test_saved_encoder_has_the_official_layout_and_loads_strictly(tmp_path):
    official = torch.load(FIXTURE, weights_only=True)["state_dict"]  # embed 64, depth 3, 4 heads, 608 frames
    cfg = tiny(frames=608, encoder=EncoderConfig(embed_dim=64, depth=3, num_heads=4, frames=608))
    model = MatpacModel(cfg)
    state = model.official_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in official.items()}
    for key in ("log_mel.MelSpectrogram.spectrogram.window", "log_mel.MelSpectrogram.mel_scale.fb"):
        assert torch.allclose(state[key], official[key], atol=1e-6)
    path = tmp_path / "encoder.pt"
    torch.save(state, path)
    teacher = build_matpac(path, num_heads=4)
    audio = torch.randn(2, 16000)
    assert torch.allclose(teacher(audio), model.online(audio), atol=1e-5)
    torch.save({**state, "predictor.embed.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="unexpected keys: predictor.embed.weight"):
        build_matpac(path, num_heads=4)
