"""Losses of the three methods: CLIP InfoNCE (+ soft targets, distributed), EmotionCLIP sentiment reweighting,
EmoCapCLIP-proposal positive mining and global + local alignment. See ARCHITECTURE.md."""

from affectclip.losses.contrastive import (
    ClipLoss,
    check_no_nan,
    fp32,
    gather_features,
    gather_tensor,
    identity_targets,
    soft_cross_entropy,
    symmetric_loss,
)
from affectclip.losses.global_local import LOCAL_MODES, GlobalLocalLoss, attention_maps, local_similarity
from affectclip.losses.mining import GUIDES, EMAEncoder, PositiveMiner, ema_update
from affectclip.losses.sentiment import SentimentGuidedClipLoss, sentiment_weights

__all__ = [
    "ClipLoss",
    "EMAEncoder",
    "GUIDES",
    "GlobalLocalLoss",
    "LOCAL_MODES",
    "PositiveMiner",
    "SentimentGuidedClipLoss",
    "attention_maps",
    "check_no_nan",
    "fp32",
    "ema_update",
    "gather_features",
    "gather_tensor",
    "identity_targets",
    "local_similarity",
    "sentiment_weights",
    "soft_cross_entropy",
    "symmetric_loss",
]
