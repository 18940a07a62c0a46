"""Batch augmentation: the same pixels as per-sample augmentation, drawn on whole batches; the staged-image cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from affectclip.data.batch_augment import BatchAugment, StagedTransform
from affectclip.data.transforms import ImageTransform, TransformParams
from affectclip.train.config import ConfigError, load_config
from affectclip.train.loop import train

AUGMENT = dict(scale=(0.4, 1.0), hflip=0.5, rotation=20.0, brightness=0.3, contrast=0.3, grayscale=0.3)


def _draw(params, i: int) -> TransformParams:
    return TransformParams(crop=tuple(params.crop[i].tolist()), hflip=bool(params.hflip[i]),
                           angle=float(params.angle[i]), brightness=float(params.brightness[i]),
                           contrast=float(params.contrast[i]), grayscale=bool(params.grayscale[i]))


# the FER+ recipe's augmentation: no rotation, so brightness folds into the resampling weights
RECIPE = dict(scale=(0.7, 1.0), hflip=0.5, brightness=0.3, contrast=0.3)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("stage", [48, 80])  # crops upsampled (48 -> 64) and downsampled with antialiasing (80 -> 64)
@pytest.mark.parametrize("augment", [AUGMENT, RECIPE], ids=["all-options", "recipe"])
def test_a_draw_gives_the_per_sample_pixels_and_masks(interpolation, stage, augment):
    torch.manual_seed(0)
    t = ImageTransform(64, train=True, interpolation=interpolation, **augment)
    aug = BatchAugment(t)
    images = torch.randint(0, 256, (12, 3, stage, stage), dtype=torch.uint8)
    images[:4] = images[:4] // 2 + 128  # bright faces: brightness > 1 saturates them
    masks = (torch.rand(12, stage, stage) > 0.5).to(torch.uint8)
    params = aug.sample_params(12, stage, stage)
    assert params.hflip.any() and (~params.hflip).any() and (params.brightness > 1).any()
    assert (params.angle != 0).all() if augment is AUGMENT else (params.angle == 0).all()
    out, out_masks = aug.apply(images, params, masks)
    assert out.shape == (12, 3, 64, 64) and out_masks.shape == (12, 64, 64)
    for i in range(12):
        ref, ref_mask = t.apply(images[i], _draw(params, i), masks[i].numpy())
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=0)
        assert torch.equal(out_masks[i], ref_mask)


def test_vectorised_draws_follow_the_per_sample_distribution():
    t = ImageTransform(64, train=True, scale=(0.5, 0.9), ratio=(0.8, 1.25), hflip=0.3, brightness=0.2)
    p = BatchAugment(t).sample_params(4000, 48, 60, torch.Generator().manual_seed(1))
    top, left, h, w = p.crop.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 48).all() and (left + w <= 60).all()
    area = (h * w).float() / (48 * 60)
    assert area.min() > 0.45 and area.max() < 0.95 and 0.66 < area.mean() < 0.74
    assert ((w.float() / h) > 0.75).all() and ((w.float() / h) < 1.33).all()
    assert 0.27 < p.hflip.float().mean() < 0.33
    assert p.brightness.min() >= 0.8 and p.brightness.max() <= 1.2 and (p.contrast == 1).all()
    # no box of the asked aspect fits a 4 x 200 strip: torchvision's fallback, the centre crop at the nearest ratio
    strip = BatchAugment(ImageTransform(64, train=True, ratio=(0.9, 1.1))).sample_params(5, 4, 200)
    assert strip.crop.tolist() == [[0, 98, 4, 4]] * 5


def test_clips_share_one_draw_unless_frames_are_independent():
    frame = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    clips = frame.expand(4, 6, 3, 40, 40).contiguous()
    for consistent in (True, False):
        torch.manual_seed(0)
        aug = BatchAugment(ImageTransform(32, train=True, consistent_clips=consistent, **AUGMENT))
        out, masks = aug(clips, torch.ones(4, 6, 40, 40, dtype=torch.uint8))
        assert out.shape == (4, 6, 3, 32, 32) and masks.shape == (4, 6, 32, 32)
        same_frames = all(torch.equal(out[b, 0], out[b, k]) for b in range(4) for k in range(6))
        assert same_frames is consistent
        assert not torch.equal(out[0, 0], out[1, 0])  # clips still differ from each other


def test_the_clip_setting_reaches_per_sample_transforms_too():
    """data.consistent_clip_augment=false (EmotionCLIP's released loader) must change what the datasets do."""
    from affectclip.models.factory import create_model
    from affectclip.train.data import train_transform

    model = create_model("tiny-vit-wordpiece")
    frames = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    frames[:] = frames[0]
    for flag, consistent in (("true", True), ("false", False)):
        cfg = load_config("demo", [f"data.consistent_clip_augment={flag}", "data.augment={scale: [0.3, 1.0]}"])
        torch.manual_seed(0)
        clip = train_transform(cfg, model).transform_clip(frames)
        assert all(torch.equal(clip[0], clip[k]) for k in range(5)) is consistent


def test_staging_is_a_lossless_pass_through_at_stage_size_and_the_eval_geometry_otherwise():
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    staged = StagedTransform(48)(face)
    assert staged.dtype == torch.uint8 and torch.equal(staged, torch.from_numpy(face).permute(2, 0, 1))
    grey = StagedTransform(48)(face[..., 0])
    assert grey.shape == (3, 48, 48) and torch.equal(grey[1], torch.from_numpy(face[..., 0]))
    wide = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    image, mask = StagedTransform(48)(wide, np.ones((60, 90), bool))
    ref = ImageTransform(48, mean=(0, 0, 0), std=(1, 1, 1))(wide)
    assert image.shape == (3, 48, 48) and (image.float() / 255 - ref).abs().max() <= 0.5 / 255 + 1e-6
    assert mask.dtype == torch.uint8 and mask.shape == (48, 48) and mask.all()
    with pytest.raises(ValueError, match="mask size"):
        StagedTransform(48)(face, np.ones((40, 40), bool))


def test_float_batches_are_refused_with_what_to_do():
    aug = BatchAugment(ImageTransform(32, train=True))
    with pytest.raises(ValueError, match="StagedTransform"):
        aug(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="train-mode"):
        BatchAugment(ImageTransform(32))


# ------------------------------------------------------------------------------------------------ in training
TINY = [
    "model.name=tiny-vit-wordpiece", "data.val=null", "data.batch_size=16", "data.num_workers=0",
    "data.augment={scale: [0.5, 1.0], hflip: 0.5, brightness: 0.2, contrast: 0.2}", "data.batch_augment=true",
    "run.progress=false", "run.log_every=1", "run.epochs=2", "optim.warmup_steps=2", "optim.lr=0.002",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from affectclip.data.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(tmp_path_factory.mktemp("faces"), 64, 0, seed=0, image_size=48)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    (path.parent / rows[5]["path"]).write_bytes(b"not a png")  # one corrupt file
    return path


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if "loss" in json.loads(line)]


def test_cached_images_train_exactly_like_decoding_every_epoch(tmp_path, manifest):
    """The staged-image cache only saves decoding: same losses, same weights, same bad-sample report."""
    torch.set_num_threads(1)
    runs = {}
    for cache in ("false", "true"):
        cfg = load_config("demo", [*TINY, f"data.train={manifest}:train", f"data.cache_images={cache}"])
        runs[cache] = train(cfg, tmp_path / cache)
    assert _losses(tmp_path / "false") == pytest.approx(_losses(tmp_path / "true"), abs=1e-6)
    assert len(_losses(tmp_path / "true")) == 8  # 2 epochs of 4 batches
    wa, wb = load_file(tmp_path / "false" / "model.safetensors"), load_file(tmp_path / "true" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    for summary in runs.values():  # the corrupt file is never cached: it is reported each epoch it is drawn
        assert summary["bad_samples"] == 1 and summary["bad_reads"] == 2


def test_cache_shared_by_dataloader_workers_is_filled_once(manifest):
    from affectclip.models.factory import create_model
    from affectclip.train.data import build_datasets

    cfg = load_config("demo", [*TINY, f"data.train={manifest}:train", "data.cache_images=true", "data.num_workers=2"])
    ds, _, _ = build_datasets(cfg, create_model("tiny-vit-wordpiece"))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=lambda s: s)
    first = [s for batch in loader for s in batch]
    assert ds.n_cached == 63  # every readable sample, stored by whichever worker decoded it
    again = [s for batch in loader for s in batch]
    for a, b in zip(first, again, strict=True):
        assert ("error" in a) == ("error" in b)
        if "image" in a:
            assert a["image"].dtype == torch.uint8 and torch.equal(a["image"], b["image"])
            assert a["caption"] == b["caption"] and a["label"] == b["label"]


def test_mid_epoch_resume_replays_the_batch_augmentation(tmp_path, manifest):
    torch.set_num_threads(1)
    overrides = [*TINY, f"data.train={manifest}:train", "run.save_every_steps=2", "run.keep_last=10"]
    full = tmp_path / "full"
    train(load_config("demo", overrides), full)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    ckpt = resumed / "checkpoints" / "step_00000006"  # epoch 2 of 2, after 2 of its 4 batches
    state = json.loads((ckpt / "state.json").read_text())
    assert state == {"step": 6, "epoch": 1, "batch": 2, "best": None}  # no validation split: no best model
    (resumed / "latest.json").write_text(json.dumps({**state, "dir": "checkpoints/step_00000006"}))
    (resumed / "log.jsonl").write_text("")
    train(load_config("demo", overrides), resumed, resume=True)
    assert _losses(resumed) == pytest.approx(_losses(full)[6:], abs=1e-6)
    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("overrides, message", [
    (["data.batch_augment=false", "data.cache_images=true"], "data.batch_augment=true"),
    (["data.stage_size=0"], "positive"),
    (["data.train=synthetic", "data.cache_images=true"], "needs a manifest"),
])
def test_bad_batch_augment_settings_are_clear_errors(overrides, message, manifest):
    from affectclip.models.factory import create_model
    from affectclip.train.data import build_datasets

    cfg = load_config("demo", [*TINY, f"data.train={manifest}:train", *overrides])
    with pytest.raises(ConfigError, match=message):
        build_datasets(cfg, create_model("tiny-vit-wordpiece"))
