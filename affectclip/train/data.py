"""Turn the `data` section of a training config into datasets.

`data.train` / `data.val` name a source:
* ``synthetic`` — the built-in synthetic face generator (the embedded default for demos and tests);
* ``PATH.jsonl|csv|parquet[:SPLIT]`` — a manifest, optionally restricted to rows whose `split` equals SPLIT;
* ``PATTERN.tar`` (glob) or a shard folder with index.json — WebDataset-style shards written by
  `affectclip data shard` (training only; options in `data.shards`);
* ``features:DIR`` — a frozen-tower feature cache written by `affectclip features` (its train or val split, by role):
  only the temporal head and logit scale train, without re-encoding frames (train/features.py).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from affectclip.eval.features import has_subject_token
from affectclip.train.config import ConfigError, TrainConfig
from affectclip.train.features import SOURCE_PREFIX

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


def split_source(source: str) -> tuple[str, str | None]:
    """'manifest.jsonl:train' -> ('manifest.jsonl', 'train'); a bare path has no split filter."""
    for suffix in MANIFEST_SUFFIXES:
        marker = suffix + ":"
        if marker in source:
            path, split = source.split(marker, 1)
            return path + suffix, split or None
    return source, None


def build_datasets(cfg: TrainConfig, model: Any) -> tuple[Dataset, Dataset | None, list[str]]:
    """(train dataset, labelled validation dataset or None, class names in label-index order)."""
    from affectclip.data.transforms import create_transforms

    if not cfg.data.train:
        raise ConfigError("data.train is not set: pass data.train=PATH.jsonl[:split] (a manifest, see "
                          "`affectclip data check`), shards (*.tar) or 'synthetic'")
    image_size = cfg.data.image_size or model.config["vision_cfg"]["image_size"]
    train_tf = train_transform(cfg, model)
    eval_tf = create_transforms(model, train=False)
    if image_size != model.config["vision_cfg"]["image_size"]:
        raise ConfigError(f"data.image_size={image_size} differs from the model's input size "
                          f"{model.config['vision_cfg']['image_size']}; leave data.image_size unset")
    if cfg.data.batch_augment:  # the dataset only stages images; the task augments the batch (build_batch_augment)
        from affectclip.data.batch_augment import stage_for

        train_tf = stage_for(train_tf, cfg.data.stage_size)
    train_ds, classes = _build(cfg, cfg.data.train, "train", train_tf, model)
    if cfg.data.cache_images:
        train_ds = _cached(cfg, train_ds, train_tf, model)
    val_ds = None
    if cfg.data.val:
        val_ds, val_classes = _build(cfg, cfg.data.val, "val", eval_tf, model)
        classes = classes or val_classes
    if cfg.data.classes:
        classes = list(cfg.data.classes)
    if val_ds is not None and not classes:
        raise ConfigError("data.val is set but the class names are unknown; list them in data.classes")
    return train_ds, val_ds, list(classes or [])


def train_transform(cfg: TrainConfig, model: Any) -> Any:
    """The per-sample train `ImageTransform` of `data.augment` (and `data.consistent_clip_augment` for clips)."""
    from affectclip.data.transforms import create_transforms

    d = cfg.data
    if d.stage_size is not None and d.stage_size <= 0:
        raise ConfigError(f"data.stage_size must be a positive number of pixels, got {d.stage_size}")
    if (d.stage_size is not None or d.cache_images) and not d.batch_augment:
        raise ConfigError("data.stage_size and data.cache_images belong to batch augmentation; set "
                          "data.batch_augment=true (or remove them)")
    try:
        return create_transforms(model, train=True, **{**d.augment, "consistent_clips": d.consistent_clip_augment})
    except TypeError as exc:
        raise ConfigError(f"data.augment: {exc}; allowed keys: scale, ratio, hflip, rotation, brightness, contrast, "
                          "grayscale") from exc


def build_batch_augment(cfg: TrainConfig, model: Any) -> Any:
    """The `BatchAugment` the training task applies to each staged batch, or None (per-sample augmentation)."""
    if not cfg.data.batch_augment:
        return None
    from affectclip.data.batch_augment import BatchAugment

    return BatchAugment(train_transform(cfg, model))


def _cached(cfg: TrainConfig, dataset: Dataset, staged: Any, model: Any) -> Dataset:
    from affectclip.data.image_cache import StagedImageCache

    if not hasattr(dataset, "sample_fields"):
        raise ConfigError(f"data.cache_images needs a manifest as data.train (got '{cfg.data.train}'); shards and "
                          "synthetic data are decoded as they stream")
    try:
        return StagedImageCache(dataset, staged.stage_size, masks=has_subject_token(model),
                                shared=cfg.data.num_workers > 0)
    except MemoryError as exc:
        raise ConfigError(str(exc)) from exc


def _build(cfg: TrainConfig, source: str, role: str, transform: Any, model: Any) -> tuple[Dataset, list[str] | None]:
    d = cfg.data
    if source.startswith(SOURCE_PREFIX):
        from affectclip.train.features import FeatureDataset, model_key, require_frozen_towers

        require_frozen_towers(cfg)
        ds = FeatureDataset(source.removeprefix(SOURCE_PREFIX), role, expect=model_key(cfg, model))
        return ds, ds.classes or d.classes
    if source == "synthetic":
        from affectclip.data.synthetic import SyntheticFaceDataset

        syn = d.synthetic
        allowed = {"n_train", "n_val", "image_size", "seed", "grayscale"}
        unknown = set(syn) - allowed
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in data.synthetic; allowed: {sorted(allowed)}")
        n = syn.get("n_train", 2048) if role == "train" else syn.get("n_val", 512)
        ds = SyntheticFaceDataset(n, "train" if role == "train" else "test", seed=syn.get("seed", 0),
                                  image_size=syn.get("image_size", 64), transform=transform,
                                  video_frames=d.video_frames, grayscale=syn.get("grayscale", False))
        return ds, list(ds.classes)
    if source.endswith(".tar") or "*" in source or (Path(source) / "index.json").is_file():
        if role != "train":
            raise ConfigError(f"data.{role}: shards are for training; validate on a manifest")
        from affectclip.data.shards import ShardDataset

        allowed = {"shuffle_buffer", "resampled", "epoch_samples"}
        unknown = set(d.shards) - allowed
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in data.shards; allowed: {sorted(allowed)}")
        urls: Any = Path(source) if Path(source).is_dir() else sorted(glob.glob(source))
        if not urls:
            raise ConfigError(f"data.train: no shard matches '{source}'")
        ds = ShardDataset(urls, transform=transform, seed=cfg.run.seed, classes=d.classes,
                          read_masks=has_subject_token(model), **{"shuffle_buffer": 1000, **d.shards})
        return ds, ds.classes
    path, split = split_source(source)
    if not path.endswith(MANIFEST_SUFFIXES):
        raise ConfigError(f"data.{role}='{source}' is neither 'synthetic', a manifest ({', '.join(MANIFEST_SUFFIXES)}"
                          "[:split]) nor shards (*.tar)")
    from affectclip.data.datasets import ManifestDataset
    from affectclip.data.manifest import read_manifest

    manifest = read_manifest(path)
    if split is not None:
        manifest = manifest.split(split)
        if len(manifest) == 0:
            raise ConfigError(f"data.{role}: manifest {path} has no rows with split '{split}'")
    ds = ManifestDataset(manifest, transform, classes=d.classes, video_sampler=_video_sampler(cfg, role),
                         read_masks=has_subject_token(model))  # only that tower reads masks
    return ds, list(ds.classes) if getattr(ds, "classes", None) else d.classes


def _video_sampler(cfg: TrainConfig, role: str) -> Any:
    if cfg.data.video_frames <= 0:
        return None
    from affectclip.data.video import make_sampler

    spec = dict(cfg.data.video_sampler or {"name": "uniform"})
    spec.setdefault("num_frames", cfg.data.video_frames)
    return make_sampler(train=role == "train", **spec)


def make_collate():
    """The batch collate of the data package (drops unreadable samples into batch['errors'])."""
    from affectclip.data.datasets import collate

    return collate
