"""Zero-shot classification: class texts -> classifier weights -> scores -> WAR/UAR (evaluation.md §3).

Two ways to combine several prompts per class (§3.2): `embedding` averaging (CLIP, CLIP_benchmark; default) —
w_c = normalise(mean_p normalise(t_cp)) — and `logit` averaging (Exp-CLIP `test.py`) — score_c = s·mean_p f·t̂_cp.
They differ by a per-class factor that depends on prompt diversity, so the argmax can change; both are kept.
Scores are computed in fp32 (autocast can flip argmax ties, §6.20).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affectclip.eval.features import FeatureSet, extract_features
from affectclip.eval.metrics import classification_report
from affectclip.models.temporal import masked_mean

AGGREGATIONS = ("embedding", "logit")


@dataclass
class ZeroShotClassifier:
    """Normalised prompt embeddings grouped by class (`owner[p]` = class of prompt p) and the class embeddings."""

    classes: list[str]
    prompts: dict[str, list[str]]
    prompt_embeddings: torch.Tensor  # [P, D], L2-normalised
    owner: torch.Tensor  # [P] int64
    class_embeddings: torch.Tensor  # [C, D] = normalise(mean_p t̂_cp)
    agg: str
    truncated: int = 0  # prompts that did not fit the tokenizer's context (they lose their end)


def _class_means(emb: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, emb.shape[1], dtype=emb.dtype).index_add_(0, owner, emb)
    return sums / torch.bincount(owner, minlength=n).clamp_min(1).unsqueeze(1).to(emb.dtype)


@torch.no_grad()
def build_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    class_prompts: dict[str, list[str]],
    agg: str = "embedding",
    device: str = "cpu",
    batch_size: int = 256,
) -> ZeroShotClassifier:
    """Encode every prompt once and group the normalised embeddings by class (insertion order of `class_prompts`)."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"prompt aggregation must be one of {AGGREGATIONS}, got '{agg}'")
    empty = [c for c, ps in class_prompts.items() if not ps or any(not p.strip() for p in ps)]
    if not class_prompts or empty:
        raise ValueError(f"every class needs at least one non-empty prompt; offending classes: {empty or 'none given'}")
    classes = list(class_prompts)
    texts = [p for c in classes for p in class_prompts[c]]
    owner = torch.tensor([i for i, c in enumerate(classes) for _ in class_prompts[c]], dtype=torch.int64)
    model.eval().to(device)
    before = getattr(tokenizer, "truncated", 0)
    chunks = [
        model.encode_text(tokenizer(texts[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(texts), batch_size)
    ]
    emb = F.normalize(torch.cat(chunks), dim=-1)
    return ZeroShotClassifier(
        classes=classes,
        prompts={c: list(class_prompts[c]) for c in classes},
        prompt_embeddings=emb,
        owner=owner,
        class_embeddings=F.normalize(_class_means(emb, owner, len(classes)), dim=-1),
        agg=agg,
        truncated=getattr(tokenizer, "truncated", 0) - before,
    )


def compose_classes(base: ZeroShotClassifier, compounds: dict[str, Sequence[str]]) -> ZeroShotClassifier:
    """Compound classes (MAFW/RAF-DB compound): mean of the components' normalised class embeddings, renormalised.

    The result always uses embedding aggregation, because a compound has no prompts of its own.
    """
    missing = sorted({c for comps in compounds.values() for c in comps} - set(base.classes))
    if missing:
        raise ValueError(f"compound components {missing} are not classes of the base classifier {base.classes}")
    idx = {c: i for i, c in enumerate(base.classes)}
    weights = torch.stack(
        [F.normalize(base.class_embeddings[[idx[c] for c in comps]].mean(0), dim=-1) for comps in compounds.values()]
    )
    names = list(compounds)
    return ZeroShotClassifier(
        classes=names,
        prompts={n: [p for c in compounds[n] for p in base.prompts[c]] for n in names},
        prompt_embeddings=weights,
        owner=torch.arange(len(names)),
        class_embeddings=weights,
        agg="embedding",
        truncated=base.truncated,
    )


def zero_shot_predict(
    features: torch.Tensor | np.ndarray,
    classifier: ZeroShotClassifier,
    logit_scale: float | torch.Tensor,
    padding_mask: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Scores [B, C] = s · similarity, s = exp(logit_scale) (log space, like `DualEncoder.logit_scale`).

    `features` are normalised [B, D], or per-frame [B, T, D] (+ `padding_mask` [B, T]) whose frame scores are
    averaged (`video_pool="mean_logits"`). The scale does not change the argmax, only softmax probabilities.
    """
    f = torch.as_tensor(features, dtype=torch.float32)
    s = float(torch.as_tensor(logit_scale, dtype=torch.float32).exp())
    if classifier.agg == "embedding":
        scores = f @ classifier.class_embeddings.float().T
    else:
        per_prompt = f @ classifier.prompt_embeddings.float().T  # [..., P]
        n = len(classifier.classes)
        counts = torch.bincount(classifier.owner, minlength=n).float()
        flat = per_prompt.reshape(-1, per_prompt.shape[-1])
        sums = torch.zeros(flat.shape[0], n).index_add_(1, classifier.owner, flat)
        scores = (sums / counts).reshape(*per_prompt.shape[:-1], n)
    if scores.ndim == 3:
        pad = None if padding_mask is None else torch.as_tensor(padding_mask, dtype=torch.bool)
        scores = masked_mean(scores, pad)
    return s * scores


def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    dataset: torch.utils.data.Dataset | None,
    classes: Sequence[str],
    prompts: dict[str, list[str]],
    agg: str = "embedding",
    batch_size: int = 64,
    device: str = "cpu",
    video_pool: str = "mean_embed",
    compounds: dict[str, Sequence[str]] | None = None,
    features: FeatureSet | None = None,
    mask_policy: str = "none",
) -> dict:
    """Zero-shot WAR/UAR/per-class recall/confusion matrix on `dataset` in its native class order `classes`.

    `prompts` maps each class (or, with `compounds`, each component class) to its texts. Samples that failed to load
    count in `n_failures` and as wrong in `war_all`. Pass precomputed `features` (e.g. from `cached_features`) to skip
    extraction. `mask_policy` is the subject-mask policy of the extraction (see `eval.protocol`).
    """
    classes = list(classes)
    wanted = sorted({c for comps in compounds.values() for c in comps}) if compounds else classes
    if compounds is not None and sorted(compounds) != sorted(classes):
        raise ValueError(f"compound definitions {sorted(compounds)} do not match the dataset classes {sorted(classes)}")
    if sorted(prompts) != sorted(wanted):
        raise ValueError(
            f"class-name mismatch between prompts and data: missing prompts for {sorted(set(wanted) - set(prompts))}, "
            f"prompts for unknown classes {sorted(set(prompts) - set(wanted))}"
        )
    t0 = time.perf_counter()
    clf = build_classifier(model, tokenizer, {c: prompts[c] for c in wanted}, agg, device)
    if compounds is not None:
        clf = compose_classes(clf, {c: compounds[c] for c in classes})
    keep_frames = video_pool == "mean_logits"
    fs = features or extract_features(model, dataset, batch_size, device, video_pool, keep_frames=keep_frames,
                                        mask_policy=mask_policy)
    bad = fs.labels[(fs.labels < 0) | (fs.labels >= len(classes))]
    if bad.size:
        raise ValueError(f"{bad.size} samples have labels outside 0..{len(classes) - 1} (e.g. {int(bad[0])}); "
                         "the dataset's class list does not match its labels")
    if fs.labels.size == 0:
        raise ValueError(f"no sample of the split could be loaded ({len(fs.errors)} failures, first: {fs.errors[:1]})")
    scores = zero_shot_predict(fs.features, clf, model.logit_scale.detach().cpu(), fs.padding_mask)
    report = classification_report(fs.labels, scores.numpy(), classes, failures=len(fs.errors))
    return {
        "metrics": report,
        "predictions": {"index": fs.indices.tolist(), "pred": scores.argmax(1).tolist()},
        "failures": {"count": len(fs.errors), "examples": fs.errors[:20]},
        "prompts": clf.prompts,
        "prompt_agg": clf.agg,
        "video_pool": None if getattr(model, "temporal", None) is not None else video_pool,
        "prompts_truncated": clf.truncated,
        "logit_scale": float(model.logit_scale.detach().exp()),
        "seconds": time.perf_counter() - t0,
    }
