"""The one model class of affectclip: an image tower and a text tower in a shared embedding space.

Every method (EmotionCLIP, EmoCLIP, EmoCapCLIP-proposal) and every tower pairing (CLIP ViT + CLIP text, MobileNetV2
+ MiniLM, ...) is a `DualEncoder`; methods differ by towers, temporal head, data and loss, never by model class.

Tower contracts (see ARCHITECTURE.md):
* image tower: ``output_dim``; ``forward(images[B,3,H,W], mask[B,H,W] | None) -> [B, output_dim]`` (projected);
  optionally ``forward_dense(images) -> [B, P, output_dim]`` (projected patch/cell features for local losses) and
  ``forward_pooled_and_dense(images, mask) -> ([B, output_dim], [B, P, output_dim])`` (both from one pass).
* text tower: ``output_dim``, ``context_length``; ``forward(tokens[B,L] int64) -> [B, output_dim]``; token id 0 is
  padding for every tokenizer we ship.
* temporal head: ``forward(frames[B,T,D], padding_mask[B,T] bool | None) -> [B, D]``; True in padding_mask marks
  a padded (absent) frame.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from affectclip.models.errors import ShapeError
from affectclip.models.temporal import masked_mean


class DualEncoder(nn.Module):
    """Image tower + text tower (+ optional temporal head) with a learnable, clamped logit scale.

    `logit_scale` is stored in log space like CLIP (s = exp(logit_scale)); `clamp_logit_scale` keeps s <= max_scale
    after each optimiser step, as open_clip and EmotionCLIP do.
    """

    def __init__(
        self,
        visual: nn.Module,
        text: nn.Module,
        temporal: nn.Module | None = None,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = math.log(100.0),
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if visual.output_dim != text.output_dim:
            raise ValueError(
                f"image tower outputs {visual.output_dim}-d features but text tower outputs {text.output_dim}-d; "
                "set the same embed_dim for both projections"
            )
        self.visual = visual
        self.text = text
        self.temporal = temporal
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_logit_scale = float(max_logit_scale)
        self.config: dict[str, Any] = dict(config or {})

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    @property
    def context_length(self) -> int:
        return int(self.text.context_length)

    def encode_image(self, images: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        """[B,3,H,W] (+ optional subject mask [B,H,W]) -> [B,D]."""
        if images.ndim != 4:
            raise ValueError(f"encode_image expects images of shape [B,3,H,W], got {tuple(images.shape)}")
        feats = self.visual(images, mask=mask)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_dense(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B,3,H,W] -> [B,P,D] projected patch (or CNN cell) features, for local/region losses and maps."""
        if not hasattr(self.visual, "forward_dense"):
            raise NotImplementedError(f"image tower {type(self.visual).__name__} has no dense (patch) output")
        feats = self.visual.forward_dense(images)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_image_and_dense(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,3,H,W] -> (pooled [B,D], dense [B,P,D]) from one tower pass: what `encode_image` and `encode_dense`
        give, for half the tower's cost (global + local losses need both every step)."""
        if not hasattr(self.visual, "forward_pooled_and_dense"):
            raise NotImplementedError(f"image tower {type(self.visual).__name__} has no dense (patch) output")
        if images.ndim != 4:
            raise ValueError(f"encode_image_and_dense expects images of shape [B,3,H,W], got {tuple(images.shape)}")
        pooled, dense = self.visual.forward_pooled_and_dense(images, mask=mask)
        if normalize:
            return F.normalize(pooled, dim=-1), F.normalize(dense, dim=-1)
        return pooled, dense

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B,L] int64 token ids (from this model's tokenizer) -> [B,D]."""
        if tokens.ndim != 2:
            raise ValueError(f"encode_text expects token ids of shape [B,L], got {tuple(tokens.shape)}")
        feats = self.text(tokens)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
        """[B,T,3,H,W] (+ mask [B,T,H,W]) -> per-frame features [B,T,D] (all frames in one tower pass)."""
        if frames.ndim != 5:
            raise ValueError(f"encode_frames expects frames of shape [B,T,3,H,W], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        if t == 0:
            raise ValueError("a clip has no frames (T=0); check the video decodes and the frame sampler returns indices")
        if mask is not None and mask.shape[:2] != frames.shape[:2]:
            raise ShapeError(f"subject masks {tuple(mask.shape)} do not match the frames {tuple(frames.shape)}: one "
                             "[H,W] mask per frame is needed")
        flat_mask = None if mask is None else mask.reshape(b * t, *mask.shape[2:])
        feats = self.visual(frames.reshape(b * t, *frames.shape[2:]), mask=flat_mask).reshape(b, t, -1)
        return F.normalize(feats, dim=-1) if normalize else feats

    def pool_frames(self, frame_feats: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T,D] frame features -> [B,D] clip feature through the temporal head (mean pooling if none)."""
        if self.temporal is not None:
            return self.temporal(frame_feats, padding_mask=padding_mask)
        return masked_mean(frame_feats, padding_mask)

    def encode_video(
        self,
        frames: torch.Tensor,
        mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """[B,T,3,H,W] -> [B,D]: frame encoder, then temporal head; padding_mask [B,T] marks absent frames."""
        feats = self.pool_frames(self.encode_frames(frames, mask=mask), padding_mask=padding_mask)
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Image (4-d) or video (5-d) batch + token batch -> normalised features and the current scale s."""
        image_features = (
            self.encode_video(images, mask=mask) if images.ndim == 5 else self.encode_image(images, mask=mask)
        )
        return {
            "image_features": image_features,
            "text_features": self.encode_text(tokens),
            "logit_scale": self.logit_scale.exp(),
        }

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, self.max_logit_scale)
