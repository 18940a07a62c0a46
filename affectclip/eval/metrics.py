"""Evaluation metrics in plain numpy, defined as in evaluation.md §1 and checked against scikit-learn/scipy in tests.

Units: classification scores (WAR, UAR, recall, top-k, mAP, AUC, F1) are returned in **percent** (the field's
reporting convention); correlations and errors (Pearson, CCC, MAE, MSE, R²) are raw. Metrics that are undefined for
some classes (absent class, no positives) exclude those classes and return the excluded indices so the caller can
report them — never a silent NaN in an average.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata


def _labels(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("no samples to score (empty split?)")
    if (t < 0).any():
        raise ValueError("y_true contains negative (unknown) labels; drop or count them before scoring")
    return t, p


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = ground truth, columns = prediction (sklearn convention)."""
    t, p = _labels(y_true, y_pred)
    if t.max() >= num_classes or p.max() >= num_classes or p.min() < 0:
        raise ValueError(f"labels must lie in [0, {num_classes}); got y_true max {t.max()}, y_pred range {p.min()}..{p.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_recall(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Recall per class in percent; NaN for classes absent from the ground truth."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, 100.0 * np.diag(cm) / support, np.nan)


def war(y_true, y_pred) -> float:
    """Weighted average recall = overall accuracy (%)."""
    t, p = _labels(y_true, y_pred)
    return float(100.0 * (t == p).mean())


def uar(y_true, y_pred, num_classes: int) -> tuple[float, list[int]]:
    """Unweighted average recall (%) over classes present in y_true, and the absent (excluded) class indices."""
    rec = per_class_recall(y_true, y_pred, num_classes)
    absent = [int(i) for i in np.flatnonzero(np.isnan(rec))]
    return float(np.nanmean(rec)), absent


def top_k_accuracy(y_true, scores: np.ndarray, k: int) -> float:
    """Share (%) of samples whose true class is among the k highest scores; ties resolved towards lower index."""
    t = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != t.size:
        raise ValueError(f"scores must be [N, C] with N = {t.size}, got {s.shape}")
    true_score = s[np.arange(t.size), t]
    # classes that beat the true one: strictly higher score, or equal score and lower index
    idx = np.arange(s.shape[1])[None, :]
    beats = (s > true_score[:, None]) | ((s == true_score[:, None]) & (idx < t[:, None]))
    return float(100.0 * (beats.sum(1) < k).mean())


def _binary_targets(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"multi-label targets and scores must both be [N, C]; got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("multi-label targets must be 0/1")
    return y.astype(bool), s


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """AP = Σ_n (R_n − R_{n−1}) P_n over distinct score thresholds (no interpolation), as sklearn."""
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # end of each block of tied scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true, scores) -> tuple[float, list[int]]:
    """Macro mAP (%) over classes with ≥ 1 positive; returns the excluded class indices."""
    y, s = _binary_targets(y_true, scores)
    keep = [c for c in range(y.shape[1]) if y[:, c].any()]
    if not keep:
        raise ValueError("no class has a positive sample; mAP is undefined")
    aps = [average_precision(y[:, c], s[:, c]) for c in keep]
    return float(100.0 * np.mean(aps)), sorted(set(range(y.shape[1])) - set(keep))


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Binary ROC-AUC via the Mann–Whitney statistic with average ranks for ties."""
    ranks = rankdata(s)
    pos = y.sum()
    neg = y.size - pos
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_auc_macro(y_true, scores) -> tuple[float, list[int]]:
    """Macro ROC-AUC (%) over classes having both label values; returns the excluded class indices."""
    y, s = _binary_targets(y_true, scores)
    keep = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < y.shape[0]]
    if not keep:
        raise ValueError("no class has both positive and negative samples; AUC is undefined")
    aucs = [roc_auc(y[:, c], s[:, c]) for c in keep]
    return float(100.0 * np.mean(aucs)), sorted(set(range(y.shape[1])) - set(keep))


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def weighted_f1(y_true, y_pred, num_classes: int) -> float:
    """Σ_c (N_c/N)·F1_c in percent (MELD convention, = sklearn average='weighted')."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(float)
    f1 = np.nan_to_num(_f1(tp, cm.sum(0) - tp, cm.sum(1) - tp))
    support = cm.sum(1)
    return float(100.0 * (f1 * support).sum() / support.sum())


def au_f1(y_true, probs, threshold: float = 0.5) -> tuple[np.ndarray, float]:
    """Per-AU binary F1 (%) at `threshold` on probabilities, and their mean over AUs with a defined F1.

    An AU with no positives and no predicted positives has an undefined F1 (NaN) and is left out of the mean.
    """
    y, p = _binary_targets(y_true, probs)
    pred = p >= threshold
    tp = (pred & y).sum(0).astype(float)
    per_au = 100.0 * _f1(tp, (pred & ~y).sum(0), (~pred & y).sum(0))
    if np.isnan(per_au).all():
        raise ValueError("F1 is undefined for every AU (no positives and no predictions)")
    return per_au, float(np.nanmean(per_au))


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two equal-length series with ≥ 2 values, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("regression targets/predictions contain NaN or inf")
    return x, y


def pearson(a, b, eps: float = 0.0) -> float:
    """Pearson correlation; `eps` added to the denominator reproduces EmoCLIP (1e-5)."""
    x, y = _pair(a, b)
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / (np.sqrt((xc**2).sum() * (yc**2).sum()) + eps))


def ccc(a, b, eps: float = 0.0) -> float:
    """Lin's concordance correlation with biased (population) variances; `eps` as EmoCLIP (1e-5)."""
    x, y = _pair(a, b)
    cov = ((x - x.mean()) * (y - y.mean())).mean()
    return float(2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2 + eps))


def mae(a, b) -> float:
    x, y = _pair(a, b)
    return float(np.abs(x - y).mean())


def mse(a, b) -> float:
    x, y = _pair(a, b)
    return float(((x - y) ** 2).mean())


def r2(y_true, y_pred) -> float:
    """R² averaged uniformly over outputs (columns); a constant target column is rejected (R² undefined)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    t, p = (t[:, None], p[:, None]) if t.ndim == 1 else (t, p)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    if (ss_tot == 0).any():
        raise ValueError(f"R² is undefined for constant target columns {np.flatnonzero(ss_tot == 0).tolist()}")
    return float(np.mean(1 - ((t - p) ** 2).sum(0) / ss_tot))


def regression_report(y_true, y_pred, names: Sequence[str], eps: float = 0.0) -> dict:
    """Per-dimension Pearson, CCC (pooled over the split), MAE, MSE, R², plus their means over dimensions."""
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    if t.shape[1] != len(names):
        raise ValueError(f"{t.shape[1]} target dimensions but {len(names)} names")
    per_dim = {
        n: {
            "pearson": pearson(t[:, i], p[:, i], eps),
            "ccc": ccc(t[:, i], p[:, i], eps),
            "mae": mae(t[:, i], p[:, i]),
            "mse": mse(t[:, i], p[:, i]),
            "r2": r2(t[:, i], p[:, i]),
        }
        for i, n in enumerate(names)
    }
    means = {k: float(np.mean([d[k] for d in per_dim.values()])) for k in ("pearson", "ccc", "mae", "mse", "r2")}
    return {"per_dimension": per_dim, **means, "ccc_convention": "pooled over the split"}


def retrieval_ranks(similarity: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """0-based rank of the best-ranked positive candidate for each query row.

    Candidates are ranked by decreasing similarity; ties are broken by candidate index (lower first), so results are
    deterministic. `positives[q]` lists the candidate indices that count as a hit for query q (several captions).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != len(positives):
        raise ValueError(f"similarity must be [Q, N] with Q = {len(positives)} queries, got {sim.shape}")
    order = np.argsort(-sim, axis=1, kind="stable")
    rank_of = np.empty_like(order)
    rank_of[np.arange(sim.shape[0])[:, None], order] = np.arange(sim.shape[1])[None, :]
    ranks = []
    for q, pos in enumerate(positives):
        if len(pos) == 0:
            raise ValueError(f"query {q} has no ground-truth candidate")
        ranks.append(rank_of[q, list(pos)].min())
    return np.asarray(ranks)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (%) for each K plus median and mean rank (1-based), from `retrieval_ranks` output."""
    r = np.asarray(ranks)
    out = {f"R@{k}": float(100.0 * (r < k).mean()) for k in ks}
    out["median_rank"] = float(np.median(r) + 1)
    out["mean_rank"] = float(r.mean() + 1)
    return out


def stratified_bootstrap(
    y_true, statistic: Callable[[np.ndarray], float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Percentile confidence interval of `statistic(indices)` over bootstrap resamples of the samples.

    Resampling happens within each class, so every resample keeps the split's class counts: a per-class mean such
    as UAR is then always defined, and a class of 16 images is never dropped from a resample. Pass a statistic of
    paired predictions (e.g. one model's UAR minus another's on the same indices) for a paired interval."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    if t.size == 0:
        raise ValueError("no samples to resample")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(t == c) for c in np.unique(t)]
    values = np.array([statistic(np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups]))
                       for _ in range(n_boot)])
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return {"estimate": float(statistic(np.arange(t.size))), "low": float(lo), "high": float(hi),
            "level": level, "n_boot": n_boot, "std": float(values.std())}


def aggregate_folds(per_fold: Sequence[dict[str, float]]) -> dict[str, dict[str, float] | list[float]]:
    """Mean and std over folds of each per-fold scalar metric (never pooled predictions), keeping the fold values."""
    if not per_fold:
        raise ValueError("no folds to aggregate")
    keys = [k for k, v in per_fold[0].items() if isinstance(v, (int, float))]
    missing = [k for k in keys for f in per_fold if k not in f]
    if missing:
        raise ValueError(f"fold results disagree on metric names: {sorted(set(missing))} missing in some folds")
    return {
        "mean": {k: float(np.mean([f[k] for f in per_fold])) for k in keys},
        "std": {k: float(np.std([f[k] for f in per_fold])) for k in keys},
        "per_fold": {k: [float(f[k]) for f in per_fold] for k in keys},
        "convention": "mean of per-fold metrics (not pooled)",
    }


def classification_report(y_true, scores: np.ndarray, class_names: Sequence[str], failures: int = 0) -> dict:
    """WAR, UAR, top-5 (C ≥ 5), per-class recall, confusion matrix and counts from [N, C] scores.

    `failures` (samples that could not be loaded/detected) are scored as wrong in `war_all`, which divides by
    N + failures; the main figures are on the N evaluated samples. Predictions are argmax with lowest-index ties.
    """
    s = np.asarray(scores, dtype=np.float64)
    c = len(class_names)
    if s.ndim != 2 or s.shape[1] != c:
        raise ValueError(f"scores must be [N, {c}] for {c} classes, got {s.shape}")
    t = np.asarray(y_true, dtype=np.int64)
    pred = s.argmax(1)
    u, absent = uar(t, pred, c)
    rec = per_class_recall(t, pred, c)
    total = t.size + failures
    out = {
        "war": war(t, pred),
        "uar": u,
        "war_all": float(100.0 * (t == pred).sum() / total),
        "n_samples": int(t.size),
        "n_failures": int(failures),
        "n_classes": c,
        "n_classes_present": c - len(absent),
        "classes_absent": [class_names[i] for i in absent],
        "per_class_recall": {n: (None if np.isnan(r) else float(r)) for n, r in zip(class_names, rec, strict=True)},
        "confusion_matrix": confusion_matrix(t, pred, c).tolist(),
    }
    if c >= 5:
        out["top5"] = top_k_accuracy(t, s, 5)
    return out
