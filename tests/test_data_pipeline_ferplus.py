"""The whole data pipeline on a few hundred real FER+ faces: manifest command -> check -> shards -> loader -> training."""

from __future__ import annotations

import json

import torch

from affectclip.cli import main
from affectclip.data.datasets import ManifestDataset, collate
from affectclip.data.manifest import read_manifest, write_manifest
from affectclip.data.shards import ShardDataset
from affectclip.models.factory import create_transforms

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FERPLUS_CLASSES = "[" + ", ".join(CLASSES) + "]"


def test_ferplus_pipeline_end_to_end(ferplus_dir, tmp_path):
    full = tmp_path / "ferplus.jsonl"
    assert main(["data", "ferplus", str(ferplus_dir), str(full)]) == 0
    manifest = read_manifest(full)
    rows = manifest.records
    subset = [r for r in rows if r["split"] == "train"][:256] + [r for r in rows if r["split"] == "valid"][:64]
    for r in subset:  # keep paths valid from the new manifest's folder
        r["path"] = str(manifest.resolve(r["path"]))
    small = write_manifest(subset, tmp_path / "small.jsonl")
    assert main(["data", "check", str(small)]) == 0

    transform = create_transforms("tiny-cnn-minilm", train=True)
    ds = ManifestDataset(read_manifest(small).split("train"), transform, classes=CLASSES)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 256 and not any(b["errors"] for b in batches)
    img = batches[0]["image"]
    assert img.shape == (64, 3, 64, 64)
    assert torch.allclose(img[:, 0], img[:, 1]) and torch.allclose(img[:, 1], img[:, 2]), "grey faces -> 3 equal channels"
    assert all(isinstance(c, str) and c for c in batches[0]["caption"])

    shards = tmp_path / "shards"
    assert main(["data", "shard", str(small), str(shards), "--max-count", "100"]) == 0
    tars = sorted(shards.glob("*.tar"))
    assert len(tars) == 4
    assert sum(1 for _ in ShardDataset([str(t) for t in tars], transform=transform, classes=CLASSES)) == 320

    run = tmp_path / "run"
    rc = main(["train", "demo", f"data.train={small}:train", f"data.val={small}:valid", f"data.classes={FERPLUS_CLASSES}",
               "data.caption_field=caption", "data.batch_size=32", "run.epochs=1", "run.max_steps=2",
               "run.progress=false", "--output", str(run)])
    assert rc == 0
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["steps"] == 2 and summary["bad_samples"] == 0
    assert summary["validation"][-1]["n_samples"] == 64
