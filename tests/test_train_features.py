"""Frozen-tower feature caches: cached head training equals re-encoding, the CLI builds caches, stale ones are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from affectclip.cli import main
from affectclip.data.manifest import write_manifest
from affectclip.models.factory import get_tokenizer
from affectclip.train.config import ConfigError, load_config
from affectclip.train.data import build_datasets
from affectclip.train.features import FeatureDataset, build_feature_cache, build_frozen_model
from affectclip.train.loop import train, validate

# EmoCLIP with a tiny ViT (LayerNorm only, no dropout) on synthetic onset clips; fp32 and no augmentation so that
# re-encoding is deterministic and comparable to the cache bit for bit.
TINY = [
    "model.name=tiny-vit-wordpiece",
    "model.overrides={temporal_cfg: {type: emoclip_transformer, layers: 1, heads: 2, ffn_dim: 64, dim_head: 16}}",
    "data.train=synthetic", "data.val=synthetic", "data.video_frames=4", "data.video_sampler={name: uniform}",
    "data.batch_size=16", "data.num_workers=0", "data.augment={scale: [1.0, 1.0], ratio: [1.0, 1.0]}",
    "data.synthetic={n_train: 64, n_val: 32, image_size: 64, seed: 0}", "eval.prompts=expression",
    "run.precision=fp32", "run.device=cpu", "run.progress=false", "run.log_every=1", "optim.lr=0.05",
]


def _losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    assert main(["features", "emoclip", str(out), *TINY]) == 0
    return out


def test_cli_writes_both_splits_with_frame_text_and_labels(cache, capsys):
    index = json.loads((cache / "index.json").read_text())
    assert {r: s["n"] for r, s in index["splits"].items()} == {"train": 64, "val": 32}
    sample = FeatureDataset(cache, "train")[5]
    assert sample["frame_features"].shape == (4, 64) and sample["padding_mask"].shape == (4,)
    assert sample["text_features"].norm().item() == pytest.approx(1.0, abs=1e-5)
    assert sample["label"] == 5 % 8 and sample["id"] == "synthetic-train-000005"


def test_training_from_the_cache_equals_re_encoding_frozen_frames(cache, tmp_path):
    steps = [*TINY, "data.val=null", "run.max_steps=3"]
    train(load_config("emoclip", steps), tmp_path / "pixels")
    train(load_config("emoclip", [*steps, f"data.train=features:{cache}"]), tmp_path / "cached")
    pixels, cached = _losses(tmp_path / "pixels"), _losses(tmp_path / "cached")
    assert len(pixels) == 3
    np.testing.assert_allclose(cached, pixels, atol=1e-5)


def test_cached_training_learns_and_validates_zero_shot(cache, tmp_path):
    summary = train(load_config("emoclip", [*TINY, "run.epochs=15", "run.eval_every_epochs=15", f"data.train=features:{cache}",
                                            f"data.val=features:{cache}"]), tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses
    assert summary["validation"][-1]["n_samples"] == 32


@pytest.mark.slow
def test_two_ranks_train_from_one_cache_of_randomly_initialised_towers(cache, tmp_path, torchrun):
    """Every rank must build the same frozen towers (seeded by run.seed, not seed + rank), or the cache's weight
    check refuses rank 1's towers as stale."""
    torchrun(["train", "emoclip", *TINY, "data.val=null", "run.max_steps=2", f"data.train=features:{cache}",
              "--output", str(tmp_path / "ddp")])
    summary = json.loads((tmp_path / "ddp" / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2


def test_zero_shot_validation_on_the_cache_equals_re_encoding(cache):
    cfg = load_config("emoclip", TINY)
    model = build_frozen_model(cfg, torch.device("cpu"))
    _, pixels, classes = build_datasets(cfg, model)
    cached = FeatureDataset(cache, "val")
    args = (get_tokenizer(model), classes, cfg, torch.device("cpu"))
    assert validate(model, args[0], cached, *args[1:]) == validate(model, args[0], pixels, *args[1:])


@pytest.mark.slow
def test_two_ranks_build_the_cache_one_process_builds(cache, tmp_path, torchrun):
    """Under torchrun each rank encodes every other clip and rank 0 writes one cache, in dataset order."""
    res = torchrun(["features", "emoclip", str(tmp_path / "ddp"), *TINY])
    assert res.stdout.count("train: cached 64 samples") == 1
    one, two = (json.loads((d / "index.json").read_text()) for d in (cache, tmp_path / "ddp"))
    for role in ("train", "val"):
        assert two["splits"][role]["ids"] == one["splits"][role]["ids"]
        assert two["splits"][role]["captions"] == one["splits"][role]["captions"]
        a, b = load_file(cache / f"{role}.safetensors"), load_file(tmp_path / "ddp" / f"{role}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=f"{role} {key}")


def test_stale_cache_and_trainable_towers_are_refused(cache, tmp_path):
    wider = "model.overrides={vision_cfg: {width: 96}, temporal_cfg: {type: emoclip_transformer, layers: 1}}"
    with pytest.raises(ConfigError, match=r"stale.*vision_cfg\.width"):
        train(load_config("emoclip", [*TINY, wider, f"data.train=features:{cache}", "data.val=null"]), None)
    with pytest.raises(ConfigError, match=r"stale.*towers_sha256"):  # same architecture, other weights
        train(load_config("emoclip", [*TINY, "run.seed=1", f"data.train=features:{cache}", "data.val=null"]), None)
    with pytest.raises(ConfigError, match="frozen towers.*model.freeze_text=true"):
        train(load_config("emoclip", [*TINY, "model.freeze_text=false", f"data.train=features:{cache}"]), None)
    with pytest.raises(ConfigError, match="frozen towers.*model.freeze_image=true"):
        build_feature_cache(load_config("emoclip", [*TINY, "model.freeze_image=false"]), cache)


def test_unreadable_clips_are_counted_and_listed_not_fatal(tmp_path, capsys):
    rows = []
    for i in range(3):
        folder = tmp_path / f"clip{i}"
        folder.mkdir()
        for k in range(4):
            Image.fromarray(np.full((64, 64, 3), 40 * i + 10 * k, np.uint8)).save(folder / f"{k:03d}.png")
        rows.append({"path": f"clip{i}", "label": "happiness", "caption": f"clip {i}", "split": "train"})
    rows.append({"path": "missing", "label": "sadness", "caption": "gone", "split": "train"})
    manifest = write_manifest(rows, tmp_path / "m.jsonl")
    assert main(["features", "emoclip", str(tmp_path / "cache"), *TINY, f"data.train={manifest}:train",
                 "data.val=null", "data.classes=[happiness, sadness]"]) == 0
    out = capsys.readouterr().out
    assert "train: cached 3 samples, 1 failed" in out and "missing" in out
    assert len(FeatureDataset(tmp_path / "cache", "train")) == 3
