"""Visual feature extraction for evaluation, with an on-disk cache.

Zero-shot, probes and retrieval all need the same frozen visual features; extracting them dominates evaluation
time, so `cached_features` stores them once as `.npz` keyed by a hash of everything that changes them (model weights
or config, dataset manifest/split, pre-processing, pooling) and reuses them on the next call.

Accounting (evaluation.md §6.1–6.3): every sample is visited exactly once; samples that fail to load arrive as
`{"error", "index", "path"}` dicts and are listed in `FeatureSet.errors`, never substituted or dropped silently. A
sample whose decoding raises anything (a decompression bomb, a codec crash) is counted the same way, so one bad file
never ends a job; only when no sample at all could be read does extraction stop, naming the first error.
Under torchrun each rank encodes the strided shard `rank::world_size` (no `DistributedSampler`, whose padding
duplicates samples) and the shards are gathered and put back in index order, so every rank ends with the same
features as a one-process run.

Subject-token models (EmotionCLIP) take a subject mask that benchmark data does not have; `mask_policy` says what
they get (evaluation.md §6.18): "none" (no mask: the token follows the model's `subject_token_missing`), "full"
(the whole frame is the subject, natural for face crops) or "face" (the mask that comes with each sample).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from affectclip.core.distributed import rank_world
from affectclip.core.errors import RunError
from affectclip.core.io import atomic_path
from affectclip.core.progress import progress_bar
from affectclip.data.manifest import Manifest
from affectclip.models.temporal import masked_mean

VIDEO_POOLS = ("mean_embed", "mean_logits")
MASK_POLICIES = ("none", "full", "face")


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


def has_subject_token(model: torch.nn.Module) -> bool:
    """Whether the image tower takes a subject mask (EmotionCLIP's subject token); only then are masks read."""
    return bool(getattr(getattr(model, "visual", None), "subject_token", False))


def subject_mask(batch: dict[str, torch.Tensor], mask_policy: str) -> torch.Tensor | None:
    """The subject mask [B,(T,)H,W] that `mask_policy` gives this batch (None for "none")."""
    if mask_policy not in MASK_POLICIES:
        raise ValueError(f"mask_policy must be one of {MASK_POLICIES}, got '{mask_policy}'")
    pixels = batch["image"] if "image" in batch else batch["video"]
    if mask_policy == "none":
        return None
    if mask_policy == "full":
        return torch.ones(*pixels.shape[:-3], *pixels.shape[-2:], device=pixels.device)
    if "mask" not in batch:
        raise ValueError("mask_policy 'face' needs a subject mask per sample (a manifest `mask` image, or `boxes` "
                         "rasterised by the evaluator); this data has none: use --mask-policy full or none")
    return batch["mask"].to(pixels.device)


@torch.no_grad()
def encode_visual(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    video_pool: str = "mean_embed",
    keep_frames: bool = False,
    mask_policy: str = "none",
) -> torch.Tensor:
    """Normalised fp32 features for a batch of images [B,3,H,W] or videos [B,T,3,H,W].

    Videos go through the model's temporal head when it has one; otherwise (image model on video) the normalised
    frame embeddings are averaged and renormalised (`mean_embed`). With `keep_frames` the normalised per-frame
    features [B,T,D] are returned so the caller can average logits instead (`mean_logits`). `mask_policy` gives
    subject-token models their mask (module docstring); a model without a subject token only accepts "none".
    """
    if video_pool not in VIDEO_POOLS:
        raise ValueError(f"video_pool must be one of {VIDEO_POOLS}, got '{video_pool}'")
    mask = subject_mask(batch, mask_policy)
    if mask is not None and not has_subject_token(model):
        raise ValueError(f"mask_policy '{mask_policy}' needs a model with a subject token (vision_cfg.subject_token); "
                         "use mask_policy 'none' for this model")
    if "image" in batch:
        return model.encode_image(batch["image"], mask=mask).float()
    frames, pad = batch["video"], batch.get("padding_mask")
    if keep_frames and getattr(model, "temporal", None) is None:
        return F.normalize(model.encode_frames(frames, mask=mask).float(), dim=-1)
    return clip_features(model, model.encode_frames(frames, mask=mask), pad)


def clip_features(model: torch.nn.Module, frame_feats: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Normalised fp32 clip features from per-frame tower outputs [B,T,D]: the model's temporal head when it has one
    (= `encode_video`), else the renormalised mean of the normalised frame embeddings (`mean_embed`). Shared by
    pixel evaluation and feature caches (train/features.py) so both pool identically."""
    if getattr(model, "temporal", None) is not None:
        return F.normalize(model.pool_frames(frame_feats, padding_mask=padding_mask), dim=-1).float()
    return F.normalize(masked_mean(F.normalize(frame_feats.float(), dim=-1), padding_mask), dim=-1)


def _stack(samples: list[dict[str, Any]], device: str) -> dict[str, torch.Tensor]:
    key = "image" if "image" in samples[0] else "video"
    if key not in samples[0]:
        raise ValueError(f"sample {samples[0].get('id', samples[0].get('index'))} has neither 'image' nor 'video'")
    batch = {key: torch.stack([s[key] for s in samples]).to(device)}
    if key == "video" and "padding_mask" in samples[0]:
        batch["padding_mask"] = torch.stack([s["padding_mask"] for s in samples]).to(device)
    if all("mask" in s for s in samples):
        batch["mask"] = torch.stack([s["mask"] for s in samples]).to(device)
    return batch


class _CountedSubset(torch.utils.data.Dataset):
    """`dataset[indices]` where a sample whose decoding raises becomes an `{"error", "index", "path"}` dict: the
    dataset catches the decoder errors it knows, this catches the rest (e.g. PIL's DecompressionBombError), so one
    hostile file is counted and named instead of ending the evaluation."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        try:
            return self.dataset[index]
        except Exception as exc:  # noqa: BLE001 - counted and reported; extract_features stops if nothing loads
            records = getattr(getattr(self.dataset, "manifest", None), "records", None)
            path = records[index].get("path") if records is not None else None
            return {"error": f"{type(exc).__name__}: {exc}", "index": index, "path": path}


@torch.no_grad()
def _encode_shard(model, dataset, indices: list[int], batch_size: int, device: str, video_pool: str,
                  keep_frames: bool, num_workers: int, mask_policy: str, progress: str | None) -> dict[str, Any]:
    """Encode `dataset[indices]`; plain arrays/lists so that shards can be gathered across processes."""
    loader = torch.utils.data.DataLoader(_CountedSubset(dataset, indices), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, collate_fn=list)
    out: dict[str, Any] = {"features": [], "padding_mask": [], "labels": [], "indices": [], "captions": [],
                           "targets": [], "errors": []}
    with progress_bar(len(indices), progress or "", quiet=progress is None) as bar:
        for samples in loader:
            _encode_batch(model, samples, device, video_pool, keep_frames, mask_policy, out)
            bar.advance(len(samples))
    return out


def _encode_batch(model, samples: list[dict[str, Any]], device: str, video_pool: str, keep_frames: bool,
                  mask_policy: str, out: dict[str, Any]) -> None:
    """Append one loader batch's features, labels and failures to the shard's lists `out`."""
    out["errors"] += [{"index": s.get("index"), "path": s.get("path"), "error": s["error"]}
                      for s in samples if "error" in s]
    ok = [s for s in samples if "error" not in s]
    if ok:
        batch = _stack(ok, device)
        out["features"].append(encode_visual(model, batch, video_pool, keep_frames, mask_policy).cpu().numpy())
        if keep_frames and "padding_mask" in batch:
            out["padding_mask"].append(batch["padding_mask"].cpu().numpy())
        out["labels"] += [int(s.get("label", -1)) for s in ok]
        out["indices"] += [int(s["index"]) for s in ok]
        out["captions"] += [s.get("caption") for s in ok]
        if "targets" in ok[0]:
            out["targets"].append(np.stack([np.asarray(s["targets"], dtype=np.float32) for s in ok]))


def _cat(parts: list[np.ndarray]) -> np.ndarray | None:
    return np.concatenate(parts) if parts else None


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 64,
    device: str = "cpu",
    video_pool: str = "mean_embed",
    keep_frames: bool = False,
    num_workers: int = 0,
    mask_policy: str = "none",
    progress: str | None = None,
) -> FeatureSet:
    """Run the frozen visual encoder over `dataset` once, in index order (deterministic; no shuffling).

    `num_workers` DataLoader processes decode in parallel. Inside an initialised process group (torchrun) each rank
    encodes `range(rank, N, world_size)` and all ranks receive the gathered result in index order. `progress` labels
    a progress bar drawn by rank 0 on a terminal (`core.progress`); None draws none (in-training validation).
    """
    if len(dataset) == 0:
        raise ValueError("the evaluation split is empty; check the split file / manifest")
    model.eval().to(device)
    rank, world = rank_world()
    shard = _encode_shard(model, dataset, list(range(rank, len(dataset), world)), batch_size, device, video_pool,
                          keep_frames, num_workers, mask_policy, progress if rank == 0 else None)
    shards = [shard]
    if world > 1:
        shards = [None] * world
        torch.distributed.all_gather_object(shards, shard)
    indices = [i for s in shards for i in s["indices"]]
    errors = sorted((e for s in shards for e in s["errors"]), key=lambda e: e["index"])
    seen = indices + [e["index"] for e in errors]
    if len(set(seen)) != len(seen) or len(seen) != len(dataset):
        raise RuntimeError(
            f"sample accounting failed: dataset has {len(dataset)} samples, evaluator saw {len(seen)} "
            f"({len(set(seen))} distinct indices); every sample must be evaluated exactly once"
        )
    if not indices:
        first = errors[0]
        raise RunError(f"none of the {len(dataset)} samples could be read; the first failure: {first['path']}: "
                       f"{first['error']}")
    order = np.argsort(np.asarray(indices, dtype=np.int64), kind="stable")
    features = _cat([f for s in shards for f in s["features"]])
    targets = _cat([t for s in shards for t in s["targets"]])
    masks = _cat([m for s in shards for m in s["padding_mask"]])
    captions = [c for s in shards for c in s["captions"]]
    return FeatureSet(
        features=features[order] if features is not None else np.zeros((0, model.embed_dim), np.float32),
        labels=np.asarray([lb for s in shards for lb in s["labels"]], dtype=np.int64)[order],
        indices=np.asarray(indices, dtype=np.int64)[order],
        errors=errors,
        targets=targets[order] if targets is not None else None,
        padding_mask=masks[order] if masks is not None else None,
        captions=[captions[i] for i in order] if any(c is not None for c in captions) else None,
    )


def cache_key(parts: dict[str, Any]) -> str:
    """Stable hash of the things that determine the features (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_features(cache_dir: str | Path, key_parts: dict[str, Any], **extract_kwargs: Any) -> tuple[FeatureSet, bool]:
    """`extract_features(**extract_kwargs)` memoised on disk; returns (features, loaded_from_cache).

    `key_parts` must identify the model weights (path + SHA-256, or the config), the dataset manifest/split and the
    pre-processing — e.g. `{"weights_sha256": ..., "split_file_sha256": ..., "transform": ..., "video_pool": ...}`.
    Under torchrun every rank extracts its shard and receives the full set; only rank 0 writes the cache file.
    """
    extract_kwargs.setdefault("video_pool", "mean_embed")
    extract_kwargs.setdefault("keep_frames", False)
    extract_kwargs.setdefault("mask_policy", "none")
    parts = {**key_parts, **{k: extract_kwargs[k] for k in ("video_pool", "keep_frames", "mask_policy")}}
    path = Path(cache_dir) / f"features_{cache_key(parts)}.npz"
    cached = _read_cache(path) if path.exists() else None
    if cached is not None:
        return cached, True
    fs = extract_features(**extract_kwargs)
    if rank_world()[0] != 0:
        return fs, False
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"features": fs.features, "labels": fs.labels, "indices": fs.indices}
    arrays.update({k: v for k, v in (("targets", fs.targets), ("padding_mask", fs.padding_mask)) if v is not None})
    meta = json.dumps({"key": parts, "errors": fs.errors, "captions": fs.captions}, default=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.asarray(meta), **arrays)
    return fs, False


def _read_cache(path: Path) -> FeatureSet | None:
    """A cached FeatureSet, or None when the file cannot be read (truncated, foreign or corrupt): it is then
    extracted again and replaced, never trusted and never a traceback."""
    try:
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
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def with_box_masks(manifest: Manifest, out_dir: str | Path) -> Manifest:
    """For `mask_policy="face"`: image rows with face `boxes` but no `mask` get a mask image rasterised from the
    boxes, so the dataset resizes/crops it together with the image. Returns the manifest to read (the input itself
    when no row needed a mask). Unreadable images are left as they are: the dataset reports them as sample errors.
    """
    from PIL import Image

    from affectclip.core.images import image_size
    from affectclip.data.faces import boxes_to_mask

    out = Path(out_dir)
    rows, changed = [], False
    for rec in manifest.records:
        # Absolute, confined paths (resolve refuses a row outside the manifest's folder unless it allows that), so
        # the derived manifest, whose masks live under out_dir, may read outside its folder.
        path = manifest.resolve(rec["path"], rec.get("_row"))
        row = {**rec, "path": str(path)}
        if "mask" in rec:
            row["mask"] = str(manifest.resolve(rec["mask"], rec.get("_row"), "mask"))
        elif "boxes" in rec:
            try:
                width, height = image_size(path)  # refuses a decompression bomb by its header
            except Exception:  # noqa: BLE001 - the dataset reports the unreadable image as a counted sample error
                rows.append(row)
                continue
            mask_path = out / f"mask_{cache_key({'path': str(path), 'boxes': rec['boxes']})}.png"
            if not mask_path.exists():
                out.mkdir(parents=True, exist_ok=True)
                with atomic_path(mask_path) as tmp:
                    Image.fromarray(boxes_to_mask(rec["boxes"], height, width).astype(np.uint8) * 255).save(
                        tmp, format="PNG")
            row["mask"], changed = str(mask_path.resolve()), True
        rows.append(row)
    return replace(manifest, records=rows, allow_outside=True) if changed else manifest
