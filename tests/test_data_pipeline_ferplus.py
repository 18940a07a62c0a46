"""The whole data pipeline on a few hundred real FER+ faces: manifest command -> check -> shards -> loader -> training."""

from __future__ import annotations

import json
import shutil

import torch

from affectclip.cli import main
from affectclip.data.datasets import ManifestDataset, collate
from affectclip.data.ferplus import FERPLUS_CLASSES
from affectclip.data.manifest import read_manifest, write_manifest
from affectclip.data.shards import ShardDataset
from affectclip.data.transforms import create_transforms
from affectclip.models.factory import get_model_config

CLASSES = list(FERPLUS_CLASSES)
FERPLUS_CLASSES = "[" + ", ".join(CLASSES) + "]"


def _copy_images_beside(rows: list[dict], manifest, folder) -> None:
    """Copy the rows' images into `folder`/images and point the rows there: a manifest reads only files inside its
    own folder unless the user allows more, and the FER+ images live elsewhere."""
    (folder / "images").mkdir(exist_ok=True)
    for r in rows:
        src = manifest.resolve(r["path"])
        name = f"{r['split']}-{src.name}"
        shutil.copyfile(src, folder / "images" / name)
        r["path"] = f"images/{name}"


def test_ferplus_pipeline_end_to_end(ferplus_dir, tmp_path):
    full = tmp_path / "ferplus.jsonl"
    assert main(["data", "ferplus", str(ferplus_dir), str(full)]) == 0
    manifest = read_manifest(full, allow_outside=True)
    rows = manifest.records
    subset = [r for r in rows if r["split"] == "train"][:256] + [r for r in rows if r["split"] == "valid"][:64]
    _copy_images_beside(subset, manifest, tmp_path)
    small = write_manifest(subset, tmp_path / "small.jsonl")
    assert main(["data", "check", str(small)]) == 0

    transform = create_transforms(get_model_config("tiny-cnn-minilm"), train=True)
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


def test_an_unreadable_face_is_skipped_counted_once_and_named(ferplus_dir, tmp_path, capsys):
    """Two epochs over real faces with one corrupt file: training goes on; the summary names the file once and
    counts how often it was drawn."""
    full = tmp_path / "ferplus.jsonl"
    assert main(["data", "ferplus", str(ferplus_dir), str(full)]) == 0
    manifest = read_manifest(full, allow_outside=True)
    rows = [r for r in manifest.records if r["split"] == "train"][:64]
    _copy_images_beside(rows, manifest, tmp_path)
    (tmp_path / "broken.png").write_bytes(b"garbage")
    rows[5]["path"] = "broken.png"
    small = write_manifest(rows, tmp_path / "small.jsonl")
    run = tmp_path / "run"
    rc = main(["train", "demo", f"data.train={small}", "data.val=null", f"data.classes={FERPLUS_CLASSES}",
               "data.caption_field=caption", "data.batch_size=32", "run.epochs=2", "run.progress=false",
               "--output", str(run)])
    assert rc == 0
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["steps"] == 4 and summary["bad_samples"] == 1 and summary["bad_reads"] == 2
    (bad,) = summary["bad_sample_list"]
    assert bad["path"].endswith("broken.png") and bad["reads"] == 2
    assert "1 samples could not be read (2 failed reads over the run)" in capsys.readouterr().out
