"""Bad inputs to the method tasks are named clearly: missing caption parts, masks, empty clips, NaN features."""

from __future__ import annotations

import pytest
import torch

from affectclip.core.distributed import DistInfo
from affectclip.models.factory import create_model, get_tokenizer
from affectclip.train.config import load_config
from affectclip.train.tasks import build_task


def _batch(captions, **extra):
    n = len(captions)
    return {"image": torch.rand(n, 3, 64, 64), "caption": captions, "label": torch.zeros(n, dtype=torch.long),
            "index": torch.arange(n), "id": [f"s{i}" for i in range(n)], **extra}


def test_global_local_task_names_samples_without_structured_captions():
    cfg = load_config("emocapclip", ["model.name=tiny-vit-wordpiece"])
    model = create_model("tiny-vit-wordpiece")
    task = build_task(cfg, model, get_tokenizer(model), DistInfo())
    with pytest.raises(ValueError, match=r"needs structured captions with a 'global' part; samples \['s1'\]"):
        task.prepare(_batch([{"global": "a smile", "local": ["lips up"]}, "just text"]), torch.device("cpu"))


def test_subject_token_model_without_masks_says_what_to_do():
    cfg = load_config("demo", ["model.overrides.vision_cfg.subject_token=true"])
    model = create_model("tiny-vit-wordpiece", vision_cfg={"subject_token": True})
    task = build_task(cfg, model, get_tokenizer(model), DistInfo())
    with pytest.raises(ValueError, match="subject token but the batch carries no subject `mask`"):
        task.prepare(_batch(["a smile", "a frown"]), torch.device("cpu"))


def test_wrong_mask_size_and_empty_clips_are_errors():
    model = create_model("tiny-vit-wordpiece", vision_cfg={"subject_token": True})
    with pytest.raises(ValueError, match="mask"):
        model.encode_image(torch.rand(2, 3, 64, 64), mask=torch.ones(2, 32, 32))
    with pytest.raises(ValueError, match="do not match the frames"):
        model.encode_video(torch.rand(1, 3, 3, 64, 64), mask=torch.ones(1, 2, 64, 64))
    with pytest.raises(ValueError, match=r"no frames \(T=0\)"):
        model.encode_video(torch.rand(1, 0, 3, 64, 64))


def test_sentiment_from_batch_requires_vectors():
    cfg = load_config("demo", ["loss.name=sentiment", "loss.sentiment={scorer: batch}"])
    model = create_model("tiny-vit-wordpiece")
    task = build_task(cfg, model, get_tokenizer(model), DistInfo())
    with pytest.raises(ValueError, match="no `sentiment` or `soft_label`"):
        task.prepare(_batch(["a smile", "a frown"]), torch.device("cpu"))
    inputs = task.prepare(_batch(["a smile", "a frown"], soft_label=torch.tensor([[0.9, 0.1], [0.2, 0.8]])),
                          torch.device("cpu"))
    feats = task.features(model, inputs)
    assert torch.isfinite(task.loss(feats, 0, 1)["loss"])


def test_nan_features_are_named_by_the_loss():
    cfg = load_config("demo")
    model = create_model("tiny-vit-wordpiece")
    task = build_task(cfg, model, get_tokenizer(model), DistInfo())
    feats = task.features(model, task.prepare(_batch(["a smile", "a frown"]), torch.device("cpu")))
    feats["image"] = feats["image"].detach().clone()
    feats["image"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="image_features"):
        task.loss(feats, 0, 1)
