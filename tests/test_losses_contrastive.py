"""Symmetric InfoNCE, soft targets and duplicate-caption targets against naive per-row references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from affectclip.losses import ClipLoss, identity_targets, soft_cross_entropy


def naive_infonce(image: torch.Tensor, text: torch.Tensor, scale: float, y_i2t=None, y_t2i=None) -> float:
    """Python loops over rows: ½ [mean_i −Σ_j Y_ij log softmax_j(s v_i·t_j) + same for text rows]."""
    n = len(image)
    y_i2t = torch.eye(n) if y_i2t is None else y_i2t
    y_t2i = y_i2t if y_t2i is None else y_t2i
    total = 0.0
    for queries, keys, y in ((image, text, y_i2t), (text, image, y_t2i)):
        for i in range(n):
            logits = [scale * float(queries[i] @ keys[j]) for j in range(n)]
            log_z = math.log(sum(math.exp(v) for v in logits))
            total += -sum(float(y[i, j]) * (logits[j] - log_z) for j in range(n)) / n
    return total / 2


def _features(n: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).float(),
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).float(),
    )


def test_hard_infonce_matches_naive_rows():
    image, text = _features()
    loss = ClipLoss()(image, text, torch.tensor(10.0))
    assert loss.item() == pytest.approx(naive_infonce(image, text, 10.0), rel=1e-5)


def test_soft_targets_match_naive_and_identity_equals_hard():
    image, text = _features(seed=1)
    g = torch.Generator().manual_seed(2)
    y_i2t = torch.softmax(torch.randn(6, 6, generator=g), -1)
    y_t2i = torch.softmax(torch.randn(6, 6, generator=g), -1)
    loss = ClipLoss()(image, text, 7.0, targets=(y_i2t, y_t2i))
    assert loss.item() == pytest.approx(naive_infonce(image, text, 7.0, y_i2t, y_t2i), rel=1e-5)
    hard = ClipLoss()(image, text, 7.0)
    assert ClipLoss()(image, text, 7.0, targets=torch.eye(6)).item() == pytest.approx(hard.item(), rel=1e-6)


def test_soft_cross_entropy_ignores_minus_inf_columns_with_zero_target():
    logits = torch.tensor([[2.0, float("-inf"), 0.5]], requires_grad=True)
    loss = soft_cross_entropy(logits, torch.tensor([[0.7, 0.0, 0.3]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_identity_targets_duplicate_captions_are_shared_positives():
    y = identity_targets(["a happy face", "a sad face", "a happy face", "a calm face"])
    assert torch.allclose(y[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert torch.allclose(y[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(y.sum(-1), torch.ones(4))


def test_identity_targets_unknown_labels_only_match_themselves():
    y = identity_targets(torch.tensor([3, -1, 3, -1]))
    assert torch.allclose(y[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(y[2], torch.tensor([0.5, 0.0, 0.5, 0.0]))


def test_duplicate_text_embeddings_make_dedupe_a_no_op_but_label_keys_do_not():
    # Identical caption embeddings are indistinguishable columns, so splitting the target between them leaves
    # the loss unchanged; same-label samples with *different* captions are where shared positives matter.
    image, text = _features(4, seed=3)
    dup = text.clone()
    dup[2] = dup[0]
    y_dup = identity_targets(["x", "y", "x", "z"])
    assert ClipLoss()(image, dup, 20.0, targets=y_dup).item() == pytest.approx(
        ClipLoss()(image, dup, 20.0).item(), rel=1e-5
    )
    y_lab = identity_targets(torch.tensor([0, 1, 0, 2]))
    soft = ClipLoss()(image, text, 20.0, targets=y_lab)
    assert soft.item() == pytest.approx(naive_infonce(image, text, 20.0, y_lab), rel=1e-5)
    assert soft.item() != pytest.approx(ClipLoss()(image, text, 20.0).item(), rel=1e-3)


def test_nan_feature_raises_naming_the_tensor():
    image, text = _features()
    text[1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="text_features"):
        ClipLoss()(image, text, 10.0)


def test_targets_must_cover_the_batch():
    image, text = _features()
    with pytest.raises(ValueError, match="global batch"):
        ClipLoss()(image, text, 10.0, targets=torch.eye(5))


def test_bf16_features_under_autocast_reduce_in_fp32():
    image, text = _features(8, 16, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ClipLoss()(image.bfloat16(), text.bfloat16(), 50.0)
    assert loss.dtype == torch.float32
    reference = ClipLoss()(image.bfloat16().float(), text.bfloat16().float(), 50.0)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
