"""Text↔clip retrieval: R@1/5/10 and median/mean rank in both directions (evaluation.md §1, open_clip metrics).

An item may have several captions: text→item queries have one correct item; an item→text query is a hit if any
of its captions ranks within K. Ties are broken by candidate index so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from affectclip.eval.features import FeatureSet, extract_features
from affectclip.eval.metrics import recall_at_k, retrieval_ranks


def retrieval_metrics(item_features: np.ndarray, text_features: np.ndarray, text_to_item: Sequence[int]) -> dict:
    """Both directions from normalised features; `text_to_item[j]` is the item that caption j describes."""
    owner = np.asarray(text_to_item, dtype=np.int64)
    n_items = len(item_features)
    if owner.size != len(text_features) or owner.min() < 0 or owner.max() >= n_items:
        raise ValueError(f"text_to_item must give an item index in [0, {n_items}) for each of the {len(text_features)} captions")
    sim = np.asarray(item_features, dtype=np.float32) @ np.asarray(text_features, dtype=np.float32).T  # [items, texts]
    captions_of = [np.flatnonzero(owner == i) for i in range(n_items)]
    no_caption = [i for i, c in enumerate(captions_of) if c.size == 0]
    if no_caption:
        raise ValueError(f"items {no_caption[:10]} have no caption; every item needs at least one")
    return {
        "text_to_item": recall_at_k(retrieval_ranks(sim.T, [[i] for i in owner])),
        "item_to_text": recall_at_k(retrieval_ranks(sim, captions_of)),
        "n_items": n_items,
        "n_texts": int(owner.size),
    }


@torch.no_grad()
def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    dataset: torch.utils.data.Dataset | None,
    batch_size: int = 64,
    device: str = "cpu",
    features: FeatureSet | None = None,
) -> dict:
    """Retrieval on a captioned dataset (`caption` str, list of str, or {"global": ...}); failures are reported."""
    fs = features or extract_features(model, dataset, batch_size, device)
    if not fs.captions or any(c is None for c in fs.captions):
        raise ValueError("retrieval needs a caption for every sample; the dataset has samples without 'caption'")
    texts, owner = [], []
    for i, cap in enumerate(fs.captions):
        caps = [cap["global"]] if isinstance(cap, dict) else [cap] if isinstance(cap, str) else list(cap)
        texts += caps
        owner += [i] * len(caps)
    model.eval().to(device)
    text_feats = torch.cat([
        model.encode_text(tokenizer(texts[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(texts), batch_size)
    ]).numpy()
    out = retrieval_metrics(fs.features, text_feats, owner)
    out["failures"] = {"count": len(fs.errors), "examples": fs.errors[:20]}
    return {"metrics": out, "failures": out.pop("failures")}
