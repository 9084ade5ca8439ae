"""Each loss against its plain formula (python loops over the batch), mixup mixing, the
cluster-aware masks, and finite gradients in fp32 and bf16."""

from __future__ import annotations

import math

import pytest
import torch

from ssondo_distill.losses import LOSSES, ClusterContrastiveLoss, build_loss, mixup_loss

B, D = 6, 10


@pytest.fixture()
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(
        B, D, generator=g, dtype=torch.float64
    )


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        sum(x * y for x, y in zip(a, b, strict=True))
        / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    )


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def _plain(name: str, p: torch.Tensor, t: torch.Tensor, clusters=None, temperature=1.0) -> list[float]:
    """Per-sample losses from the textbook formulas, one python float at a time."""
    n = len(p)
    if name == "cosine":
        return [1 - _cos(p[i], t[i]) for i in range(n)]
    if name == "mse":
        return [float(sum((p[i][d] - t[i][d]) ** 2 for d in range(D)) / D) for i in range(n)]
    if name == "l1":
        return [float(sum(abs(p[i][d] - t[i][d]) for d in range(D)) / D) for i in range(n)]
    if name == "kl":
        out = []
        for i in range(n):
            ps = _softmax([float(x) / temperature for x in p[i]])
            pt = _softmax([float(x) / temperature for x in t[i]])
            kl = sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True)) / D  # mean over D
            out.append(kl * temperature**2)
        return out
    # symmetric InfoNCE over cosine logits, optionally without same-cluster negatives
    sim = [[_cos(p[i], t[j]) / temperature for j in range(n)] for i in range(n)]

    def keep(i: int, j: int) -> bool:
        return i == j or clusters is None or clusters[i] != clusters[j]

    out = []
    for i in range(n):
        row = -sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n) if keep(i, j)))
        col = -sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(n) if keep(j, i)))
        out.append(0.5 * (row + col))
    return out


@pytest.mark.parametrize(
    "name, opts",
    [
        ("cosine", {}),
        ("mse", {}),
        ("l1", {}),
        ("kl", {"temperature": 1.0}),
        ("kl", {"temperature": 2.5}),
        ("clap", {"temperature": 0.1}),
    ],
)
def test_loss_matches_plain_formula(pair, name: str, opts: dict) -> None:
    p, t = pair
    loss = build_loss(name, **opts)
    ref = _plain(name, p, t, temperature=opts.get("temperature", 1.0))
    assert loss(p, t).item() == pytest.approx(sum(ref) / B, rel=1e-6)
    assert loss.per_sample(p, t).tolist() == pytest.approx(ref, rel=1e-6)


def test_torch_equivalents(pair) -> None:
    p, t = pair
    assert build_loss("mse")(p, t).item() == pytest.approx(torch.nn.functional.mse_loss(p, t).item())
    assert build_loss("l1")(p, t).item() == pytest.approx(torch.nn.functional.l1_loss(p, t).item())
    assert build_loss("cosine")(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_cluster_contrastive_masks(pair) -> None:
    p, t = pair
    clusters = torch.tensor([0, 1, 0, 2, 1, 0])
    mask = ClusterContrastiveLoss.negatives_mask(clusters)
    expected = [[i != j and int(clusters[i]) == int(clusters[j]) for j in range(B)] for i in range(B)]
    assert mask.tolist() == expected
    assert not mask.diagonal().any()  # the positive pair is never masked
    loss = build_loss("cluster_contrastive", temperature=0.1)
    ref = _plain("cluster", p, t, clusters=clusters.tolist(), temperature=0.1)
    assert loss.per_sample(p, t, clusters=clusters).tolist() == pytest.approx(ref, rel=1e-6)
    # all-distinct clusters: plain CLAP; one cluster for all: only positives left, loss 0
    clap = build_loss("clap", temperature=0.1)(p, t).item()
    assert loss(p, t, clusters=torch.arange(B)).item() == pytest.approx(clap, rel=1e-9)
    assert loss(p, t, clusters=torch.zeros(B, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="needs clusters"):
        loss(p, t)
    with pytest.raises(ValueError, match="clusters must be"):
        loss(p, t, clusters=torch.zeros(B + 1, dtype=torch.long))


def test_mixup_mixed_cosine(pair) -> None:
    """The mixed input's prediction is scored against both original targets, lam-weighted."""
    p, t = pair
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    lam = torch.tensor([0.5, 0.9, 0.7, 1.0, 0.6, 0.8], dtype=torch.float64)
    got = mixup_loss(build_loss("cosine"), p, t, perm, lam).item()
    ref = (
        sum(
            float(lam[i]) * (1 - _cos(p[i], t[i])) + (1 - float(lam[i])) * (1 - _cos(p[i], t[int(perm[i])]))
            for i in range(B)
        )
        / B
    )
    assert got == pytest.approx(ref, rel=1e-6)
    # lam = 1 everywhere: plain loss; identity permutation: plain loss
    assert mixup_loss(build_loss("cosine"), p, t, perm, torch.ones(B)).item() == pytest.approx(
        build_loss("cosine")(p, t).item(), rel=1e-6
    )
    assert mixup_loss(build_loss("mse"), p, t, torch.arange(B), lam).item() == pytest.approx(
        build_loss("mse")(p, t).item(), rel=1e-6
    )


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_is_the_references_formula(pair, temperature) -> None:
    """The reference (system.py, _kd_loss_kl_div): torch's KLDivLoss(reduction="none") on
    (log_softmax(pred / T), softmax(target / T)), times T^2, averaged over batch AND embedding
    dimensions; with mixup the per-sample mean over D, lam-weighted against both targets."""
    p, t = pair
    kl_div = torch.nn.KLDivLoss(reduction="none")
    log_student = torch.nn.functional.log_softmax(p / temperature, dim=1)
    teacher = torch.nn.functional.softmax(t / temperature, dim=1)
    ref = (kl_div(log_student, teacher) * temperature**2).mean()
    loss = build_loss("kl", temperature=temperature)
    assert loss(p, t).item() == pytest.approx(ref.item(), rel=1e-9)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    lam = torch.tensor([0.5, 0.9, 0.7, 1.0, 0.6, 0.8], dtype=torch.float64)
    mixed = kl_div(log_student, teacher).mean(dim=1) * lam
    mixed = mixed + kl_div(log_student, teacher[perm]).mean(dim=1) * (1 - lam)
    got = mixup_loss(loss, p, t, perm, lam).item()
    assert got == pytest.approx((mixed * temperature**2).mean().item(), rel=1e-9)


@pytest.mark.parametrize("name", ["clap", "cluster_contrastive"])
def test_mixup_refuses_contrastive_losses(pair, name) -> None:
    """Mixup's second term scores against the permuted targets, where a mixed sample's own
    target is a negative: refused (the trainer's config refuses it first, see test_config)."""
    p, t = pair
    loss = build_loss(name)
    with pytest.raises(ValueError, match="contrastive: mixup cannot be used"):
        mixup_loss(loss, p, t, torch.arange(B).flip(0), torch.full((B,), 0.75), clusters=torch.arange(B))


@pytest.mark.parametrize("name", ["cosine", "mse", "l1", "kl", "clap", "cluster_contrastive"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_are_finite(name: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(B, D, generator=g).to(dtype).requires_grad_()
    target = torch.randn(B, D, generator=g).to(dtype)
    extra = {"clusters": torch.tensor([0, 1, 0, 2, 1, 3])} if name == "cluster_contrastive" else {}
    loss = build_loss(name)
    value = loss(pred, target, **extra)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert pred.grad is not None and pred.grad.dtype == dtype
    assert torch.isfinite(pred.grad.float()).all() and pred.grad.abs().sum() > 0
    if not loss.mixup_ok:
        return
    # and through the mixup path
    pred.grad = None
    mixup_loss(loss, pred, target, torch.randperm(B, generator=g), torch.full((B,), 0.7), **extra).backward()
    assert torch.isfinite(pred.grad.float()).all()


def test_registry_and_errors(pair) -> None:
    p, t = pair
    assert set(LOSSES.names()) == {"cosine", "mse", "l1", "kl", "clap", "cluster_contrastive"}
    with pytest.raises(KeyError, match="unknown loss"):
        build_loss("hinge")
    with pytest.raises(ValueError, match="must both be"):
        build_loss("cosine")(p, t[:, :3])
    with pytest.raises(ValueError, match="temperature"):
        build_loss("kl", temperature=0.0)
    with pytest.raises(ValueError, match="perm and lam"):
        mixup_loss(build_loss("cosine"), p, t, torch.arange(B - 1), torch.ones(B))
