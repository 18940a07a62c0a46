"""CLIP Vision Transformer image tower (open_clip key layout) with EmotionCLIP's optional subject token.

Subject token (EmotionCLIP, methods.md §2.4): m = AvgPool2d(patch)(mask) gives the fraction of each patch covered
by the subject; u = sum_p m_p * E_pos[1 + p] (un-normalised, no parameters of its own) is appended after the
patch tokens, before `ln_pre`. It adds no weights, so CLIP checkpoints load into towers with or without it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from affectclip.models.errors import ShapeError
from affectclip.models.registry import IMAGE_TOWERS
from affectclip.models.transformer import LayerNorm, Transformer

_MISSING_POLICIES = ("zero", "omit")


@IMAGE_TOWERS.register("vit")
class VisionTransformer(nn.Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        output_dim: int,
        head_width: int = 64,
        mlp_ratio: float = 4.0,
        quick_gelu: bool = False,
        subject_token: bool = False,
        subject_token_missing: str = "zero",
        patch_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if subject_token_missing not in _MISSING_POLICIES:
            raise ValueError(
                f"subject_token_missing must be one of {_MISSING_POLICIES}, got '{subject_token_missing}'"
            )
        if not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"patch_dropout must be in [0, 1), got {patch_dropout}")
        if image_size < patch_size:
            raise ValueError(f"image_size {image_size} is smaller than patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.output_dim = output_dim
        self.subject_token = subject_token
        self.subject_token_missing = subject_token_missing
        self.patch_dropout = patch_dropout

        scale = width**-0.5
        n_patches = self.grid_size[0] * self.grid_size[1]
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(n_patches + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, width // head_width, mlp_ratio, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)

    def _subject_token(self, mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """[B,H,W] subject mask -> [B,1,W] token = patch-coverage-weighted sum of patch positional embeddings."""
        b, _, h, w = images.shape
        if mask.shape != (b, h, w):
            raise ShapeError(
                f"subject mask must have shape [B,H,W] = {(b, h, w)} matching the images, got {tuple(mask.shape)}"
            )
        coverage = F.avg_pool2d(mask.to(self.positional_embedding.dtype).unsqueeze(1), self.patch_size)
        coverage = coverage.flatten(1)  # [B, P], row-major like the patch tokens
        return (coverage @ self.positional_embedding[1:]).unsqueeze(1)

    def _drop_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Keep a random subset of patch tokens (FLIP-style speed-up); training only."""
        b, n, _ = patches.shape
        keep = max(1, int(n * (1.0 - self.patch_dropout)))
        idx = torch.randn(b, n, device=patches.device).topk(keep, dim=-1).indices
        return patches[torch.arange(b, device=patches.device).unsqueeze(-1), idx]

    def _tokens(self, images: torch.Tensor, mask: torch.Tensor | None, drop: bool) -> torch.Tensor:
        """Images (+ mask) -> the full output sequence after `ln_post`: [CLS, patches..., (subject)]."""
        if mask is not None and not self.subject_token:
            raise ValueError(
                "a subject mask was passed but this image tower has no subject token; build the model with "
                "vision_cfg={'subject_token': True} or do not pass a mask"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B,3,H,W], got {tuple(images.shape)}")
        x = self.conv1(images.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # [B, P, W]
        pos = self.positional_embedding.to(x.dtype)
        if x.shape[1] + 1 != pos.shape[0]:
            raise ValueError(
                f"images of size {tuple(images.shape[2:])} give {x.shape[1]} patches but this tower expects "
                f"{self.image_size}x{self.image_size} images ({pos.shape[0] - 1} patches); resize the inputs"
            )
        cls = (self.class_embedding.to(x.dtype) + pos[0]).expand(x.shape[0], 1, -1)
        patches = x + pos[1:]
        if drop and self.patch_dropout > 0.0:
            patches = self._drop_patches(patches)
        parts = [cls, patches]
        if self.subject_token:
            if mask is not None:
                parts.append(self._subject_token(mask, images).to(x.dtype))
            elif self.subject_token_missing == "zero":
                parts.append(torch.zeros_like(cls))
        x = self.ln_pre(torch.cat(parts, dim=1))
        return self.ln_post(self.transformer(x))

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B,3,H,W] (+ subject mask [B,H,W]) -> [B, output_dim] projected CLS feature."""
        return self._tokens(images, mask, drop=self.training)[:, 0] @ self.proj

    def forward_dense(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B,3,H,W] -> [B, P, output_dim] projected patch features in row-major grid order (no patch dropout,
        so the grid stays complete)."""
        n = self.grid_size[0] * self.grid_size[1]
        return self._tokens(images, mask, drop=False)[:, 1 : 1 + n] @ self.proj

    def forward_pooled_and_dense(
        self, images: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` and `forward_dense` from ONE transformer pass: ([B, output_dim], [B, P, output_dim]). The dense
        grid must stay complete, so patch dropout is not applied, and a subject mask shapes both outputs."""
        n = self.grid_size[0] * self.grid_size[1]
        tokens = self._tokens(images, mask, drop=False)
        return tokens[:, 0] @ self.proj, tokens[:, 1 : 1 + n] @ self.proj
