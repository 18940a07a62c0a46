"""CLIP towers: golden reproduction of open_clip outputs, key layout, subject token, pooling, checkpointing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from affectclip.models.checkpoint import to_open_clip_state_dict
from affectclip.models.factory import config_from_open_clip, create_model
from affectclip.models.text_clip import TextTransformer
from affectclip.models.vit import VisionTransformer

GOLDEN = ["tiny-vit", "tiny-vit-quickgelu"]


def _golden_model(testvectors_dir, name):
    folder = testvectors_dir / name
    config = config_from_open_clip(json.loads((folder / "open_clip_config.json").read_text()))
    model = create_model(config, pretrained=folder / "open_clip_state_dict.safetensors").eval()
    return model, load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


def _close(actual, expected, rtol=1e-5):
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((actual - expected).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("name", GOLDEN)
def test_reproduces_open_clip_outputs(testvectors_dir, name):
    model, inputs, outputs = _golden_model(testvectors_dir, name)
    with torch.no_grad():
        img = model.encode_image(inputs["images"], normalize=False)
        txt = model.encode_text(inputs["text_tokens"], normalize=False)
        img_n = model.encode_image(inputs["images"])
        txt_n = model.encode_text(inputs["text_tokens"])
    _close(img, outputs["image_features"])
    _close(txt, outputs["text_features"])
    _close(img_n, outputs["image_features_normalized"])
    _close(txt_n, outputs["text_features_normalized"])
    assert model.logit_scale.item() == pytest.approx(outputs["logit_scale"].item(), rel=1e-6)
    logits = model.logit_scale.exp() * img_n @ txt_n.T
    labels = torch.arange(len(logits))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    _close(loss.reshape(1), outputs["clip_loss"])


@pytest.mark.parametrize("name", GOLDEN)
def test_export_uses_open_clip_key_names(testvectors_dir, name):
    model, _, _ = _golden_model(testvectors_dir, name)
    reference = load_file(testvectors_dir / name / "open_clip_state_dict.safetensors")
    exported = to_open_clip_state_dict(model)
    assert set(exported) == set(reference)
    for key, value in reference.items():
        assert torch.equal(exported[key], value), key


def _vit(**kw):
    torch.manual_seed(0)
    args = dict(image_size=32, patch_size=8, width=32, layers=2, output_dim=16, head_width=16)
    args.update(kw)
    return VisionTransformer(**args).eval()


def _naive_subject_forward(vit: VisionTransformer, images, mask):
    """Reference written with explicit loops, straight from methods.md §2.4."""
    ps = vit.patch_size
    rows, cols = vit.grid_size
    pos = vit.positional_embedding
    outs = []
    for b in range(images.shape[0]):
        patches = vit.conv1(images[b : b + 1]).flatten(2).transpose(1, 2)[0]
        tokens = [vit.class_embedding + pos[0]] + [patches[p] + pos[1 + p] for p in range(rows * cols)]
        u = torch.zeros_like(pos[0])
        for r in range(rows):
            for c in range(cols):
                coverage = mask[b, r * ps : (r + 1) * ps, c * ps : (c + 1) * ps].float().mean()
                u = u + coverage * pos[1 + r * cols + c]
        x = vit.ln_pre(torch.stack(tokens + [u])[None])
        for block in vit.transformer.resblocks:
            x = block(x)
        outs.append(vit.ln_post(x)[0, 0] @ vit.proj)
    return torch.stack(outs)


def test_subject_token_matches_naive_reference():
    vit = _vit(subject_token=True)
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 32, 32)
    mask[0, 4:20, 6:30] = 1.0
    mask[1, 10:12, 0:32] = 0.5
    with torch.no_grad():
        assert torch.allclose(vit(images, mask=mask), _naive_subject_forward(vit, images, mask), atol=1e-5)
        # an empty mask is the same as "no person": u = 0, i.e. the zero token used when no mask is given
        assert torch.allclose(vit(images, mask=torch.zeros(2, 32, 32)), vit(images), atol=1e-6)
        assert not torch.allclose(vit(images, mask=mask), vit(images), atol=1e-4)


def test_subject_token_omit_policy_equals_plain_vit():
    plain, omit = _vit(), _vit(subject_token=True, subject_token_missing="omit")
    omit.load_state_dict(plain.state_dict())  # no parameters of its own
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(images), omit(images), atol=1e-6)


def test_mask_errors_are_clear():
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="no subject token"):
        _vit()(images, mask=torch.ones(2, 32, 32))
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        _vit(subject_token=True)(images, mask=torch.ones(2, 16, 16))
    with pytest.raises(ValueError, match="subject_token_missing"):
        _vit(subject_token=True, subject_token_missing="drop")
    with pytest.raises(ValueError, match="resize the inputs"):
        _vit()(torch.randn(1, 3, 48, 48))


def test_dense_output_is_row_major_patch_grid():
    vit = _vit()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = vit.forward_dense(images)
    assert vit.grid_size == (4, 4)
    assert dense.shape == (2, 16, 16)
    # moving content in the top-left patch changes the first dense token most
    changed = images.clone()
    changed[:, :, :8, :8] += 3.0
    with torch.no_grad():
        delta = (vit.forward_dense(changed) - dense).norm(dim=-1).mean(0)
    assert delta.argmax().item() == 0


def test_patch_dropout_only_in_training():
    vit = _vit(patch_dropout=0.5)
    ref = _vit()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit(images), ref(images), atol=1e-6)
        vit.train()
        assert not torch.allclose(vit(images), ref(images), atol=1e-4)


def test_grad_checkpointing_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    model = create_model("tiny-vit")
    images, tokens = torch.randn(2, 3, 64, 64), torch.randint(1, 1000, (2, 77))
    tokens[:, 10] = 49407

    def run():
        model.zero_grad()
        out = model(images, tokens)
        loss = (out["image_features"] @ out["text_features"].T).sum()
        loss.backward()
        return (
            loss.detach(),
            model.visual.conv1.weight.grad.clone(),
            model.text.token_embedding.weight.grad.clone(),
        )

    plain = run()
    model.visual.set_grad_checkpointing(True)
    model.text.set_grad_checkpointing(True)
    checked = run()
    for a, b in zip(plain, checked, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_text_pooling_rules():
    tokens = torch.tensor([[49406, 320, 1125, 49407, 0, 0], [101, 2023, 102, 0, 0, 0]])
    argmax = TextTransformer(output_dim=8, context_length=6, width=16, heads=2, layers=1)
    last = TextTransformer(
        output_dim=8, context_length=6, vocab_size=30522, width=16, heads=2, layers=1, tokenizer="wordpiece"
    )
    assert argmax.pool == "argmax" and last.pool == "last"
    assert argmax.pool_index(tokens).tolist() == [3, 1]
    assert last.pool_index(tokens).tolist() == [3, 2]  # [SEP]=102 is not the max id: pool at last non-pad
    with pytest.raises(ValueError, match="token ids must lie"):
        last(torch.tensor([[101, 49407, 102]]))
    with pytest.raises(ValueError, match="context_length"):
        argmax(torch.zeros(1, 7, dtype=torch.long))
