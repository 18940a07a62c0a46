"""Epoch sampling: seeded, split across ranks without duplicates, optional class balancing for skewed data."""

from __future__ import annotations

import torch

from affectclip.core.distributed import DistInfo
from affectclip.train.loop import EpochSampler, class_balance_weights


def _info(rank: int = 0, world: int = 2) -> DistInfo:
    return DistInfo(rank=rank, world_size=world, local_rank=rank)


def test_ranks_get_disjoint_equal_shares_of_a_seeded_permutation():
    shares = []
    for rank in range(2):
        s = EpochSampler(21, 4, seed=3, info=_info(rank))
        s.set_epoch(1)
        shares.append(list(s))
    assert len(shares[0]) == len(shares[1]) == 8 and not set(shares[0]) & set(shares[1])
    again = EpochSampler(21, 4, seed=3, info=_info(0))
    again.set_epoch(1)
    assert list(again) == shares[0]


def test_class_balance_draws_rare_classes_as_often_as_common_ones():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    counts = {}
    for alpha in (0.0, 0.5, 1.0):
        s = EpochSampler(1000, 10, seed=0, info=_info(0, 1), weights=class_balance_weights(labels, alpha))
        drawn = torch.tensor(labels)[torch.tensor(list(s))]
        counts[alpha] = torch.bincount(drawn, minlength=3).tolist()
    assert counts[0.0][2] < 30 and counts[1.0][2] > 250 and counts[0.0][2] < counts[0.5][2] < counts[1.0][2]
    assert sum(counts[1.0]) == 1000


def test_subject_masks_are_read_only_for_a_subject_token_model(tmp_path):
    """A manifest's masks cost a second decode per sample: read them only when the image tower takes them."""
    from affectclip.data.synthetic import write_synthetic_dataset
    from affectclip.models.factory import create_model
    from affectclip.train.config import load_config
    from affectclip.train.data import build_datasets

    manifest = write_synthetic_dataset(tmp_path / "d", 4, 0, image_size=64)
    for subject_token, has_mask in ((False, False), (True, True)):
        cfg = load_config("demo", [f"data.train={manifest}:train", "data.val=null"])
        model = create_model("tiny-vit-wordpiece", vision_cfg={"subject_token": subject_token})
        train_ds, _, _ = build_datasets(cfg, model)
        sample = train_ds[0]
        assert ("mask" in sample) is has_mask and sample["image"].shape == (3, 64, 64)


class _Draws(torch.utils.data.Dataset):
    """Each sample is one draw of the (worker's) global RNG, as per-sample augmentation makes."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "draw": torch.rand(3)}


def test_loader_workers_draw_per_rank_augmentations_without_touching_the_global_rng():
    from affectclip.data.shared_batches import SharedBatchReader
    from affectclip.train.config import load_config
    from affectclip.train.loop import build_loader

    cfg = load_config("demo", ["data.num_workers=1", "data.batch_size=4", "run.seed=5"])

    def draws(rank: int) -> torch.Tensor:
        loader = build_loader(_Draws(), list(range(8)), cfg, _info(rank), torch.device("cpu"))
        reader, out = SharedBatchReader(), []
        for batch in loader:  # as the loop reads them: CPU batches from workers come through shared buffers
            out.append(reader.unpack(batch)["draw"].clone())
            reader.release(batch)
        return torch.cat(out)

    before = torch.get_rng_state()
    rank0, rank1 = draws(0), draws(1)
    assert torch.equal(torch.get_rng_state(), before)  # a resumed run's main-process draws stay in step
    assert torch.equal(draws(0), rank0)  # reproducible per rank
    assert not torch.allclose(rank0, rank1)  # DDP ranks augment differently
