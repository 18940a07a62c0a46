"""EmotionCLIP's sentiment-guided contrastive loss (methods.md §2.5, ``loss_v2.py::ReweightedClipLoss``).

A negative j whose caption carries nearly the same emotion distribution as the anchor's caption i is probably a
false negative. EmotionCLIP subtracts ``λ / KL(q_j ‖ q_i)`` from its logit, which pushes it out of the softmax
denominator instead of repelling it. The sentiment distributions q come from a pluggable scorer
(``affectclip.data.sentiment``).
"""

from __future__ import annotations

import torch

from affectclip.losses.contrastive import ClipLoss, Targets, check_no_nan, fp32, symmetric_loss


@fp32
def sentiment_weights(
    sentiment_probs: torch.Tensor,
    eps: float = 1e-6,
    max_penalty: float | None = None,
    faithful: bool = False,
) -> torch.Tensor:
    """Pairwise weights w [N, N] (fp32): ``w_ij = 1 / max(|D_ij|, eps)``, ``D_ij = KL(q_j ‖ q_i)``, ``w_ii = 0``.

    Row i is the anchor, column j the negative (KL is asymmetric, so w is not symmetric). ``max_penalty`` caps w.
    ``faithful=True`` keeps the released unguarded ``1 / |D|``: identical distributions give ``inf`` (a -inf logit,
    harmless in fp32 CE because the diagonal is never penalised, risky in fp16). Zero probabilities are clamped
    to the smallest normal float before the log so that a 0 entry means "very unlikely", never NaN.
    """
    if sentiment_probs.dim() != 2:
        raise ValueError(f"sentiment_probs must be [N, C], got shape {tuple(sentiment_probs.shape)}")
    check_no_nan(sentiment_probs=sentiment_probs)
    q = sentiment_probs.float()
    if bool((q < 0).any()):
        raise ValueError("sentiment_probs must be probabilities (non-negative rows); got negative entries")
    log_q = q.clamp_min(torch.finfo(torch.float32).tiny).log()
    neg_entropy = (q * log_q).sum(-1)  # Σ_k q_jk log q_jk, indexed by j
    divergence = neg_entropy[None, :] - log_q @ q.T  # D_ij = Σ_k q_jk (log q_jk − log q_ik)
    magnitude = divergence.abs()
    weights = 1.0 / (magnitude if faithful else magnitude.clamp_min(eps))
    if max_penalty is not None:
        weights = weights.clamp_max(max_penalty)
    return weights.fill_diagonal_(0.0)


class SentimentGuidedClipLoss(ClipLoss):
    """InfoNCE with ``λ·w_ij`` subtracted from both directions' logits (same w, not transposed — as released).

    ``max_penalty`` caps the logit offset ``λ·w`` (in logits). ``lam=0`` is plain ``ClipLoss``. Sentiment vectors
    are gathered like the features, so logits and w cover the global batch.
    """

    def __init__(
        self,
        lam: float = 10.0,
        eps: float = 1e-6,
        max_penalty: float | None = None,
        faithful: bool = False,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size
        )
        if lam < 0:
            raise ValueError(f"lam (loss_reweight_scale) must be >= 0, got {lam}")
        self.lam = lam
        self.eps = eps
        self.max_penalty = max_penalty
        self.faithful = faithful

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        sentiment_probs: torch.Tensor | None = None,
        targets: Targets = None,
    ) -> torch.Tensor:
        """Scalar loss; ``sentiment_probs`` [n_local, C] are this rank's caption emotion distributions."""
        sizes = self.rank_sizes(image_features)
        logits_i2t, logits_t2i = self.logits(image_features, text_features, logit_scale, sizes)
        offset = self.row_offset(sizes)
        if self.lam > 0:
            if sentiment_probs is None or len(sentiment_probs) != len(image_features):
                raise ValueError(
                    "SentimentGuidedClipLoss needs sentiment_probs [N, C] with one row per sample "
                    f"(got {None if sentiment_probs is None else tuple(sentiment_probs.shape)} for "
                    f"{len(image_features)} samples); set lam=0 for the plain CLIP loss"
                )
            (all_q,) = self.gather(sentiment_probs.float().detach(), sizes=sizes)
            cap = None if self.max_penalty is None else self.max_penalty / self.lam
            weights = sentiment_weights(all_q, self.eps, cap, self.faithful)
            penalty = self.lam * weights[offset : offset + len(logits_i2t)]
            logits_i2t = logits_i2t - penalty
            logits_t2i = logits_t2i - penalty
        return symmetric_loss(logits_i2t, logits_t2i, targets, offset)
