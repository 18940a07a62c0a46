"""Linear/ridge probes: selection on held-out train only, fixed-C parity mode, multi-label, few-shot."""

from __future__ import annotations

import numpy as np
import pytest

from affectclip.eval import probe as P


def blobs(n, c=3, d=6, seed=0, sep=2.0):
    centres = np.random.default_rng(123).normal(size=(c, d)) * sep
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return centres[y] + rng.normal(size=(n, d)), y


def test_linear_probe_learns_and_never_sees_test_in_selection():
    xtr, ytr = blobs(150)
    xte, yte = blobs(60, seed=1)
    r = P.linear_probe(xtr, ytr, xte, yte, ["a", "b", "c"], grid=[1e-3, 1.0, 100.0])
    assert r["metrics"]["war"] > 80 and r["probe"]["C"] in (1e-3, 1.0, 100.0)
    assert set(r["probe"]["sweep"]) == {"0.001", "1", "100"}
    # flipping test labels must not change the chosen C (selection uses train only)
    r2 = P.linear_probe(xtr, ytr, xte, (yte + 1) % 3, ["a", "b", "c"], grid=[1e-3, 1.0, 100.0])
    assert r2["probe"]["C"] == r["probe"]["C"] and r2["metrics"]["war"] < 30


def test_fixed_c_emotionclip_protocol():
    xtr, ytr = blobs(60)
    r = P.linear_probe(xtr, ytr, xtr, ytr, ["a", "b", "c"], C=2.5, protocol="emotionclip")
    assert r["probe"]["C"] == 2.5 and r["probe"]["solver"] == "sag" and r["probe"]["random_state"] == 2022
    assert r["probe"]["sweep"] is None
    with pytest.raises(ValueError, match="protocol"):
        P.linear_probe(xtr, ytr, xtr, ytr, ["a", "b", "c"], C=1.0, protocol="nope")


def test_multilabel_probe():
    x, y = blobs(120, c=4)
    Y = np.stack([(y == c) | (y == (c + 1) % 4) for c in range(4)], 1).astype(int)
    r = P.multilabel_probe(x[:90], Y[:90], x[90:], Y[90:], grid=[0.1, 10.0])
    assert r["metrics"]["mAP"] > 70 and r["metrics"]["AUC"] > 70


def test_fewshot_probe_reports_mean_std_per_k():
    xtr, ytr = blobs(60)
    xte, yte = blobs(30, seed=3)
    r = P.fewshot_probe(xtr, ytr, xte, yte, ["a", "b", "c"], ks=(1, 4), seeds=(0, 1))
    assert set(r["metrics"]) == {"1-shot", "4-shot"}
    assert r["metrics"]["4-shot"]["war"]["std"] >= 0
    with pytest.raises(ValueError, match="per class"):
        P.fewshot_probe(xtr, ytr, xte, yte, ["a", "b", "c"], ks=(50,), seeds=(0,))


def test_ridge_probe():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    w = rng.normal(size=(5, 2))
    y = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ w + 0.01 * rng.normal(size=(120, 2))
    r = P.ridge_probe(x[:90], y[:90], x[90:], y[90:], ["valence", "arousal"])
    assert r["metrics"]["ccc"] > 0.9 and r["probe"]["alpha"] <= 1.0
    assert set(r["metrics"]["per_dimension"]) == {"valence", "arousal"}
    with pytest.raises(ValueError, match="finite"):
        P.ridge_probe(np.full((10, 2), np.nan), y[:10], x[:5], y[:5], ["v", "a"], alpha=1.0)
