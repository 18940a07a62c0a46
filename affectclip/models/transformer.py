"""Pre-LN transformer blocks shared by the CLIP image and text towers.

Parameter names and shapes mirror open_clip / OpenAI CLIP exactly (`resblocks.{i}.attn.in_proj_weight`,
`mlp.c_fc`, ...) so their state dicts load without renaming, while attention itself runs through
`F.scaled_dot_product_attention` (fused kernels, causal flag) instead of `nn.MultiheadAttention`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI CLIP was trained with (loading its weights with exact GELU
    runs silently but degrades accuracy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16/bf16 weights or autocast do not lose precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(orig_type)


class Attention(nn.Module):
    """Multi-head self-attention with the packed `in_proj_weight` [3W, W] layout of `nn.MultiheadAttention`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """x = x + Attn(LN1(x)); x = x + MLP(LN2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks on batch-first [B, N, W] sequences, with optional per-block activation
    checkpointing (trades ~30% more compute for activation memory that no longer grows with depth)."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)]
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal=causal)
        return x
