"""Worker batches through reused shared memory: intact while the trainer holds them, identical training."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from affectclip.data.datasets import collate
from affectclip.data.shared_batches import PACKED_KEY, SharedBatchCollate, SharedBatchReader
from affectclip.train import loop
from affectclip.train.config import load_config
from affectclip.train.loop import train


class _Numbered(Dataset):
    """Sample i: a float image filled with i, an int label, a bool flag and a caption (a tensor of every kind the
    training batches carry, plus a list)."""

    def __len__(self) -> int:
        return 96

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 8, 8), float(i)), "label": i % 7, "index": i,
                "flag": torch.tensor([i % 2 == 0, i % 3 == 0]), "caption": f"face {i}"}


def _growing_collate(samples: list[dict]) -> dict:
    """collate plus a tensor whose length grows with the batch: later batches outgrow their slot's buffer."""
    batch = collate(samples)
    first = int(batch["index"][0])
    batch["blob"] = torch.arange(first + 1, dtype=torch.int64)
    return batch


def _expect(batch: dict) -> None:
    idx = batch["index"]
    assert torch.equal(batch["image"], idx.float().view(-1, 1, 1, 1).expand(-1, 3, 8, 8))
    assert torch.equal(batch["label"], idx % 7)
    assert torch.equal(batch["flag"], torch.stack([idx % 2 == 0, idx % 3 == 0], 1))
    assert batch["caption"] == [f"face {int(i)}" for i in idx]
    assert torch.equal(batch["blob"], torch.arange(int(idx[0]) + 1))


def test_worker_batches_stay_intact_until_the_trainer_releases_them():
    """The trainer holds 4 batches at a time, more than a worker's 3 slots: no held batch may change (a worker that
    reused a slot before its release would overwrite one), and released slots must really be reused."""
    loader = DataLoader(_Numbered(), batch_size=4, num_workers=2, prefetch_factor=2,
                        collate_fn=SharedBatchCollate(_growing_collate, slots=3))
    reader = SharedBatchReader()
    held, packed, reused = [], 0, 0
    for _ in range(2):  # two epochs: the second epoch's workers bring new rings
        for batch in loader:
            slot = batch.get(PACKED_KEY)
            packed += slot is not None
            reused += slot is not None and slot.buffer is None
            held.append(reader.unpack(batch))
            for b in held:
                _expect(b)
            if len(held) == 4:
                reader.release(held.pop(0))
        for b in held:
            reader.release(b)
        held = []
        reader.reset()
    assert packed >= 30  # of 48 batches; the rest took PyTorch's own way while every slot was held
    assert reused >= 10


def test_main_process_batches_are_left_as_collated():
    batch = SharedBatchCollate(collate, slots=2)([_Numbered()[i] for i in range(3)])
    assert PACKED_KEY not in batch and batch["image"].shape == (3, 3, 8, 8)


def test_training_with_shared_batches_equals_the_ordinary_hand_over(tmp_path, monkeypatch):
    """Two epochs with a DataLoader worker (augmentation drawn in the worker): the same losses and weights whether
    batches come through the reused buffers or PyTorch's fresh segments; and the loop hands each slot back only
    after the optimiser step that read it."""
    steps, unpacked_at, released = [], {}, []  # optimiser steps; steps done when each batch arrived / was released
    step, unpack, release = loop._optimizer_step, SharedBatchReader.unpack, SharedBatchReader.release

    def counting_step(*args, **kwargs):
        out = step(*args, **kwargs)
        steps.append(1)
        return out

    def recording_unpack(self, batch):
        unpacked_at[id(batch)] = len(steps)
        return unpack(self, batch)

    def recording_release(self, batch):
        if PACKED_KEY in batch:
            released.append((unpacked_at[id(batch)], len(steps)))
        release(self, batch)

    monkeypatch.setattr(loop, "_optimizer_step", counting_step)
    monkeypatch.setattr(SharedBatchReader, "unpack", recording_unpack)
    monkeypatch.setattr(SharedBatchReader, "release", recording_release)
    base = ["model.name=tiny-vit-wordpiece", "data.val=null", "data.batch_size=16", "data.num_workers=1",
            "data.synthetic={n_train: 64, n_val: 0, image_size: 64, seed: 0}", "run.progress=false",
            "run.log_every=1", "run.epochs=2", "optim.lr=0.002"]
    runs = {}
    for shared in (True, False):
        out = tmp_path / str(shared)
        summary = train(load_config("demo", [*base, f"data.shared_batches={str(shared).lower()}"]), out)
        assert summary["steps"] == 8
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        runs[shared] = [r["loss"] for r in records if "loss" in r], load_file(out / "model.safetensors")
    assert len(released) >= 6 and all(after > before for before, after in released)
    assert runs[True][0] == runs[False][0]
    for name, w in runs[True][1].items():
        assert torch.equal(w, runs[False][1][name]), name

