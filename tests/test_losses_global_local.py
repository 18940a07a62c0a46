"""Global + local alignment loss: memory-saving attn_pool against a materialised reference, masking, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from affectclip.losses import ClipLoss, GlobalLocalLoss, attention_maps, local_similarity


def _batch(n=4, p=6, k=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, k, dtype=torch.bool)
    mask[1, 2] = False
    return (
        torch.randn(n, d, generator=g),
        torch.randn(n, p, d, generator=g),
        torch.randn(n, d, generator=g),
        torch.randn(n, k, d, generator=g),
        mask,
    )


def naive_attn_pool(patches, sentences, mask, tau):
    """Materialises every pooled region r_ijk = normalise(Σ_p a_p P_ip) and averages cos(r_ijk, l_jk)."""
    n, m = len(patches), len(sentences)
    out = torch.zeros(n, m)
    for i in range(n):
        pi = F.normalize(patches[i], dim=-1)
        for j in range(m):
            values = []
            for k in range(sentences.shape[1]):
                if mask[j, k]:
                    sent = F.normalize(sentences[j, k], dim=0)
                    a = torch.softmax(pi @ sent / tau, dim=0)
                    values.append(F.normalize(a @ pi, dim=0) @ sent)
            out[i, j] = torch.stack(values).mean() if values else 0.0
    return out


def test_attn_pool_gram_trick_equals_materialised_regions():
    _, patches, _, sentences, mask = _batch()
    got = local_similarity(patches, sentences, mask, "attn_pool", tau=0.1)
    assert torch.allclose(got, naive_attn_pool(patches, sentences, mask, 0.1), atol=1e-5)


def test_token_max_and_sentence_global_modes():
    image, patches, _, sentences, mask = _batch()
    cos = torch.einsum("npd,mkd->nmkp", F.normalize(patches, dim=-1), F.normalize(sentences, dim=-1))
    want = (cos.amax(-1) * mask).sum(-1) / mask.sum(-1)
    assert torch.allclose(local_similarity(patches, sentences, mask, "token_max"), want, atol=1e-6)
    got = local_similarity(None, sentences, mask, "sentence_global", image_global=image)
    want = torch.einsum("nd,mkd->nmk", F.normalize(image, dim=-1), F.normalize(sentences, dim=-1))
    assert torch.allclose(got, (want * mask).sum(-1) / mask.sum(-1), atol=1e-6)
    with pytest.raises(ValueError, match="image_global"):
        local_similarity(patches, sentences, mask, "sentence_global")


def test_attention_maps_are_distributions_peaking_on_the_described_patch():
    patches = torch.eye(4, 8)[None]  # 4 orthogonal patches
    maps = attention_maps(patches, patches[:, [2, 0]], tau=0.1)
    assert maps.shape == (1, 2, 4) and torch.allclose(maps.sum(-1), torch.ones(1, 2))
    assert maps[0].argmax(-1).tolist() == [2, 0]


def test_loss_parts_and_global_branch_equals_clip_loss():
    image, patches, text, sentences, mask = _batch()
    out = GlobalLocalLoss(w_glob=1.0, w_loc=0.5, w_intra=0.2)(
        F.normalize(image, dim=-1), patches, F.normalize(text, dim=-1), sentences, mask, 20.0
    )
    clip = ClipLoss()(F.normalize(image, dim=-1), F.normalize(text, dim=-1), 20.0)
    assert out["loss_glob"].item() == pytest.approx(clip.item(), rel=1e-6)
    total = out["loss_glob"] + 0.5 * out["loss_loc"] + 0.2 * out["loss_intra"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert all(torch.isfinite(v) for v in out.values()) and out["loss_loc"] > 0 and out["loss_intra"] > 0


def test_local_loss_matches_manual_soft_infonce_with_local_scale():
    image, patches, text, sentences, mask = _batch(seed=1)
    loss_fn = GlobalLocalLoss(local_scale_init=5.0)
    y = torch.softmax(torch.randn(4, 4), -1)
    out = loss_fn(image, patches, text, sentences, mask, 10.0, targets=(y, y.T.softmax(-1)))
    logits = 5.0 * local_similarity(patches, sentences, mask, "attn_pool")
    want = 0.5 * (
        -(y * logits.log_softmax(-1)).sum(-1).mean()
        - (y.T.softmax(-1) * logits.T.log_softmax(-1)).sum(-1).mean()
    )
    assert out["loss_loc"].item() == pytest.approx(want.item(), rel=1e-5)


def test_samples_without_local_sentences_are_masked_and_empty_batch_gives_zero():
    image, patches, text, sentences, mask = _batch()
    mask[2] = False
    sentences[2] = 1e3  # garbage in padded slots must not matter
    loss_fn = GlobalLocalLoss(w_intra=1.0)
    out = loss_fn(image, patches, text, sentences, mask, 10.0)
    keep = torch.tensor([0, 1, 3])
    logits = 10.0 * local_similarity(patches, sentences, mask)  # local scale init 10
    # image→text: caption 2 is neither a row nor a candidate; text→image: image 2 stays a valid negative.
    want = 0.5 * (
        F.cross_entropy(logits[keep][:, keep], torch.arange(3)) + F.cross_entropy(logits.T[keep], keep)
    )
    assert torch.isfinite(out["loss_loc"]) and out["loss_loc"].item() == pytest.approx(want.item(), rel=1e-5)
    sentences[2] = -7.0
    assert loss_fn(image, patches, text, sentences, mask, 10.0)["loss_loc"].item() == pytest.approx(
        out["loss_loc"].item(), rel=1e-6
    )
    empty = loss_fn(image, patches, text, sentences, torch.zeros_like(mask), 10.0)
    assert empty["loss_loc"].item() == 0.0 and empty["loss_intra"].item() == 0.0
    empty["loss"].backward()
    assert loss_fn.local_logit_scale.grad is not None and torch.isfinite(loss_fn.local_logit_scale.grad)


def test_local_loss_pulls_a_sentence_toward_its_matching_patch():
    torch.manual_seed(0)
    patches = F.normalize(torch.randn(3, 5, 16), dim=-1)
    target_patch = patches[0, 3]
    sentence = (F.normalize(torch.randn(16), dim=0) * 0.5 + target_patch * 0.5).requires_grad_(True)
    sentences = torch.cat([sentence[None, None], F.normalize(torch.randn(2, 1, 16), dim=-1)])
    before = F.cosine_similarity(sentence, target_patch, dim=0).item()
    out = GlobalLocalLoss(w_glob=0.0, w_loc=1.0)(
        torch.randn(3, 16), patches, torch.randn(3, 16), sentences, torch.ones(3, 1, dtype=torch.bool), 10.0
    )
    out["loss"].backward()
    moved = sentence.detach() - 0.5 * sentence.grad
    assert F.cosine_similarity(moved, target_patch, dim=0).item() > before


def test_local_scale_is_clamped_and_bad_mode_rejected():
    loss_fn = GlobalLocalLoss(local_scale_init=1000.0, max_scale=100.0)
    assert loss_fn.local_scale().item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="local mode"):
        GlobalLocalLoss(local_mode="crop")
    image, patches, text, sentences, mask = _batch()
    patches[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="patches"):
        GlobalLocalLoss()(image, patches, text, sentences, mask, 10.0)
