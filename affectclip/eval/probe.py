"""Linear probes on frozen, L2-normalised features (evaluation.md §4).

Regularisation is chosen on a held-out stratified 10 % of the TRAINING split — never on test (pitfall §6.7) — over a
log-spaced grid (`C_GRID`: 1e-6 … 1e6, one point per decade, the range OpenAI CLIP swept), then the model is refit
on the full training split. `C` fixes the value instead (paper parity); `protocol="emotionclip"` reproduces
EmotionCLIP's `LogisticRegression(solver='sag', max_iter=2000, random_state=2022)`. Few-shot probes have no
validation data, so they use a fixed C (sklearn's default 1.0 unless given) and report mean ± std over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier

from affectclip.eval import metrics as M

C_GRID = np.logspace(-6, 6, 13)
ALPHA_GRID = np.logspace(-4, 4, 9)
PROTOCOLS = {
    "affectclip": {"solver": "lbfgs", "max_iter": 1000},
    "emotionclip": {"solver": "sag", "max_iter": 2000, "random_state": 2022},
}
FEWSHOT_K = (1, 2, 4, 8, 16)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"features must be a finite [N, D] array, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _logreg(C: float, protocol: str, seed: int) -> LogisticRegression:
    if protocol not in PROTOCOLS:
        raise ValueError(f"probe protocol must be one of {sorted(PROTOCOLS)}, got '{protocol}'")
    kw = {"random_state": seed, **PROTOCOLS[protocol]}
    return LogisticRegression(C=float(C), **kw)


def _holdout(n: int, stratify: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the 90 % fit part and the 10 % validation part of the training split."""
    idx = np.arange(n)
    try:
        return tuple(train_test_split(idx, test_size=0.1, random_state=seed, stratify=stratify))
    except ValueError as exc:  # a class with a single sample cannot be stratified
        raise ValueError(
            f"cannot hold out a stratified 10 % of the training split ({exc}); pass a fixed C/alpha instead"
        ) from exc


def _sweep(grid: Sequence[float], score) -> tuple[float, dict[str, float]]:
    """Grid value with the best validation score (first one on ties) and all scores."""
    scores = {f"{v:.6g}": score(v) for v in grid}
    best = max(scores, key=scores.get)
    return float(best), scores


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: Sequence[str],
    C: float | None = None,
    grid: Sequence[float] = C_GRID,
    protocol: str = "affectclip",
    seed: int = 0,
) -> dict:
    """Single-label logistic-regression probe -> classification report + the chosen C and the sweep."""
    xtr, xte = l2_normalise(train_x), l2_normalise(test_x)
    ytr = np.asarray(train_y, dtype=np.int64)
    sweep = None
    if C is None:
        fit, val = _holdout(len(ytr), ytr, seed)
        C, sweep = _sweep(
            grid, lambda c: M.uar(ytr[val], _logreg(c, protocol, seed).fit(xtr[fit], ytr[fit]).predict(xtr[val]),
                                  len(class_names))[0]
        )
    clf = _logreg(C, protocol, seed).fit(xtr, ytr)
    scores = np.full((len(xte), len(class_names)), -np.inf)
    scores[:, clf.classes_] = clf.predict_log_proba(xte)
    return {
        "metrics": M.classification_report(test_y, scores, class_names),
        "probe": {"C": C, "selected_on": "stratified 10% of train (UAR)" if sweep else "fixed", "sweep": sweep,
                  "protocol": protocol, **PROTOCOLS[protocol], "seed": seed},
    }


def multilabel_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    C: float | None = None,
    grid: Sequence[float] = C_GRID,
    protocol: str = "affectclip",
    seed: int = 0,
) -> dict:
    """One-vs-rest logistic regression on 0/1 targets [N, K] -> mAP and macro AUC (EMOTIC, BoLD)."""
    xtr, xte = l2_normalise(train_x), l2_normalise(test_x)
    ytr = np.asarray(train_y, dtype=np.int64)

    def fit(c: float, x: np.ndarray, y: np.ndarray) -> OneVsRestClassifier:
        return OneVsRestClassifier(_logreg(c, protocol, seed)).fit(x, y)

    sweep = None
    if C is None:
        f, v = _holdout(len(ytr), None, seed)
        C, sweep = _sweep(grid, lambda c: M.mean_average_precision(ytr[v], fit(c, xtr[f], ytr[f]).predict_proba(xtr[v]))[0])
    prob = fit(C, xtr, ytr).predict_proba(xte)
    m_ap, no_pos = M.mean_average_precision(test_y, prob)
    auc, no_auc = M.roc_auc_macro(test_y, prob)
    return {
        "metrics": {"mAP": m_ap, "AUC": auc, "classes_excluded_mAP": no_pos, "classes_excluded_AUC": no_auc,
                    "n_samples": len(xte)},
        "probe": {"C": C, "selected_on": "random 10% of train (mAP)" if sweep else "fixed", "sweep": sweep,
                  "protocol": protocol, "seed": seed},
    }


def fewshot_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: Sequence[str],
    ks: Sequence[int] = FEWSHOT_K,
    seeds: Sequence[int] = (0, 1, 2),
    C: float = 1.0,
    protocol: str = "affectclip",
) -> dict:
    """k examples per class drawn per seed from train; WAR/UAR mean ± std over seeds for each k."""
    ytr = np.asarray(train_y, dtype=np.int64)
    counts = np.bincount(ytr, minlength=len(class_names))
    out = {}
    for k in ks:
        if (counts[counts > 0] < k).any():
            raise ValueError(f"{k}-shot needs {k} training samples per class; smallest class has {counts[counts > 0].min()}")
        runs = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            pick = np.concatenate([rng.choice(np.flatnonzero(ytr == c), k, replace=False) for c in np.flatnonzero(counts)])
            r = linear_probe(train_x[pick], ytr[pick], test_x, test_y, class_names, C=C, protocol=protocol, seed=seed)
            runs.append({"war": r["metrics"]["war"], "uar": r["metrics"]["uar"]})
        out[f"{k}-shot"] = {m: {"mean": float(np.mean([r[m] for r in runs])), "std": float(np.std([r[m] for r in runs]))}
                            for m in ("war", "uar")}
    return {"metrics": out, "probe": {"C": C, "seeds": list(seeds), "ks": list(ks), "protocol": protocol}}


def ridge_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    names: Sequence[str],
    alpha: float | None = None,
    grid: Sequence[float] = ALPHA_GRID,
    seed: int = 0,
) -> dict:
    """Ridge regression probe (V/A/D, intensities): alpha chosen by mean CCC on a random 10 % of train."""
    xtr, xte = l2_normalise(train_x), l2_normalise(test_x)
    ytr = np.asarray(train_y, dtype=np.float64).reshape(len(xtr), -1)
    sweep = None
    if alpha is None:
        f, v = _holdout(len(ytr), None, seed)

        def val_ccc(a: float) -> float:
            return M.regression_report(ytr[v], Ridge(alpha=a).fit(xtr[f], ytr[f]).predict(xtr[v]), names)["ccc"]

        alpha, sweep = _sweep(grid, val_ccc)
    pred = Ridge(alpha=alpha).fit(xtr, ytr).predict(xte)
    return {
        "metrics": {**M.regression_report(test_y, pred, names), "n_samples": len(xte)},
        "probe": {"alpha": alpha, "selected_on": "random 10% of train (CCC)" if sweep else "fixed", "sweep": sweep,
                  "seed": seed},
    }
