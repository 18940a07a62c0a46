"""Frozen-tower feature caches: encode frames and captions once, then train only the temporal head.

With EmoCLIP's default (both CLIP towers frozen, only the temporal head + logit scale trained, methods.md §3.5) every
epoch re-encodes the same frames through the same frozen ViT; that forward pass is almost all of the cost. A cache
stores, per sample, the frame features [T, D] *before* the temporal head (the projected, unnormalised output of the
image tower, exactly what `DualEncoder.encode_frames` returns), the padding mask, the normalised caption embedding
and the label, so `data.train=features:DIR` trains the head with the same math as re-encoding (tasks.py).

What a cache freezes: ONE draw of the frame sampler and of the train-time augmentation per sample (the cache is
built through the same dataset and transforms training would use). With `data.augment` or a random window sampler
the cached epochs all see that one draw — EmoCLIP-style caching is only faithful without spatial augmentation
(methods.md §3.5). The index records the sampler, augmentation and pre-processing so this is visible. Features are
encoded in fp32 with the towers in eval mode: under `run.precision=fp16/bf16` re-encoding differs from the cache
by autocast rounding only (in fp32 the two training runs agree to float precision, tests/test_train_features.py).

Layout of a cache folder: `index.json` (key + provenance + per-split ids, captions, failures) and one
`{train,val}.safetensors` per split. Training refuses a cache whose model part of the key (config without the
temporal head, SHA-256 of the frozen tower weights, caption field) differs from the run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from affectclip.train.config import ConfigError, TrainConfig, require_set

FORMAT_VERSION = 1
SOURCE_PREFIX = "features:"
ROLES = ("train", "val")
OPTIONAL_KEYS = ("soft_label", "sentiment", "targets")  # per-sample tensors some tasks read from the batch
# Model config entries that do not change the cached features (the temporal head is trained from them).
NOT_IN_KEY = ("temporal_cfg", "init_logit_scale")


def require_frozen_towers(cfg: TrainConfig) -> None:
    """Cached features are only the features training would compute if neither tower can change."""
    trainable = [name for name, frozen in (("image", cfg.model.freeze_image), ("text", cfg.model.freeze_text))
                 if not frozen]
    if trainable:
        raise ConfigError(f"feature caching needs frozen towers, but the {' and '.join(trainable)} tower(s) are "
                          f"trainable; set {' '.join(f'model.freeze_{t}=true' for t in trainable)} (EmoCLIP's default) "
                          "or train from the data itself")


def towers_sha256(model: nn.Module) -> str:
    """SHA-256 of the image and text tower weights (names, shapes, dtypes and bytes), so that a cache built from other
    weights — another checkpoint, or another seed for randomly initialised towers — is recognised."""
    h = hashlib.sha256()
    for prefix in ("visual", "text"):
        for name, t in getattr(model, prefix).state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_key(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """The part of a cache key that the training config determines (checked when training from a cache)."""
    key = {"model_config": {k: v for k, v in model.config.items() if k not in NOT_IN_KEY},
           "towers_sha256": towers_sha256(model), "caption_field": cfg.data.caption_field}
    return json.loads(json.dumps(key, default=str))  # as index.json stores it (tuples become lists)


def build_frozen_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The recipe's model initialised exactly as `train` does on rank 0 (same seeds), in eval mode."""
    from affectclip.core.distributed import seed_everything
    from affectclip.models.factory import create_model

    require_frozen_towers(cfg)
    seed_everything(cfg.run.seed)
    model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, **cfg.model.overrides)
    return model.requires_grad_(False).eval().to(device)


@torch.no_grad()
def encode_dataset(model: nn.Module, tokenizer, dataset: Dataset, caption_field: str, batch_size: int = 64,
                   num_workers: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Frame features [N,T,D] (+ padding mask), normalised caption features [N,D] and labels of every readable
    sample of a video dataset, in index order; unreadable samples are listed under "errors", never substituted."""
    from affectclip.data.datasets import collate
    from affectclip.eval.features import has_subject_token
    from affectclip.train.tasks import caption_text

    use_mask = has_subject_token(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    frames, pads, texts, labels, indices, ids, captions, errors = [], [], [], [], [], [], [], []
    extra: dict[str, list[torch.Tensor]] = {k: [] for k in OPTIONAL_KEYS}
    text_cache: dict[str, torch.Tensor] = {}
    for batch in loader:
        errors += [{"index": e.get("index"), "path": e.get("path"), "error": e["error"]} for e in batch["errors"]]
        if "index" not in batch:
            continue
        if "video" not in batch:
            raise ConfigError("feature caching is for clip training (a frozen image tower leaves nothing to train on "
                              "single images); set data.video_frames > 0")
        video = batch["video"].to(device)
        mask = batch["mask"].to(device) if use_mask else None
        frames.append(model.encode_frames(video, mask=mask).float().cpu())
        pads.append(batch["padding_mask"].cpu())
        batch_texts = [caption_text(c, caption_field) for c in batch["caption"]]
        new = [t for t in dict.fromkeys(batch_texts) if t not in text_cache]
        if new:
            for t, f in zip(new, model.encode_text(tokenizer(new).to(device)).float().cpu(), strict=True):
                text_cache[t] = f
        texts.append(torch.stack([text_cache[t] for t in batch_texts]))
        labels += [-1 if v is None else int(v) for v in batch.get("label", [None] * len(batch_texts))]
        indices += batch["index"].tolist()
        ids += [str(v) for v in batch.get("id", batch["index"].tolist())]
        captions += list(batch["caption"])
        for k in OPTIONAL_KEYS:
            if isinstance(batch.get(k), torch.Tensor):
                extra[k].append(batch[k].float().cpu())
    t_max = max((f.shape[1] for f in frames), default=0)
    tensors: dict[str, torch.Tensor] = {
        "frame_features": _pad_frames(frames, t_max, 0.0, (0, 0, model.embed_dim)),
        "padding_mask": _pad_frames(pads, t_max, True, (0, 0)),
        "text_features": torch.cat(texts) if texts else torch.zeros(0, model.embed_dim),
        "label": torch.tensor(labels, dtype=torch.long),
    }
    tensors.update({k: torch.cat(v) for k, v in extra.items() if v and sum(len(x) for x in v) == len(labels)})
    return {"tensors": tensors, "indices": indices, "ids": ids, "captions": captions, "errors": errors}


def merge_encodings(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One `encode_dataset` result from the results of disjoint shards of a dataset, back in dataset index order
    (clips of different lengths are padded to the longest, as within one shard)."""
    order = sorted(range(sum(len(p["indices"]) for p in parts)),
                   key=[i for p in parts for i in p["indices"]].__getitem__)
    t_max = max(p["tensors"]["frame_features"].shape[1] for p in parts)
    tensors: dict[str, torch.Tensor] = {
        "frame_features": _pad_frames([p["tensors"]["frame_features"] for p in parts], t_max, 0.0, (0, 0, 0)),
        "padding_mask": _pad_frames([p["tensors"]["padding_mask"] for p in parts], t_max, True, (0, 0)),
    }
    for key in parts[0]["tensors"]:
        if key not in tensors and all(key in p["tensors"] for p in parts):
            tensors[key] = torch.cat([p["tensors"][key] for p in parts])
    merged: dict[str, Any] = {"tensors": {k: v[order] for k, v in tensors.items()}}
    for key in ("indices", "ids", "captions"):
        flat = [x for p in parts for x in p[key]]
        merged[key] = [flat[i] for i in order]
    merged["errors"] = sorted((e for p in parts for e in p["errors"]), key=lambda e: e["index"])
    return merged


def _pad_frames(parts: list[torch.Tensor], t_max: int, value: Any, empty: tuple[int, ...]) -> torch.Tensor:
    """Concatenate per-batch [B,T,...] tensors whose T differ, filling missing frames with `value`."""
    if not parts:
        return torch.zeros(empty, dtype=torch.bool if value is True else torch.float32)
    out = parts[0].new_full((sum(len(p) for p in parts), t_max, *parts[0].shape[2:]), value)
    row = 0
    for p in parts:
        out[row : row + len(p), : p.shape[1]] = p
        row += len(p)
    return out


def build_feature_cache(cfg: TrainConfig, out_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Encode `data.train` (and `data.val`, when set) of a frozen-tower config once into `out_dir`.

    Returns the index written to `out_dir/index.json` (per split: n, failures, seconds). The datasets are built by
    `train/data.py` with the same transforms and samplers training uses, so cached and re-encoded training agree.
    Under torchrun each rank encodes every world_size-th sample; the shards are gathered (every rank holds the
    whole split's features for a moment) and rank 0 writes them in dataset order.
    """
    from affectclip.core.distributed import cleanup, device_and_rank, gather_lists, seed_everything
    from affectclip.models.factory import get_tokenizer
    from affectclip.train.data import build_datasets

    require_set(cfg)
    require_frozen_towers(cfg)
    out = Path(out_dir)
    if (out / "index.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a feature cache; pass --overwrite to rebuild it")
    for role in ROLES:
        source = getattr(cfg.data, role)
        if source and source.startswith(SOURCE_PREFIX):
            raise ConfigError(f"data.{role}={source} is already a feature cache; point it at the data to encode")
    device, info = device_and_rank(cfg.run.device, "run.device")  # under torchrun every rank encodes a shard; rank 0 writes
    model = build_frozen_model(cfg, device)
    if info.enabled:  # the towers are built alike on every rank; the augmentation draws must differ
        seed_everything(cfg.run.seed + info.rank)
    # the cache holds one augmentation draw per sample either way; the per-sample transforms draw it from the same
    # distribution as batch augmentation, without staging
    per_sample = dataclasses.replace(cfg.data, batch_augment=False, stage_size=None, cache_images=False)
    train_ds, val_ds, classes = build_datasets(dataclasses.replace(cfg, data=per_sample), model)
    tokenizer = get_tokenizer(model)
    index: dict[str, Any] = {
        "format": FORMAT_VERSION, "key": model_key(cfg, model), "classes": classes,
        "provenance": {"model": cfg.model.name, "pretrained": cfg.model.pretrained, "video_frames": cfg.data.video_frames,
                       "video_sampler": cfg.data.video_sampler, "augment": cfg.data.augment,
                       "consistent_clip_augment": cfg.data.consistent_clip_augment, "synthetic": cfg.data.synthetic,
                       "preprocess": model.config.get("preprocess"), "image_size": model.config["vision_cfg"]["image_size"],
                       "note": "one frame-sampler / augmentation draw per sample is frozen in the cache"},
        "splits": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    for role, ds in (("train", train_ds), ("val", val_ds)):
        if ds is None:
            continue
        if isinstance(ds, torch.utils.data.IterableDataset):
            raise ConfigError(f"data.{role}: feature caching reads map-style data (a manifest or 'synthetic'), not "
                              "streamed shards")
        t0 = time.perf_counter()
        shard = Subset(ds, range(info.rank, len(ds), info.world_size)) if info.enabled else ds
        enc = encode_dataset(model, tokenizer, shard, cfg.data.caption_field, cfg.data.batch_size,
                             cfg.data.num_workers, device)
        if info.enabled:
            enc = merge_encodings(gather_lists([enc], info))
            if not info.is_main:
                continue
        tmp = out / f".{role}.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in enc["tensors"].items()}, str(tmp))
        os.replace(tmp, out / f"{role}.safetensors")
        index["splits"][role] = {"source": getattr(cfg.data, role), "n": len(enc["ids"]), "ids": enc["ids"],
                                 "captions": enc["captions"], "errors": enc["errors"],
                                 "seconds": time.perf_counter() - t0}
    if info.is_main:
        tmp = out / ".index.json.tmp"
        tmp.write_text(json.dumps(index, default=str))
        os.replace(tmp, out / "index.json")  # written last: a folder without index.json is an unfinished cache
    cleanup(info)
    return index


class FeatureDataset(Dataset):
    """One split of a feature cache as sample dicts for the trainer.

    Samples: `frame_features` [T,D] float, `padding_mask` [T] bool, `text_features` [D] (normalised), `caption`,
    `label` (int), `index` (position in the cache), `id`, plus `soft_label`/`sentiment`/`targets` when cached.
    `expect` (from `model_key`) refuses a cache built from another model, tower weights or caption field.
    """

    def __init__(self, cache_dir: str | os.PathLike, role: str, expect: dict[str, Any] | None = None) -> None:
        from safetensors.torch import load_file

        self.dir = Path(cache_dir)
        index_path = self.dir / "index.json"
        if not index_path.is_file():
            raise ConfigError(f"{self.dir} is not a feature cache (no index.json); build one with "
                              "`affectclip features RECIPE DIR [overrides]`")
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{index_path} has cache format {index.get('format')}, this version reads "
                              f"{FORMAT_VERSION}; rebuild it with `affectclip features`")
        if role not in index["splits"]:
            raise ConfigError(f"feature cache {self.dir} holds no '{role}' split (it has {sorted(index['splits'])}); "
                              f"set data.{role} when running `affectclip features`")
        if expect is not None:
            _check_key(index["key"], expect, self.dir)
        split = index["splits"][role]
        self.classes: list[str] = list(index.get("classes") or [])
        self.provenance, self.errors = index["provenance"], split["errors"]
        self.ids, self.captions = split["ids"], split["captions"]
        self.tensors = load_file(str(self.dir / f"{role}.safetensors"))
        self.labels: list[int] = self.tensors["label"].tolist()
        if not len(self.ids) == len(self.captions) == len(self.labels) == len(self.tensors["frame_features"]):
            raise ConfigError(f"feature cache {self.dir} ({role}) is inconsistent: index and tensors disagree on the "
                              "number of samples; rebuild it with `affectclip features --overwrite`")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = {k: v[i] for k, v in self.tensors.items() if k != "label"}
        sample.update(caption=self.captions[i], label=self.labels[i], index=int(i), id=self.ids[i])
        return sample

    @torch.no_grad()
    def feature_set(self, model: nn.Module, device: str | torch.device = "cpu", batch_size: int = 256):
        """Clip features for zero-shot validation, pooled by `eval.features.clip_features` exactly as re-encoded clips
        are; cache failures count as failures."""
        from affectclip.eval.features import FeatureSet, clip_features

        was_training = model.training
        model.eval()
        out = []
        for s in range(0, len(self), batch_size):
            ff = self.tensors["frame_features"][s : s + batch_size].to(device)
            pad = self.tensors["padding_mask"][s : s + batch_size].to(device)
            out.append(clip_features(model, ff, pad).cpu())
        model.train(was_training)
        return FeatureSet(features=torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32),
                          labels=np.asarray(self.labels, dtype=np.int64), indices=np.arange(len(self)),
                          errors=list(self.errors), captions=list(self.captions))


def _check_key(cached: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    from affectclip.train.config import diff_keys

    diff = sorted(diff_keys(cached, current))
    if not diff:
        return
    shown = [f"{key}: cache {_short(_lookup(cached, key))} vs now {_short(_lookup(current, key))}" for key in diff[:6]]
    raise ConfigError(f"feature cache {where} is stale — it was built for another model or other tower weights ({'; '.join(shown)}); "
                      "rebuild it with `affectclip features RECIPE DIR --overwrite` using this run's model settings")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...'"


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
