"""Training from tar shards: planned epochs, rank/worker splits, resampling and exact mid-epoch resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from affectclip.data.datasets import collate
from affectclip.data.manifest import read_manifest
from affectclip.data.shards import ShardDataset, batch_schedule, write_shards
from affectclip.data.synthetic import write_synthetic_dataset
from affectclip.data.transforms import ImageTransform
from affectclip.train.config import load_config
from affectclip.train.loop import TrainingError, train

TINY = [
    "model.name=tiny-vit-wordpiece", "data.val=null", "data.batch_size=8", "data.num_workers=0",
    "data.augment={scale: [0.8, 1.0]}", "run.progress=false", "run.log_every=1", "optim.warmup_steps=1",
    "optim.lr=0.002",
]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    manifest = read_manifest(write_synthetic_dataset(root / "syn", n_train=44, n_test=0, image_size=32))
    write_shards(manifest, root / "shards", max_count=10)  # 5 shards: 10, 10, 10, 10, 4
    return root / "shards"


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r}


def test_plan_gives_every_rank_the_same_number_of_full_batches(shard_dir):
    ds = ShardDataset(shard_dir)
    assert ds.counts == [10, 10, 10, 10, 4]
    # rank 0 reads shards 0, 2, 4 (24 samples), rank 1 shards 1, 3 (20): both take 20 // 8 = 2 batches
    assert ds.plan(8, 0, rank=0, world_size=2) == 2
    # one rank, two workers: worker 0 reads 10 + 10 + 4 = 24 -> 3 batches, worker 1 reads 20 -> 2
    assert ds.plan(8, 2) == 5
    assert ShardDataset(sorted(shard_dir.glob("*.tar"))).counts == [10, 10, 10, 10, 4]  # no index: tar headers
    assert ShardDataset(shard_dir, resampled=True, epoch_samples=64).plan(8, 0, rank=1, world_size=2) == 4


def test_training_on_a_shard_folder_runs_the_planned_steps_and_learns(shard_dir, tmp_path):
    summary = train(load_config("demo", [*TINY, f"data.train={shard_dir}", "run.epochs=3"]), tmp_path / "run")
    assert summary["steps"] == 3 * (44 // 8) and summary["bad_samples"] == 0
    losses = _losses(tmp_path / "run")
    assert sum(list(losses.values())[-5:]) < sum(list(losses.values())[:5]), "loss should fall over three epochs"


def test_resampled_shards_stream_a_nominal_epoch(shard_dir, tmp_path):
    cfg = load_config("demo", [*TINY, f"data.train={shard_dir}", "run.epochs=2",
                               "data.shards={resampled: true, epoch_samples: 24, shuffle_buffer: 4}"])
    assert train(cfg, None)["steps"] == 2 * 3


def test_too_few_samples_for_a_batch_is_a_clear_error(shard_dir):
    with pytest.raises(TrainingError, match="write more shards or set data.shards.resampled=true"):
        train(load_config("demo", [*TINY, f"data.train={shard_dir}", "data.batch_size=64"]), None)


def test_unknown_shard_option_is_named(shard_dir):
    with pytest.raises(Exception, match="unknown key.*'shuffle'.*data.shards"):
        train(load_config("demo", [*TINY, f"data.train={shard_dir}", "data.shards={shuffle: 5}"]), None)


def test_mid_epoch_resume_from_shards_equals_the_uninterrupted_run(shard_dir, tmp_path):
    torch.set_num_threads(1)
    overrides = [*TINY, f"data.train={shard_dir}", "run.epochs=2", "run.save_every_steps=2", "run.keep_last=20",
                 "data.shards={shuffle_buffer: 6}"]
    full = tmp_path / "full"
    train(load_config("demo", overrides), full)
    # Emulate a kill after the step-8 checkpoint: epoch 2 (5 steps per epoch), 3 batches into it.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    state = json.loads((resumed / "checkpoints" / "step_00000008" / "state.json").read_text())
    assert state == {"step": 8, "epoch": 1, "batch": 3, "best": None}  # no validation split: no best model
    (resumed / "latest.json").write_text(json.dumps({**state, "dir": "checkpoints/step_00000008"}))
    for later in ("step_00000010",):
        shutil.rmtree(resumed / "checkpoints" / later)
    (resumed / "model.safetensors").unlink()
    train(load_config("demo", overrides), resumed, resume=True)
    a, b = _losses(full), _losses(resumed)
    assert sorted(a) == list(range(1, 11))
    for step in range(9, 11):
        assert a[step] == pytest.approx(b[step], abs=1e-6), f"loss differs at step {step}"
    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=f"final weight {k} differs")


def test_batch_schedule_follows_the_dataloader_worker_cycle(shard_dir):
    """Skipping k batches in each worker's own stream reproduces the tail of a two-worker DataLoader epoch."""
    assert batch_schedule([3, 1], 3) == ([2, 1], 1) and batch_schedule([3, 1], 2) == ([1, 1], 0)
    assert batch_schedule([1, 3, 2], 4) == ([1, 2, 1], 2) and batch_schedule([1, 3], 9) == ([1, 3], 0)

    def batches(skip: int) -> list[list[int]]:
        ds = ShardDataset(shard_dir, ImageTransform(8), shuffle_buffer=5, seed=3)
        ds.plan(4, 2)
        ds.set_epoch(1, skip_batches=skip)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, drop_last=True)
        return [b["index"].tolist() for b in loader]

    full = batches(0)  # worker 0: 24 samples -> 6 batches, worker 1: 20 -> 5
    assert len(full) == 11 and len(set(sum(full, []))) == 44
    assert batches(7) == full[7:] and batches(10) == full[10:] and batches(3) == full[3:]


def test_a_corrupt_shard_is_counted_and_training_goes_on(shard_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    (broken / "shard-000001.tar").write_bytes(b"not a tar archive")
    summary = train(load_config("demo", [*TINY, f"data.train={broken}", "run.epochs=1", "data.shards={shuffle_buffer: 0}"]),
                    tmp_path / "run")
    assert summary["steps"] >= 3 and summary["bad_samples"] == 1
    (bad,) = summary["bad_sample_list"]
    assert bad["path"].endswith("shard-000001.tar") and "unreadable shard" in bad["error"]
