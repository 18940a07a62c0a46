"""Temporal heads: spec sizes, padding-mask invariance, autocast, bad shapes."""

import pytest
import torch

from affectclip.models.registry import TEMPORAL_HEADS
from affectclip.models.temporal import build_temporal_head

HEADS = ["mean", "emotionclip_transformer", "emoclip_transformer", "conv1d"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_emoclip_quirk_parameter_counts_match_spec():
    # methods.md §3.3: ≈ 68.7 M with the released argument swap, ≈ 6.8 M without.
    assert (
        round(n_params(build_temporal_head("emoclip_transformer", 512, faithful_quirk=True)) / 1e6, 1) == 68.7
    )
    assert (
        round(n_params(build_temporal_head("emoclip_transformer", 512, faithful_quirk=False)) / 1e6, 1) == 6.8
    )


def test_emoclip_released_init_hides_the_frames_and_a_small_init_does_not():
    """N(0,1) CLS/position tables (the release) swamp frame features of CLIP-like scale: two different clips give
    nearly the same output at initialisation. embed_init_std=0.02 makes the output depend on the frames."""

    def sensitivity(std: float) -> float:
        torch.manual_seed(0)
        head = build_temporal_head("emoclip_transformer", 128, faithful_quirk=True, embed_init_std=std)
        a, b = head(torch.randn(4, 8, 128) * 0.4), head(torch.randn(4, 8, 128) * 0.4)
        return ((a - b).norm(dim=-1) / a.norm(dim=-1)).mean().item()

    assert sensitivity(1.0) < 0.1 and sensitivity(0.02) > 0.5


@pytest.mark.parametrize("name", HEADS)
def test_padded_clip_equals_unpadded_clip(name):
    torch.manual_seed(0)
    head = build_temporal_head(
        name, 32, **({"layers": 1, "heads": 2, "ffn_dim": 64} if "transformer" in name else {})
    )
    head.eval()
    x = torch.randn(2, 8, 32)
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[1, 5:] = True
    batched = head(x, pad)
    alone = head(x[1:2, :5])
    assert batched.shape == (2, 32)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_heads_train_under_bf16_autocast(name):
    head = build_temporal_head(
        name, 16, **({"layers": 1, "heads": 2, "ffn_dim": 32} if "transformer" in name else {})
    )
    x = torch.randn(3, 4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = head(x)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_emotionclip_head_is_residual_mean_of_input():
    head = build_temporal_head("emotionclip_transformer", 16, layers=1, heads=2, ffn_dim=32).eval()
    x = torch.randn(1, 4, 16)
    # Zeroing the encoder's final LayerNorm makes its output 0, leaving the residual: mean of the raw frames.
    torch.nn.init.zeros_(head.encoder.norm.weight)
    torch.nn.init.zeros_(head.encoder.norm.bias)
    torch.testing.assert_close(head(x), x.mean(1))


def test_bad_inputs_are_named():
    head = build_temporal_head("emotionclip_transformer", 16, layers=1, heads=2, ffn_dim=32, max_frames=4)
    with pytest.raises(ValueError, match="position table"):
        head(torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match=r"\[B,T,D\]"):
        head(torch.randn(6, 16))
    with pytest.raises(KeyError, match="available"):
        TEMPORAL_HEADS.build("lstm", dim=16)
