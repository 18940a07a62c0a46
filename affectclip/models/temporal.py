"""Temporal heads: per-frame features [B,T,D] -> one clip feature [B,D].

Each head takes a `padding_mask` [B,T] (True = padded frame) so variable-length clips can share a batch.
Specification: methods.md §2.4 (EmotionCLIP VisualHead), §3.3 (EmoCLIP TemporalTransformer and its released
argument-swap quirk).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from affectclip.models.errors import ShapeError
from affectclip.models.registry import TEMPORAL_HEADS


def masked_mean(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 ignoring padded positions; a clip with no valid frame yields zeros, not NaN."""
    if padding_mask is None:
        return x.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


def _check(x: torch.Tensor, padding_mask: torch.Tensor | None, max_frames: int | None = None) -> None:
    if x.ndim != 3:
        raise ValueError(f"temporal head expects frame features [B,T,D], got {tuple(x.shape)}")
    if padding_mask is not None and padding_mask.shape != x.shape[:2]:
        raise ValueError(f"padding_mask must be [B,T]={tuple(x.shape[:2])}, got {tuple(padding_mask.shape)}")
    if max_frames is not None and x.shape[1] > max_frames:
        raise ShapeError(f"clip has {x.shape[1]} frames but the temporal head's position table holds {max_frames}; "
                         f"sample at most {max_frames} frames per clip")


@TEMPORAL_HEADS.register("mean")
class MeanPool(nn.Module):
    """Average of frame features: the parameter-free baseline (and EmotionCLIP's `temporal_fusion='mean'`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(x, padding_mask)
        return masked_mean(x, padding_mask)


@TEMPORAL_HEADS.register("emotionclip_transformer")
class EmotionCLIPTemporal(nn.Module):
    """EmotionCLIP's VisualHead: frame position embeddings, a post-LN TransformerEncoder, residual, mean.

    z = mean_t(Encoder(x + E_frame)_t + x_t): the residual is added to the *un-positioned* input, as released.
    """

    def __init__(self, dim: int, layers: int = 6, heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1,
                 max_frames: int = 8) -> None:
        super().__init__()
        self.max_frames = max_frames
        self.frame_position = nn.Embedding(max_frames, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout=dropout, activation="gelu", batch_first=True,
                                           norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(x, padding_mask, self.max_frames)
        pos = self.frame_position(torch.arange(x.shape[1], device=x.device))
        h = self.encoder(x + pos, src_key_padding_mask=padding_mask)
        return masked_mean(h + x, padding_mask)


class _PreNormAttention(nn.Module):
    """Multi-head self-attention as in EmoCLIP's transformer.py (qkv without bias, output Linear with bias)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # default scale = dim_head ** -0.5
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _PreNormFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@TEMPORAL_HEADS.register("emoclip_transformer")
class EmoCLIPTemporal(nn.Module):
    """EmoCLIP's TemporalTransformer: learned CLS + position table, pre-norm blocks, output = CLS token.

    `faithful_quirk=True` reproduces the released construction `VClip(d_model=512, nhead=8, dim_forward=2048)`, which
    passes mlp_dim=d_model and dim_head=dim_forward: head size 2048 and a 512-wide FFN (~68.7 M parameters for two
    layers). False gives the evidently intended head size 64 and FFN 2048 (~6.8 M).
    `embed_init_std`: the released code draws the CLS token and position table from N(0, 1); next to frame features
    of std ~0.4 they dominate the CLS output at initialisation, so clips start almost indistinguishable. 0.02
    (ViT-style) lets the frames through from the first step.
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 8, ffn_dim: int = 2048, dim_head: int = 64,
                 faithful_quirk: bool = False, max_frames: int = 1024, embed_init_std: float = 1.0) -> None:
        super().__init__()
        if faithful_quirk:
            dim_head, ffn_dim = ffn_dim, dim
        self.max_frames = max_frames
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * embed_init_std)
        self.pos_embedding = nn.Parameter(torch.randn(1, max_frames + 1, dim) * embed_init_std)
        self.blocks = nn.ModuleList(
            nn.ModuleList([_PreNormAttention(dim, heads, dim_head), _PreNormFeedForward(dim, ffn_dim)]) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_sequence(x, padding_mask)[:, 0]

    def forward_sequence(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T,D] -> the whole output sequence [B,1+T,D] (CLS first), as EmoCLIP's TemporalTransformer returns."""
        _check(x, padding_mask, self.max_frames)
        b, t, _ = x.shape
        h = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1) + self.pos_embedding[:, : t + 1].to(x.dtype)
        key_mask = None
        if padding_mask is not None:
            key_mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), padding_mask], dim=1)
        for attn, ff in self.blocks:
            h = h + attn(h, key_mask)
            h = h + ff(h)
        return h


@TEMPORAL_HEADS.register("conv1d")
class Conv1dTemporal(nn.Module):
    """EmotionCLIP's 'conv_1d' alternative: depthwise Conv1d (k=3, no padding, no bias), then temporal mean.

    An output position is kept only when its whole window lies on real frames.
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(x, padding_mask)
        if x.shape[1] < self.kernel_size:
            raise ValueError(f"conv1d temporal head needs at least {self.kernel_size} frames, got {x.shape[1]}")
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out_mask = None
        if padding_mask is not None:
            out_mask = padding_mask.unfold(1, self.kernel_size, 1).any(dim=-1)
        return masked_mean(y, out_mask)


def build_temporal_head(name: str, dim: int, **kwargs: object) -> nn.Module:
    """Build a registered temporal head by name (used by the model factory for `temporal_cfg`)."""
    return TEMPORAL_HEADS.build(name, dim=dim, **kwargs)
