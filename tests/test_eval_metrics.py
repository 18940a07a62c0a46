"""Metrics agree with scikit-learn/scipy on random inputs and handle undefined classes explicitly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn import metrics as skm

from affectclip.eval import metrics as M


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_classification_metrics_match_sklearn(rng):
    for _ in range(5):
        c = 6
        t = rng.integers(0, c, 200)
        scores = rng.normal(size=(200, c))
        p = scores.argmax(1)
        assert M.war(t, p) == pytest.approx(100 * skm.accuracy_score(t, p))
        assert M.uar(t, p, c)[0] == pytest.approx(100 * skm.balanced_accuracy_score(t, p))
        np.testing.assert_array_equal(
            M.confusion_matrix(t, p, c), skm.confusion_matrix(t, p, labels=range(c))
        )
        assert M.top_k_accuracy(t, scores, 3) == pytest.approx(100 * skm.top_k_accuracy_score(t, scores, k=3))
        assert M.weighted_f1(t, p, c) == pytest.approx(100 * skm.f1_score(t, p, average="weighted"))


def test_uar_excludes_absent_class_and_reports_it():
    t = np.array([0, 0, 1, 1, 3])
    p = np.array([0, 1, 1, 1, 2])
    value, absent = M.uar(t, p, 4)
    assert absent == [2]
    assert value == pytest.approx(100 * (0.5 + 1.0 + 0.0) / 3)
    rep = M.classification_report(t, np.eye(4)[p], ["a", "b", "c", "d"], failures=5)
    assert rep["classes_absent"] == ["c"] and rep["n_classes_present"] == 3
    assert rep["per_class_recall"]["c"] is None
    assert rep["war_all"] == pytest.approx(100 * 3 / 10)  # failures are scored as wrong


def test_multilabel_map_auc_match_sklearn(rng):
    y = (rng.random((120, 7)) < 0.3).astype(int)
    s = np.round(rng.random((120, 7)), 1)  # rounding creates ties
    y[:, 4] = 0  # no positives: excluded
    keep = [c for c in range(7) if c != 4]
    m, excluded = M.mean_average_precision(y, s)
    assert excluded == [4]
    assert m == pytest.approx(100 * skm.average_precision_score(y[:, keep], s[:, keep], average="macro"))
    a, excluded = M.roc_auc_macro(y, s)
    assert excluded == [4]
    assert a == pytest.approx(100 * skm.roc_auc_score(y[:, keep], s[:, keep], average="macro"))


def test_au_f1_matches_sklearn(rng):
    y = (rng.random((100, 5)) < 0.4).astype(int)
    prob = rng.random((100, 5))
    per_au, mean = M.au_f1(y, prob)
    ref = skm.f1_score(y, (prob >= 0.5).astype(int), average=None)
    np.testing.assert_allclose(per_au, 100 * ref)
    assert mean == pytest.approx(100 * ref.mean())


def test_regression_metrics(rng):
    a = rng.normal(size=300)
    b = 0.5 * a + rng.normal(scale=0.5, size=300) + 0.3
    assert M.pearson(a, b) == pytest.approx(pearsonr(a, b)[0])
    cov = np.mean((a - a.mean()) * (b - b.mean()))
    assert M.ccc(a, b) == pytest.approx(2 * cov / (a.var() + b.var() + (a.mean() - b.mean()) ** 2))
    assert M.ccc(a, a) == pytest.approx(1.0)
    assert abs(M.ccc(a, b, eps=1e-5)) < abs(M.ccc(a, b))
    assert M.mae(a, b) == pytest.approx(skm.mean_absolute_error(a, b))
    assert M.mse(a, b) == pytest.approx(skm.mean_squared_error(a, b))
    Y, P = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert M.r2(Y, P) == pytest.approx(skm.r2_score(Y, P))
    with pytest.raises(ValueError, match="NaN"):
        M.pearson([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="constant"):
        M.r2(np.ones(5), np.arange(5.0))


def test_retrieval_ranks_ties_and_multiple_positives():
    sim = np.array([[0.5, 0.9, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2]])
    ranks = M.retrieval_ranks(sim, [[2], [3, 1]])
    assert ranks.tolist() == [1, 1]  # tie 0.9/0.9 broken by index; best of several positives
    r = M.recall_at_k(ranks, ks=(1, 2))
    assert r["R@1"] == 0.0 and r["R@2"] == 100.0 and r["median_rank"] == 2.0


def test_fold_aggregation_is_mean_not_pooled():
    folds = [{"uar": 50.0, "war": 60.0}, {"uar": 70.0, "war": 80.0}]
    agg = M.aggregate_folds(folds)
    assert agg["mean"] == {"uar": 60.0, "war": 70.0}
    assert agg["per_fold"]["uar"] == [50.0, 70.0]
    with pytest.raises(ValueError):
        M.aggregate_folds([{"uar": 1.0}, {"war": 1.0}])


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        M.war([], [])
    with pytest.raises(ValueError, match="unknown"):
        M.war([-1, 0], [0, 0])


def test_stratified_bootstrap_interval_has_the_binomial_width_and_keeps_class_counts(rng):
    n = 4000
    y = rng.integers(0, 4, n)
    y[:16] = 4  # a rare class, as FER+ contempt: it must be in every resample with all 16 draws
    pred = np.where(rng.random(n) < 0.7, y, (y + 1) % 5)
    counts = np.bincount(y, minlength=5)

    def acc(idx: np.ndarray) -> float:
        assert np.array_equal(np.bincount(y[idx], minlength=5), counts)
        return M.war(y[idx], pred[idx])

    ci = M.stratified_bootstrap(y, acc, n_boot=500, seed=1)
    assert ci["low"] < ci["estimate"] < ci["high"]
    binomial = 1.96 * np.sqrt(70 * 30 / n)  # normal half-width in percent points
    assert 0.7 * binomial < (ci["high"] - ci["low"]) / 2 < 1.3 * binomial
    assert M.stratified_bootstrap(y, acc, n_boot=500, seed=1) == ci  # seeded: reproducible
    same = M.stratified_bootstrap(y, lambda i: M.uar(y[i], pred[i], 5)[0] - M.uar(y[i], pred[i], 5)[0], n_boot=50)
    assert same["low"] == same["high"] == 0.0  # a paired statistic of identical predictions has no spread
    with pytest.raises(ValueError, match="n_boot"):
        M.stratified_bootstrap(y, acc, n_boot=0)
