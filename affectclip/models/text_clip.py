"""CLIP causal text tower (open_clip key layout) with an explicit pooling rule.

CLIP pools the hidden state at the end-of-text token, found as the argmax of the token ids because the BPE EOT id
(49407) is the largest in the vocabulary. That trick is wrong for a WordPiece vocabulary ([SEP] = 102 is not the
max id), so `pool="last"` pools at the last non-padding position instead; the default follows the tokenizer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from affectclip.models.registry import TEXT_TOWERS
from affectclip.models.transformer import LayerNorm, Transformer

DEFAULT_POOL = {"clip_bpe": "argmax", "wordpiece": "last"}


@TEXT_TOWERS.register("clip")
class TextTransformer(nn.Module):
    def __init__(
        self,
        output_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        mlp_ratio: float = 4.0,
        quick_gelu: bool = False,
        tokenizer: str = "clip_bpe",
        pool: str | None = None,
    ) -> None:
        super().__init__()
        if tokenizer not in DEFAULT_POOL:
            raise ValueError(f"text tokenizer must be one of {sorted(DEFAULT_POOL)}, got '{tokenizer}'")
        pool = pool or DEFAULT_POOL[tokenizer]
        if pool not in ("argmax", "last"):
            raise ValueError(f"text pool must be 'argmax' or 'last', got '{pool}'")
        self.output_dim = output_dim
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.pool = pool
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, quick_gelu)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self._init_parameters(width, layers)

    def _init_parameters(self, width: int, layers: int) -> None:
        """CLIP's initialisation (depth-scaled residual projections), for training from scratch."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B,L] ids -> [B] position whose hidden state represents the text."""
        if self.pool == "argmax":
            return tokens.argmax(dim=-1)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return torch.where(tokens != 0, positions, 0).amax(dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B,L] int64 ids (L <= context_length, 0 = padding) -> [B, output_dim]."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"tokens must be an integer tensor [B,L], got {tuple(tokens.shape)} {tokens.dtype}"
            )
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"token sequences have length {tokens.shape[1]} > context_length {self.context_length}; "
                "tokenize with this model's tokenizer (affectclip.get_tokenizer(model))"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}) but range over [{int(tokens.min())}, "
                f"{int(tokens.max())}]; the tokenizer does not match this text tower"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x, causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), self.pool_index(tokens)]
        return x @ self.text_projection
