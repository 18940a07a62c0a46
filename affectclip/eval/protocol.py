"""The zero-shot evaluation protocol: the one object that in-training validation and `affectclip eval run` share,
so the same model and data give the same numbers both ways.

Every option that changes the numbers lives here (prompt set, prompt aggregation, subject-mask policy, video
pooling); `describe()` is what result records store and name their files by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from affectclip.eval.features import MASK_POLICIES, FeatureSet, has_subject_token
from affectclip.eval.prompts import build_prompts
from affectclip.eval.zeroshot import evaluate_zero_shot

AGGREGATIONS = ("embedding", "logit")
VIDEO_POOLS = ("mean_embed", "mean_logits")


def resolve_mask_policy(model: torch.nn.Module, requested: str | None) -> str:
    """`requested`, or the model's default when None: a subject-token model (EmotionCLIP) sees the whole frame as
    its subject (`full`), any other model takes no mask (`none`)."""
    subject = has_subject_token(model)
    policy = requested or ("full" if subject else "none")
    if policy not in MASK_POLICIES:
        raise ValueError(f"mask policy must be one of {MASK_POLICIES}, got '{policy}'")
    if policy != "none" and not subject:
        raise ValueError(f"mask policy '{policy}' needs a model with a subject token (vision_cfg.subject_token); "
                         "this model has none: use mask policy none")
    return policy


@dataclass(frozen=True)
class ZeroShotProtocol:
    """How a labelled split is classified zero-shot. `mask_policy=None` means the model's default (see
    `resolve_mask_policy`)."""

    prompts: str = "expression"
    agg: str = "embedding"
    mask_policy: str | None = None
    video_pool: str = "mean_embed"

    def __post_init__(self) -> None:
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"prompt aggregation must be one of {AGGREGATIONS}, got '{self.agg}'")
        if self.video_pool not in VIDEO_POOLS:
            raise ValueError(f"video pooling must be one of {VIDEO_POOLS}, got '{self.video_pool}'")
        if self.mask_policy is not None and self.mask_policy not in MASK_POLICIES:
            raise ValueError(f"mask policy must be one of {MASK_POLICIES}, got '{self.mask_policy}'")

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        """The protocol with the mask policy resolved for `model`: what a result record stores."""
        return {**asdict(self), "mask_policy": resolve_mask_policy(model, self.mask_policy)}

    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        classes: Sequence[str],
        dataset: torch.utils.data.Dataset | None = None,
        features: FeatureSet | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        compounds: dict[str, Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """WAR/UAR/per-class recall/confusion of `dataset` (or precomputed `features`, which must have been
        extracted with this protocol's mask policy and pooling) in the class order `classes`."""
        wanted = sorted({c for comps in compounds.values() for c in comps}) if compounds else list(classes)
        was_training = model.training
        try:
            result = evaluate_zero_shot(model, tokenizer, dataset, classes, build_prompts(wanted, self.prompts),
                                        agg=self.agg, batch_size=batch_size, device=device,
                                        video_pool=self.video_pool, compounds=compounds, features=features,
                                        mask_policy=resolve_mask_policy(model, self.mask_policy))
        finally:
            model.train(was_training)
        return {**result, "protocol": self.describe(model)}
