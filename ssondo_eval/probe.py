"""Linear probe on frozen clip embeddings, following the EVAR protocol MATPAC and M2D report.

Per split: a StandardScaler fitted on the training rows only, one linear layer (or a small MLP), Adam
with batches of min(200, n) rows and a learning rate picked on the validation split from a small grid
(EVAR fixes one ``lr_lineareval`` per model; the chosen value is in every result), up to
``max_epochs`` epochs with early stopping on the validation split (patience ``patience``; the
weights of the best validation epoch are restored), softmax cross-entropy for single-label tasks and
BCE for multi-label ones. Scores: accuracy or macro mAP. Repeated over seeds; reported as the mean
and a 95 % confidence interval from the t-distribution. The test rows are only ever scored, once,
with the weights chosen on validation: they never pick an epoch, a class list or a scaler.

Each split also keeps its per-item test predictions (``SplitResult.test_pred``: the predicted class of
each test row, or its C scores for multi-label tasks), so that a report can resample the test items
(``ssondo_eval.bootstrap``) instead of trusting the seeds' spread alone.

Labels:
- single-label: ``y`` int64 (N,) class indices;
- multi-label: ``y`` float32 (N, C) in {0, 1}, NaN where a label was not annotated (OpenMIC):
  such entries count neither in the loss nor in the AP of that class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ssondo_eval.probe_scores import mean_ci, prediction, task_score

LR_GRID = (3e-4, 1e-3, 3e-3)  # around EVAR's per-model lr_lineareval values


@dataclass
class ProbeConfig:
    hidden: tuple[int, ...] = ()  # () = linear probe; (512,) = one hidden layer MLP
    lr: tuple[float, ...] = LR_GRID  # Adam learning rates; several: picked on validation (see probe_folds)
    weight_decay: float = 1e-8  # EVAR's tiny L2
    batch_size: int = 200  # EVAR's min(200, n): a split smaller than this trains full-batch
    max_epochs: int = 200
    patience: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    val_fraction: float = 0.1  # carved from the training rows when a split has no validation part

    def __post_init__(self) -> None:
        self.lr = (float(self.lr),) if isinstance(self.lr, (int, float)) else tuple(map(float, self.lr))
        if not self.lr or min(self.lr) <= 0:
            raise ValueError(f"probe learning rates must be positive, got {self.lr}")
        if not self.seeds:
            raise ValueError("a probe needs at least one seed")


@dataclass
class SplitResult:
    test_score: float
    val_score: float
    best_epoch: int  # 0-based epoch whose weights were kept
    epochs_run: int
    lr: float | None = None  # the Adam learning rate this probe trained with
    val_loss: float | None = None  # validation loss at the kept epoch (breaks ties when picking lr)
    # per test row, in the fold's test order: int32 (n,) predicted class, or float32 (n, C) scores
    test_pred: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "test_pred"}


@dataclass
class ProbeResult:
    metric: str  # "accuracy" | "mAP"
    scores: list[float]  # one per seed (mean over folds when the task has folds)
    mean: float
    ci95: float | None  # half width of the 95 % t interval; None with a single seed
    splits: list[list[SplitResult]] = field(default_factory=list)  # [seed][fold]

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "scores": self.scores,
            "mean": self.mean,
            "ci95": self.ci95,
            "lr_chosen": sorted({s.lr for per_seed in self.splits for s in per_seed if s.lr is not None}),
            "splits": [[s.to_dict() for s in per_seed] for per_seed in self.splits],
        }

    def test_predictions(self) -> list[list[np.ndarray]]:
        """[seed][fold] per-item test predictions (see :class:`SplitResult`)."""
        return [[s.test_pred for s in per_seed] for per_seed in self.splits]


def _build_model(dim: int, n_out: int, hidden: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(dim, width), nn.ReLU(), nn.Dropout(0.5)]
        dim = width
    layers.append(nn.Linear(dim, n_out))
    return nn.Sequential(*layers)


def _loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if not multilabel:
        return F.cross_entropy(logits, y)  # logits (B, C), y (B,) int
    known = ~torch.isnan(y)  # (B, C)
    bce = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y), reduction="none")
    return (bce * known).sum() / known.sum().clamp(min=1)


def _stacked_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Sum over M stacked probes of each one's :func:`_loss`: logits (M, B, C), y (M, B) or (M, B, C)."""
    m, bsz, c = logits.shape
    if not multilabel:
        return (
            F.cross_entropy(logits.reshape(m * bsz, c), y.reshape(-1), reduction="none")
            .view(m, bsz)
            .mean(1)
            .sum()
        )
    known = ~torch.isnan(y)  # (M, B, C)
    bce = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y), reduction="none")
    return ((bce * known).sum((1, 2)) / known.sum((1, 2)).clamp(min=1)).sum()


def _forward_all(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return model(x).numpy()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_and_score(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    multilabel: bool,
    n_classes: int,
    config: ProbeConfig,
    seed: int,
    lr: float | None = None,
) -> SplitResult:
    """Train one probe with one seed and one learning rate (default: the config's first) on one split;
    score the restored best epoch on test."""
    lr = config.lr[0] if lr is None else lr
    scaler = StandardScaler().fit(X_train)  # statistics of the training rows only

    def prep(X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(scaler.transform(X).astype(np.float32))

    xtr, xva, xte = prep(X_train), prep(X_val), prep(X_test)
    ytr = torch.from_numpy(y_train.astype(np.float32 if multilabel else np.int64))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _build_model(xtr.shape[1], n_classes, tuple(config.hidden))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    n = xtr.shape[0]
    bs = min(config.batch_size, n)

    yva = torch.from_numpy(y_val.astype(np.float32 if multilabel else np.int64))
    best = (-math.inf, math.inf)  # (val score, val loss): higher score wins, ties go to lower loss
    best_state, best_epoch, epoch = _snapshot(model), 0, 0
    for epoch in range(config.max_epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            loss = _loss(model(xtr[idx]), ytr[idx], multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_logits = _forward_all(model, xva)
        val_score = task_score(val_logits, y_val, multilabel)
        # the loss only breaks ties, so it is computed only when the score could win
        val_loss = (
            float(_loss(torch.from_numpy(val_logits), yva, multilabel)) if val_score >= best[0] else 0.0
        )
        if val_score > best[0] or (val_score == best[0] and val_loss < best[1]):
            best, best_epoch = (val_score, val_loss), epoch
            best_state = _snapshot(model)
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    test_logits = _forward_all(model, xte)
    return SplitResult(
        test_score=task_score(test_logits, y_test, multilabel),
        val_score=best[0],
        best_epoch=best_epoch,
        epochs_run=epoch + 1,
        lr=lr,
        val_loss=best[1],
        test_pred=prediction(test_logits, multilabel),
    )


def fit_many(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    multilabel: bool,
    n_classes: int,
    config: ProbeConfig,
    runs: Sequence[tuple[int, float]],
) -> list[SplitResult]:
    """:func:`fit_and_score` for every (seed, lr) of ``runs`` on one split, trained together.

    The M linear probes are one stacked (M, C, D) weight: each starts from its own seed's init, draws
    its own seed's minibatch order, takes its own Adam steps (torch's arithmetic, L2 weight decay) and
    stops on its own validation patience; they share only the passes over the data (one batched
    matmul per step instead of M), so the pass ends with the last probe to stop. A probe with hidden
    layers (dropout draws) is trained alone by :func:`fit_and_score`."""
    if config.hidden or len(runs) == 1:
        rows = (X_train, y_train, X_val, y_val, X_test, y_test)
        opts = {"multilabel": multilabel, "n_classes": n_classes, "config": config}
        return [fit_and_score(*rows, **opts, seed=seed, lr=lr) for seed, lr in runs]
    scaler = StandardScaler().fit(X_train)  # statistics of the training rows only

    def prep(X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(scaler.transform(X).astype(np.float32))

    xtr, xva, xte = prep(X_train), prep(X_val), prep(X_test)
    ytr = torch.from_numpy(y_train.astype(np.float32 if multilabel else np.int64))
    yva = torch.from_numpy(y_val.astype(np.float32 if multilabel else np.int64))
    m_runs, (n, dim) = len(runs), xtr.shape
    inits = []
    for seed, _ in runs:  # each probe's init exactly as fit_and_score draws it
        torch.manual_seed(seed)
        inits.append(_build_model(dim, n_classes, ()))
    W = torch.stack([lin[0].weight.detach() for lin in inits]).requires_grad_()  # (M, C, D)
    b = torch.stack([lin[0].bias.detach() for lin in inits]).requires_grad_()  # (M, C)
    gens = {seed: torch.Generator().manual_seed(seed) for seed, _ in runs}
    beta1, beta2, eps, wd = 0.9, 0.999, 1e-8, config.weight_decay  # torch.optim.Adam's defaults
    state = [(torch.zeros_like(t), torch.zeros_like(t)) for t in (W, b)]  # (exp_avg, exp_avg_sq)
    lrs = np.array([lr for _, lr in runs], dtype=np.float64)
    bs = min(config.batch_size, n)
    best = [(-math.inf, math.inf)] * m_runs  # per probe: (val score, val loss)
    best_w, best_b = W.detach().clone(), b.detach().clone()
    best_epoch, epochs_run = [0] * m_runs, [0] * m_runs
    running, step = np.ones(m_runs, dtype=bool), 0
    for epoch in range(config.max_epochs):
        orders = {seed: torch.randperm(n, generator=g) for seed, g in gens.items()}
        order = torch.stack([orders[seed] for seed, _ in runs])  # (M, n)
        for start in range(0, n, bs):
            idx = order[:, start : start + bs]  # (M, B)
            logits = torch.baddbmm(b[:, None, :], xtr[idx], W.transpose(1, 2))  # (M, B, C)
            loss = _stacked_loss(logits, ytr[idx], multilabel)
            W.grad = b.grad = None
            loss.backward()
            step += 1
            with torch.no_grad():  # torch.optim.Adam's single-tensor update, lr per probe
                bc1, bc2_sqrt = 1 - beta1**step, (1 - beta2**step) ** 0.5
                for p, (m1, m2) in zip((W, b), state, strict=True):
                    g = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
                    m1.lerp_(g, 1 - beta1)
                    m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    size = torch.from_numpy(-(lrs / bc1)).float().view(-1, *[1] * (p.dim() - 1))
                    p.add_(size * m1 / ((m2.sqrt() / bc2_sqrt).add_(eps)))
        with torch.inference_mode():
            val_logits = torch.baddbmm(b[:, None, :], xva.expand(m_runs, -1, -1), W.transpose(1, 2)).numpy()
        for j in np.flatnonzero(running):
            val_score = task_score(val_logits[j], y_val, multilabel)
            val_loss = (
                float(_loss(torch.from_numpy(val_logits[j]), yva, multilabel))
                if val_score >= best[j][0]
                else 0.0
            )
            epochs_run[j] = epoch + 1
            if val_score > best[j][0] or (val_score == best[j][0] and val_loss < best[j][1]):
                best[j], best_epoch[j] = (val_score, val_loss), epoch
                best_w[j], best_b[j] = W[j].detach(), b[j].detach()
            elif epoch - best_epoch[j] >= config.patience:
                running[j] = False
        if not running.any():
            break
    out = []
    for j, (_, lr) in enumerate(runs):
        test_logits = F.linear(xte, best_w[j], best_b[j]).numpy()
        out.append(
            SplitResult(
                test_score=task_score(test_logits, y_test, multilabel),
                val_score=best[j][0],
                best_epoch=best_epoch[j],
                epochs_run=epochs_run[j],
                lr=lr,
                val_loss=best[j][1],
                test_pred=prediction(test_logits, multilabel),
            )
        )
    return out


def carve_validation(
    train_idx: np.ndarray, y: np.ndarray, fraction: float, seed: int, multilabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (train, val) when a task gives no validation split.

    Single-label: stratified, at least one row per class that has two or more rows. Multi-label: random.
    Uses only training rows, so the test rows never influence the choice of epoch.
    """
    rng = np.random.default_rng(seed)
    train_idx = np.asarray(train_idx)
    if multilabel:
        perm = rng.permutation(train_idx)
        n_val = max(1, round(fraction * len(perm)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    val: list[int] = []
    for c in np.unique(y[train_idx]):
        rows = rng.permutation(train_idx[y[train_idx] == c])
        if len(rows) >= 2:
            val.extend(rows[: max(1, round(fraction * len(rows)))].tolist())
    val_arr = np.array(sorted(val), dtype=np.int64)
    return np.setdiff1d(train_idx, val_arr), val_arr


def run_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    multilabel: bool = False,
    n_classes: int | None = None,
    config: ProbeConfig | None = None,
) -> ProbeResult:
    """Probe one (train, val, test) split with every seed of ``config``."""
    X = np.concatenate([X_train, X_val, X_test])
    y = np.concatenate([y_train, y_val, y_test])
    a, b = len(X_train), len(X_train) + len(X_val)
    fold = (np.arange(a), np.arange(a, b), np.arange(b, len(X)))
    return probe_folds(X, y, [fold], multilabel=multilabel, n_classes=n_classes, config=config)


def probe_folds(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    *,
    multilabel: bool = False,
    n_classes: int | None = None,
    config: ProbeConfig | None = None,
    progress: bool = False,
) -> ProbeResult:
    """Probe every (train, val, test) row-index triple with every seed.

    A fold whose val is None (or empty) gets ``config.val_fraction`` of its training rows as validation
    (EVAR does the same for cross-validated tasks). With several ``config.lr`` values, each fold's
    learning rate is the one whose probe with the first seed scores best on that fold's validation
    rows (ties: lower validation loss, then the earlier value); that probe is the first seed's result
    and the other seeds train with the same rate. Per seed the score is the mean over folds; the
    confidence interval is over seeds. The learning rates' probes train together in one pass
    (:func:`fit_many`), then the other seeds' (together where they share their validation rows).
    """
    config = config or ProbeConfig()
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"expected X (N, D) and y with N rows, got X {X.shape} and y {np.shape(y)}")
    if not np.isfinite(X).all():
        raise ValueError("embeddings contain NaN or inf: refusing to probe them")
    if n_classes is None:
        n_classes = y.shape[1] if multilabel else int(y.max()) + 1
    per_seed, splits = [], []
    results: dict[tuple[int, int], SplitResult] = {}
    opts = {"multilabel": multilabel, "n_classes": n_classes, "config": config}
    for f in tqdm(range(len(folds)), desc="probe", disable=not progress, leave=False):
        split_of = {}
        for seed in config.seeds:
            train_idx, val_idx, test_idx = folds[f]
            if val_idx is None or len(val_idx) == 0:
                train_idx, val_idx = carve_validation(train_idx, y, config.val_fraction, seed, multilabel)
            if len(train_idx) == 0 or len(val_idx) == 0 or len(test_idx) == 0:
                raise ValueError(
                    f"fold {f}: empty split (train {len(train_idx)}, val {len(val_idx)}, test {len(test_idx)})"
                )
            split_of[seed] = (train_idx, val_idx, test_idx)
        rows = {seed: [a[i] for i in split for a in (X, y)] for seed, split in split_of.items()}

        first = config.seeds[0]  # the first seed picks the fold's learning rate on validation
        tried = fit_many(*rows[first], **opts, runs=[(first, lr) for lr in config.lr])
        best = max(range(len(tried)), key=lambda i: (tried[i].val_score, -tried[i].val_loss, -i))
        chosen, results[first, f] = config.lr[best], tried[best]
        together: dict[tuple[bytes, bytes], list[int]] = {}  # seeds training on the same rows
        for seed in config.seeds[1:]:
            together.setdefault((split_of[seed][0].tobytes(), split_of[seed][1].tobytes()), []).append(seed)
        for seeds in together.values():
            fits = fit_many(*rows[seeds[0]], **opts, runs=[(seed, chosen) for seed in seeds])
            results.update({(seed, f): r for seed, r in zip(seeds, fits, strict=True)})
    for seed in config.seeds:
        row = [results[seed, f] for f in range(len(folds))]
        splits.append(row)
        per_seed.append(float(np.mean([r.test_score for r in row])))
    mean, ci = mean_ci(per_seed)
    return ProbeResult(
        metric="mAP" if multilabel else "accuracy", scores=per_seed, mean=mean, ci95=ci, splits=splits
    )
