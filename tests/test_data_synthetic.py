"""Synthetic faces: deterministic, captions tell the truth about the drawn regions, and classes are learnable."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from affectclip.data.synthetic import (
    CLASSES,
    REGIONS,
    SyntheticFaceDataset,
    make_face,
    onset_sequence,
    write_synthetic_dataset,
)


def test_same_seed_same_sample_and_splits_differ():
    a, b = SyntheticFaceDataset(16, "train", seed=3), SyntheticFaceDataset(16, "train", seed=3)
    for i in (0, 7, 15):
        assert np.array_equal(a.face(i)["image"], b.face(i)["image"])
        assert a.face(i)["caption"] == b.face(i)["caption"]
    test = SyntheticFaceDataset(16, "test", seed=3)
    assert not np.array_equal(a.face(0)["image"], test.face(0)["image"])
    assert not np.array_equal(a.face(0)["image"], SyntheticFaceDataset(16, "train", seed=4).face(0)["image"])


def test_all_classes_present_and_sample_dict_contract():
    ds = SyntheticFaceDataset(24, "train", seed=0, image_size=48)
    samples = [ds[i] for i in range(len(ds))]
    assert {s["label"] for s in samples} == set(range(len(CLASSES)))
    s = samples[1]
    assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.float32
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["mask"].shape == (48, 48) and set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert set(s["caption"]) == {"global", "local", "summary"} and s["id"] == "synthetic-train-000001"
    assert len(s["caption"]["local"]) == len(s["local_regions"])


@pytest.mark.parametrize(
    "label,region,facs",
    [
        (1, "mouth", "lip corner puller"),
        (1, "cheeks", "cheek raiser"),
        (3, "eyes", "upper lid raiser"),
        (3, "mouth", "jaw drop"),
        (5, "nose", "nose wrinkler"),
        (6, "brows", "brow lowerer"),
        (2, "mouth", "lip corner depressor"),
        (7, "mouth", "dimpler"),
    ],
)
def test_captions_name_the_prototype_regions(label, region, facs):
    for seed in range(5):
        face = make_face(seed, label=label)
        cap = face["caption"]
        assert CLASSES[label] in cap["global"] and CLASSES[label] in cap["summary"]
        k = face["local_regions"].index(region)
        assert facs in cap["local"][k]


def test_region_boxes_inside_image_and_on_the_face():
    for seed in range(30):
        face = make_face(seed, image_size=64)
        mask = face["mask"]
        assert set(face["regions"]) == set(REGIONS)
        for x0, y0, x1, y1 in face["regions"].values():
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert mask[y0:y1, x0:x1].mean() > 0.5  # regions lie mostly on the face
        r = face["regions"]
        assert r["brows"][1] < r["eyes"][1] < r["mouth"][1]  # heads are never rolled more than 10 degrees


def test_onset_sequence_goes_from_neutral_to_apex():
    face = make_face(11, label=3)  # surprise: the mouth opens over the clip
    frames, masks = onset_sequence(face["params"], 5)
    assert frames.shape == (5, 64, 64, 3) and masks.shape == (5, 64, 64)
    x0, y0, x1, y1 = face["regions"]["mouth"]
    dark = [(f[y0:y1, x0:x1].mean(axis=2) < 90).sum() for f in frames]
    assert dark[-1] > dark[0] + 5  # open mouth interior appears
    assert np.abs(frames[-1].astype(int) - face["image"].astype(int)).mean() < 8  # apex ≈ still image
    video = SyntheticFaceDataset(2, video_frames=4)[1]
    assert video["video"].shape == (4, 3, 64, 64) and not video["padding_mask"].any()


def test_classes_are_separable_but_not_trivial():
    from sklearn.linear_model import LogisticRegression

    def feats(ds):
        x, y = [], []
        for i in range(len(ds)):
            f = ds.face(i)
            g = cv2.resize(
                cv2.cvtColor(f["image"], cv2.COLOR_RGB2GRAY).astype(np.float32),
                (24, 24),
                interpolation=cv2.INTER_AREA,
            ).ravel()
            x.append((g - g.mean()) / (g.std() + 1e-6))
            y.append(f["label"])
        return np.array(x), np.array(y)

    xtr, ytr = feats(SyntheticFaceDataset(480, "train", seed=0))
    xte, yte = feats(SyntheticFaceDataset(240, "test", seed=0))
    acc = LogisticRegression(max_iter=300, C=0.1).fit(xtr, ytr).score(xte, yte)
    assert acc > 0.4  # chance is 0.125


def test_write_synthetic_dataset_files_and_manifest(tmp_path):
    manifest = write_synthetic_dataset(tmp_path, n_train=8, n_test=4, seed=1, image_size=32)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 12 and {r["split"] for r in rows} == {"train", "test"}
    img = cv2.imread(str(tmp_path / rows[0]["path"]))
    assert img.shape == (32, 32, 3)
    assert cv2.imread(str(tmp_path / rows[0]["mask"]), cv2.IMREAD_GRAYSCALE).shape == (32, 32)
    assert rows[0]["label"] in CLASSES and isinstance(rows[0]["caption"]["local"], list)
