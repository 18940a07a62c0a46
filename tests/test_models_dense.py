"""`DualEncoder.encode_image_and_dense`: the pooled and dense image features of one tower pass are the ones the two
separate calls give, and the tower really runs once (the global + local loss needs both every step)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from affectclip.models.dual_encoder import DualEncoder
from affectclip.models.factory import create_model
from affectclip.models.mobilenet_v2 import MobileNetV2Tower
from affectclip.models.small_cnn import SmallCNNTower

TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32; one pass and two passes differ by reduction order at most


def _tiny_vit(subject_token: bool = False) -> DualEncoder:
    config = create_model("tiny-vit").config
    return create_model({**config, "vision_cfg": {**config["vision_cfg"], "subject_token": subject_token}})


def _with_tower(visual: nn.Module) -> DualEncoder:
    model = create_model("tiny-vit")
    return DualEncoder(visual, model.text, config=model.config)


def _count_passes(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("build, first_layer", [
    (_tiny_vit, lambda m: m.visual.transformer),
    (lambda: _tiny_vit(subject_token=True), lambda m: m.visual.transformer),
    (lambda: _with_tower(SmallCNNTower(output_dim=64, image_size=64, dropout=0.3)),
     lambda m: m.visual.backbone.features[0]),
    (lambda: _with_tower(MobileNetV2Tower(output_dim=64, image_size=64, pretrained=False)),
     lambda m: next(x for x in m.visual.backbone.modules() if isinstance(x, nn.Conv2d))),
], ids=["vit", "vit-subject-token", "small-cnn", "mobilenet-v2"])
@pytest.mark.parametrize("normalize", [True, False])
def test_one_pass_gives_what_the_two_calls_give_and_runs_the_tower_once(build, first_layer, normalize):
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        pooled = model.encode_image(images, normalize=normalize)
        dense = model.encode_dense(images, normalize=normalize)
        passes = _count_passes(first_layer(model))
        one_pooled, one_dense = model.encode_image_and_dense(images, normalize=normalize)
    assert passes == [1]
    torch.testing.assert_close(one_pooled, pooled, **TOL)
    torch.testing.assert_close(one_dense, dense, **TOL)


def test_the_subject_mask_shapes_both_outputs_of_the_one_pass():
    """With a subject mask the dense grid comes from the same (masked) pass as the pooled feature."""
    torch.manual_seed(0)
    model = _tiny_vit(subject_token=True).eval()
    images, mask = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64)
    mask[:, 16:48, 16:48] = 1
    with torch.no_grad():
        pooled, dense = model.encode_image_and_dense(images, mask=mask)
        torch.testing.assert_close(pooled, model.encode_image(images, mask=mask), **TOL)
        torch.testing.assert_close(dense, nn.functional.normalize(model.visual.forward_dense(images, mask=mask), dim=-1),
                                   **TOL)


def test_a_cnn_tower_refuses_a_subject_mask_and_a_tower_without_dense_output_is_named():
    model = _with_tower(SmallCNNTower(output_dim=64, image_size=64))
    with pytest.raises(ValueError, match="subject token"):
        model.encode_image_and_dense(torch.randn(1, 3, 64, 64), mask=torch.ones(1, 64, 64))

    class Pooled(nn.Module):
        output_dim = 64

        def forward(self, images, mask=None):
            return images.flatten(1)[:, :64]

    with pytest.raises(NotImplementedError, match="Pooled has no dense"):
        _with_tower(Pooled()).encode_image_and_dense(torch.randn(1, 3, 64, 64))
