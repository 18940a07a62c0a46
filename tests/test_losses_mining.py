"""Cross-modal guided positive mining targets and the EMA / frozen mining encoder."""

from __future__ import annotations

import pytest
import torch

from affectclip.losses import EMAEncoder, PositiveMiner, ema_update


def _sims():
    # Captions 0 and 1 say the same thing; images 0 and 2 look alike.
    text = torch.eye(4)
    text[0, 1] = text[1, 0] = 0.95
    image = torch.eye(4)
    image[0, 2] = image[2, 0] = 0.97
    return text, image


def test_cross_guide_uses_the_target_modality_per_direction():
    text, image = _sims()
    y_i2t, y_t2i = PositiveMiner(guide="cross", weight=1.0, warmup_frac=0.0).targets(text, image, 0, 10)
    assert torch.allclose(
        y_i2t[0], torch.tensor([0.5, 0.5, 0.0, 0.0])
    )  # image 0 → caption 1 via text similarity
    assert torch.allclose(
        y_t2i[0], torch.tensor([0.5, 0.0, 0.5, 0.0])
    )  # caption 0 → image 2 via image similarity
    assert torch.allclose(y_i2t[3], torch.eye(4)[3]) and torch.allclose(y_t2i[3], torch.eye(4)[3])


def test_text_image_and_guides():
    text, image = _sims()
    y_i2t, y_t2i = PositiveMiner(guide="text", warmup_frac=0.0).targets(text, image, 0, 10)
    assert torch.equal(y_i2t, y_t2i) and y_i2t[0, 1] > 0 and y_i2t[0, 2] == 0
    y_i2t, _ = PositiveMiner(guide="image", warmup_frac=0.0).targets(text, image, 0, 10)
    assert y_i2t[0, 2] > 0 and y_i2t[0, 1] == 0
    y_i2t, y_t2i = PositiveMiner(guide="and", warmup_frac=0.0).targets(text, image, 0, 10)
    assert torch.equal(y_i2t, torch.eye(4)) and torch.equal(y_t2i, torch.eye(4))


def test_formula_rows_sum_to_one_and_top_k_caps_positives():
    sim = torch.full((5, 5), 0.99)
    sim[0, 4] = 0.95
    miner = PositiveMiner(guide="text", threshold_text=0.9, top_k=2, weight=0.5, warmup_frac=0.0)
    y, _ = miner.targets(sim, sim, 5, 10)
    assert torch.allclose(y.sum(1), torch.ones(5))
    assert ((y > 0).sum(1) == 3).all()  # itself + top-2
    assert y[0, 0] == pytest.approx(1 / 2.0) and y[0, 4] == 0  # (1 + β·0)/(1 + β·2), lowest candidate dropped
    assert miner.last_diagnostics["mined_per_row_i2t"].item() == pytest.approx(2.0)


def test_warmup_off_and_zero_top_k_give_identity():
    text, image = _sims()
    miner = PositiveMiner(warmup_frac=0.5, threshold_text=0.5, threshold_image=0.5)
    assert all(torch.equal(y, torch.eye(4)) for y in miner.targets(text, image, step=4, total_steps=10))
    assert not torch.equal(miner.targets(text, image, step=5, total_steps=10)[0], torch.eye(4))
    for miner in (PositiveMiner(guide="off"), PositiveMiner(top_k=0)):
        assert all(torch.equal(y, torch.eye(4)) for y in miner.targets(text, image, 10, 10))


def test_soft_mining_weights_candidates_by_similarity_keeping_mass():
    sim = torch.eye(3)
    sim[0, 1], sim[0, 2] = 0.99, 0.95
    hard, _ = PositiveMiner(guide="text", threshold_text=0.9, weight=1.0, warmup_frac=0.0).targets(
        sim, sim, 0, 1
    )
    soft, _ = PositiveMiner(guide="text", threshold_text=0.9, weight=1.0, soft=True, warmup_frac=0.0).targets(
        sim, sim, 0, 1
    )
    assert soft[0, 0] == pytest.approx(hard[0, 0].item())  # total mined mass unchanged
    assert soft[0, 1] > soft[0, 2] > 0 and torch.allclose(soft.sum(1), torch.ones(3))


def test_labels_guide_gives_supervised_contrastive_targets_and_precision():
    labels = torch.tensor([0, 1, 0, 0, -1])
    zeros = torch.zeros(5, 5)
    y, y2 = PositiveMiner(guide="labels", weight=1.0, warmup_frac=0.0).targets(
        zeros, zeros, 0, 1, labels=labels
    )
    assert torch.allclose(y[0], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3, 0])) and torch.equal(y, y2)
    assert torch.equal(y[4], torch.eye(5)[4])  # unknown label: no positives
    text, image = _sims()
    miner = PositiveMiner(guide="cross", warmup_frac=0.0)
    miner.targets(text, image, 0, 1, labels=torch.tensor([0, 0, 1, 2]))
    assert miner.last_diagnostics["mining_precision"].item() == pytest.approx(0.5)  # 0↔1 right, 0↔2 wrong
    with pytest.raises(ValueError, match="needs labels"):
        PositiveMiner(guide="labels").targets(zeros, zeros, 0, 1)


def test_bad_settings_and_nan_similarities_are_reported():
    with pytest.raises(ValueError, match="guide"):
        PositiveMiner(guide="both")
    sim = torch.eye(3)
    sim[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="image_sim"):
        PositiveMiner().targets(torch.eye(3), sim, 0, 1)


def test_ema_update_and_frozen_copy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema, frozen = EMAEncoder(model, momentum=0.9), EMAEncoder(model, frozen=True)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    frozen.update(model)
    assert torch.allclose(ema.module[0].weight, start + 0.1)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))
    assert torch.equal(frozen.module[0].weight, start)
    ema.train()
    assert not ema.module.training and not ema(torch.randn(4, 3)).requires_grad
    with pytest.raises(KeyError, match="counterpart"):
        ema_update(torch.nn.Linear(3, 2), torch.nn.Linear(3, 2, bias=False), 0.5)
