"""Visual feature extraction for evaluation, with an on-disk cache.

Zero-shot, probes and retrieval all need the same frozen visual features; extracting them dominates evaluation
time, so `cached_features` stores them once as `.npz` keyed by a hash of everything that changes them (model weights
or config, dataset manifest/split, pre-processing, pooling) and reuses them on the next call.

Accounting (evaluation.md §6.1–6.3): every sample is visited exactly once; samples that fail to load arrive as
`{"error", "index", "path"}` dicts and are listed in `FeatureSet.errors`, never substituted or dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_POOLS = ("mean_embed", "mean_logits")


@dataclass
class FeatureSet:
    """Features of the successfully loaded samples (in dataset index order) plus the failures.

    `features` is [N, D] (L2-normalised), or [N, T, D] per-frame features with `padding_mask` [N, T] when frames are
    kept for `video_pool="mean_logits"`. `labels` is [N] int (-1 unknown); `targets` [N, K] float when the samples
    carry multi-label/regression targets.
    """

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    errors: list[dict[str, Any]] = field(default_factory=list)
    targets: np.ndarray | None = None
    padding_mask: np.ndarray | None = None
    captions: list[Any] | None = None

    @property
    def n_total(self) -> int:
        return len(self.indices) + len(self.errors)


def masked_mean(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of [B, T, ...] ignoring padded frames (True = padded)."""
    if padding_mask is None:
        return x.mean(1)
    keep = (~padding_mask).to(x.dtype).reshape(*padding_mask.shape, *([1] * (x.ndim - 2)))
    return (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)


@torch.no_grad()
def encode_visual(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], video_pool: str = "mean_embed", keep_frames: bool = False
) -> torch.Tensor:
    """Normalised fp32 features for a batch of images [B,3,H,W] or videos [B,T,3,H,W].

    Videos go through the model's temporal head when it has one; otherwise (image model on video) the normalised
    frame embeddings are averaged and renormalised (`mean_embed`). With `keep_frames` the normalised per-frame
    features [B,T,D] are returned so the caller can average logits instead (`mean_logits`).
    """
    if video_pool not in VIDEO_POOLS:
        raise ValueError(f"video_pool must be one of {VIDEO_POOLS}, got '{video_pool}'")
    if "image" in batch:
        return model.encode_image(batch["image"]).float()
    frames, pad = batch["video"], batch.get("padding_mask")
    if getattr(model, "temporal", None) is not None:
        return model.encode_video(frames, padding_mask=pad).float()
    per_frame = F.normalize(model.encode_frames(frames).float(), dim=-1)
    return per_frame if keep_frames else F.normalize(masked_mean(per_frame, pad), dim=-1)


def _stack(samples: list[dict[str, Any]], device: str) -> dict[str, torch.Tensor]:
    key = "image" if "image" in samples[0] else "video"
    if key not in samples[0]:
        raise ValueError(f"sample {samples[0].get('id', samples[0].get('index'))} has neither 'image' nor 'video'")
    batch = {key: torch.stack([s[key] for s in samples]).to(device)}
    if key == "video" and "padding_mask" in samples[0]:
        batch["padding_mask"] = torch.stack([s["padding_mask"] for s in samples]).to(device)
    return batch


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 64,
    device: str = "cpu",
    video_pool: str = "mean_embed",
    keep_frames: bool = False,
    num_workers: int = 0,
) -> FeatureSet:
    """Run the frozen visual encoder over `dataset` once, in index order (deterministic; no sampler, no shuffling)."""
    if len(dataset) == 0:
        raise ValueError("the evaluation split is empty; check the split file / manifest")
    model.eval().to(device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list
    )
    feats, masks, labels, targets, indices, captions, errors = [], [], [], [], [], [], []
    for samples in loader:
        errors += [{"index": s.get("index"), "path": s.get("path"), "error": s["error"]} for s in samples if "error" in s]
        ok = [s for s in samples if "error" not in s]
        if not ok:
            continue
        batch = _stack(ok, device)
        feats.append(encode_visual(model, batch, video_pool, keep_frames).cpu())
        if keep_frames and "padding_mask" in batch:
            masks.append(batch["padding_mask"].cpu())
        labels += [int(s.get("label", -1)) for s in ok]
        indices += [int(s["index"]) for s in ok]
        captions += [s.get("caption") for s in ok]
        if "targets" in ok[0]:
            targets.append(torch.stack([torch.as_tensor(s["targets"], dtype=torch.float32) for s in ok]))
    seen = indices + [e["index"] for e in errors]
    if len(set(seen)) != len(seen) or len(seen) != len(dataset):
        raise RuntimeError(
            f"sample accounting failed: dataset has {len(dataset)} samples, evaluator saw {len(seen)} "
            f"({len(set(seen))} distinct indices); every sample must be evaluated exactly once"
        )
    d = model.embed_dim
    return FeatureSet(
        features=torch.cat(feats).numpy() if feats else np.zeros((0, d), np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        indices=np.asarray(indices, dtype=np.int64),
        errors=errors,
        targets=torch.cat(targets).numpy() if targets else None,
        padding_mask=torch.cat(masks).numpy() if masks else None,
        captions=captions if any(c is not None for c in captions) else None,
    )


def cache_key(parts: dict[str, Any]) -> str:
    """Stable hash of the things that determine the features (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_features(cache_dir: str | Path, key_parts: dict[str, Any], **extract_kwargs: Any) -> tuple[FeatureSet, bool]:
    """`extract_features(**extract_kwargs)` memoised on disk; returns (features, loaded_from_cache).

    `key_parts` must identify the model weights (path + SHA-256, or the config), the dataset manifest/split and the
    pre-processing — e.g. `{"weights_sha256": ..., "split_file_sha256": ..., "transform": ..., "video_pool": ...}`.
    """
    extract_kwargs.setdefault("video_pool", "mean_embed")
    extract_kwargs.setdefault("keep_frames", False)
    parts = {**key_parts, "video_pool": extract_kwargs["video_pool"], "keep_frames": extract_kwargs["keep_frames"]}
    path = Path(cache_dir) / f"features_{cache_key(parts)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return FeatureSet(
                features=z["features"],
                labels=z["labels"],
                indices=z["indices"],
                errors=meta["errors"],
                targets=z["targets"] if "targets" in z else None,
                padding_mask=z["padding_mask"] if "padding_mask" in z else None,
                captions=meta["captions"],
            ), True
    fs = extract_features(**extract_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"features": fs.features, "labels": fs.labels, "indices": fs.indices}
    arrays.update({k: v for k, v in (("targets", fs.targets), ("padding_mask", fs.padding_mask)) if v is not None})
    meta = json.dumps({"key": parts, "errors": fs.errors, "captions": fs.captions}, default=str)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, meta=np.asarray(meta), **arrays)
    tmp.replace(path)
    return fs, False
