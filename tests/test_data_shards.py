"""Tar shards: a manifest packed and streamed back gives the same samples, split across ranks and workers."""

from __future__ import annotations

import tarfile

import pytest
import torch

from affectclip.cli import main
from affectclip.data.datasets import ManifestDataset, collate
from affectclip.data.manifest import read_manifest
from affectclip.data.shards import ShardDataset, write_shards
from affectclip.data.synthetic import CLASSES, write_synthetic_dataset
from affectclip.data.transforms import ImageTransform


@pytest.fixture()
def manifest(tmp_path):
    return read_manifest(write_synthetic_dataset(tmp_path / "syn", n_train=10, n_test=0, image_size=24))


def test_round_trip_matches_manifest_dataset(manifest, tmp_path):
    shards = write_shards(manifest, tmp_path / "shards", max_count=4)
    assert len(shards) == 3
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames()[:3] == ["synthetic-train-000000.png", "synthetic-train-000000.mask.png",
                                      "synthetic-train-000000.json"]
    t = ImageTransform(16)
    streamed = list(ShardDataset(tmp_path / "shards", t, classes=CLASSES))
    direct = ManifestDataset(manifest, t, classes=CLASSES)
    assert [s["index"] for s in streamed] == list(range(10))
    for s in streamed:
        d = direct[s["index"]]
        assert torch.equal(s["image"], d["image"]) and torch.equal(s["mask"], d["mask"])
        assert (s["label"], s["caption"], s["id"]) == (d["label"], d["caption"], d["id"])


def test_ranks_and_workers_partition_the_samples(manifest, tmp_path):
    write_shards(manifest, tmp_path / "shards", max_count=2)  # 5 shards
    seen = []
    for rank in range(2):
        ds = ShardDataset(tmp_path / "shards", ImageTransform(8), shuffle_buffer=3, seed=1, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
        seen += [i for b in loader for i in b["index"].tolist()]
    assert sorted(seen) == list(range(10))


def test_shuffle_is_seeded(manifest, tmp_path):
    write_shards(manifest, tmp_path / "shards", max_count=3)
    order = lambda seed: [s["index"] for s in ShardDataset(tmp_path / "shards", shuffle_buffer=4, seed=seed)]  # noqa: E731
    assert order(0) == order(0) and sorted(order(0)) == list(range(10)) and order(0) != list(range(10))


def test_shard_command_and_corrupt_member(manifest, tmp_path):
    src = manifest.source
    assert main(["data", "shard", str(src), str(tmp_path / "out"), "--max-count", "100"]) == 0
    bad = tmp_path / "bad.tar"
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar, tarfile.open(bad, "w") as out:
        for m in tar.getmembers()[:3]:
            data = tar.extractfile(m).read()
            if m.name.endswith(".png") and "mask" not in m.name:
                data = data[:20]
            m.size = len(data)
            import io

            out.addfile(m, io.BytesIO(data))
    (sample,) = list(ShardDataset([bad], classes=CLASSES))
    assert set(sample) == {"error", "index", "path"} and "bad.tar" in sample["path"]
