"""ManifestDataset + collate: sample-dict contract, bad files reported (never substituted), label mapping errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from affectclip.data.datasets import ManifestDataset, collate
from affectclip.data.manifest import write_manifest
from affectclip.data.synthetic import CLASSES, write_synthetic_dataset
from affectclip.data.transforms import ImageTransform


@pytest.fixture()
def synthetic_manifest(tmp_path):
    return write_synthetic_dataset(tmp_path / "syn", n_train=8, n_test=0, seed=0, image_size=32)


def test_samples_follow_the_contract(synthetic_manifest):
    ds = ManifestDataset(synthetic_manifest, ImageTransform(24), classes=CLASSES)
    s = ds[2]
    assert s["image"].shape == (3, 24, 24) and s["mask"].shape == (24, 24)
    assert s["label"] == 2 and s["index"] == 2 and s["id"] == "synthetic-train-000002"
    assert set(s["caption"]) == {"global", "local", "summary"}
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 24, 24) and batch["label"].tolist() == [0, 1, 2, 3]
    assert len(batch["caption"]) == 4 and batch["errors"] == []


def test_broken_files_become_error_samples_not_substitutes(tmp_path):
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    rows = [
        {"path": p, "label": "happiness", "caption": "x"}
        for p in ("ok.png", "trunc.png", "junk.jpg", "gone.png")
    ]
    ds = ManifestDataset(write_manifest(rows, tmp_path / "m.jsonl"), ImageTransform(8))
    samples = [ds[i] for i in range(4)]
    assert "image" in samples[0]
    for i in (1, 2, 3):
        assert set(samples[i]) == {"error", "index", "path"} and samples[i]["index"] == i
    assert "not found" in samples[3]["error"]
    batch = collate(samples)
    assert batch["image"].shape[0] == 1 and batch["index"].tolist() == [0]
    assert [e["index"] for e in batch["errors"]] == [1, 2, 3]
    assert collate(samples[1:]) == {"errors": samples[1:]}


def test_unknown_label_lists_the_classes(tmp_path):
    path = write_manifest([{"path": "a.png", "label": "joy"}], tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"'joy' is not one of the classes \['neutral', 'happiness'"):
        ManifestDataset(path, classes=CLASSES)
    path = write_manifest([{"path": "a.png", "label": 9}], tmp_path / "m2.jsonl")
    with pytest.raises(ValueError, match="outside"):
        ManifestDataset(path, classes=CLASSES)


def test_soft_labels_targets_and_sentiment(tmp_path):
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "a.png")
    rows = [
        {"path": "a.png", "label": "b", "votes": [1, 3], "targets": {"valence": 0.5}, "sentiment": [0.1] * 7},
        {"path": "a.png", "label": None, "caption": "c", "votes": [0, 2], "targets": {"arousal": -1.0}},
    ]
    ds = ManifestDataset(write_manifest(rows, tmp_path / "m.jsonl"), classes=["a", "b"])
    s0, s1 = ds[0], ds[1]
    assert torch.allclose(s0["soft_label"], torch.tensor([0.25, 0.75])) and s1["label"] == -1
    assert ds.target_names == ["valence", "arousal"]
    assert s0["targets"][0] == 0.5 and torch.isnan(s0["targets"][1])
    batch = collate([s0, s1])
    assert batch["soft_label"].shape == (2, 2) and batch["sentiment"][1] is None
    assert batch["caption"] == [None, "c"]


def test_frame_folder_videos_and_padding(tmp_path):
    for name, n in (("v1", 10), ("v2", 3)):
        (tmp_path / name).mkdir()
        for k in range(n):
            Image.fromarray(np.full((12, 12, 3), 20 * k, np.uint8)).save(tmp_path / name / f"{k:03d}.png")
    rows = [{"path": "v1", "label": 0, "caption": "a"}, {"path": "v2", "label": 1, "caption": "b"}]
    from affectclip.data.video import UniformSampler

    ds = ManifestDataset(
        write_manifest(rows, tmp_path / "m.jsonl"), ImageTransform(8), video_sampler=UniformSampler(4)
    )
    s = ds[0]
    assert s["video"].shape == (4, 3, 8, 8) and not s["padding_mask"].any()
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 4, 3, 8, 8) and batch["label"].tolist() == [0, 1]
    padded = collate(
        [ds[0], {**ds[1], "video": ds[1]["video"][:2], "padding_mask": torch.zeros(2, dtype=bool)}]
    )
    assert padded["padding_mask"][1].tolist() == [False, False, True, True]
