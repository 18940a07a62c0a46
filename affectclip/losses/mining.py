"""EmoCapCLIP-proposal cross-modal guided positive mining (methods.md §4.6.5, PROPOSAL).

Closely related expressions ("happily surprised" vs "surprised") are false negatives under plain InfoNCE. The
miner turns confidently similar pairs into extra positives of a row-stochastic target matrix
``Y_ij = (1[i=j] + β·M_ij) / (1 + β·Σ_j M_ij)`` consumed by the soft-target InfoNCE of ``contrastive.py``.
Similarities come from a gradient-free encoder (``EMAEncoder``: EMA or frozen initial copy, or the current model).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from affectclip.losses.contrastive import check_no_nan

GUIDES = ("cross", "text", "image", "and", "labels", "off")


class PositiveMiner:
    """Builds mined soft targets (Y_image→text, Y_text→image) over the global batch.

    ``guide``: ``cross`` (default) guides each direction by similarity in its *target* modality — image→text row i
    gains caption j when the captions agree (text similarity), text→image row i gains image j when the images agree
    (image similarity) — so one encoder's mistake is not self-reinforced. ``text`` / ``image`` use one similarity
    for both directions, ``and`` requires both, ``labels`` makes every same-label sample a positive
    (supervised-contrastive ablation; thresholds and ``top_k`` do not apply), ``off`` returns identity targets.
    A candidate j ≠ i is mined when its similarity passes the threshold *and* it is among the row's ``top_k``.
    ``soft=True`` redistributes each row's mined mass in proportion to ``softmax(S_ij / soft_tau)`` over the
    mined candidates. No mining before ``warmup_frac`` of training.
    """

    def __init__(
        self,
        guide: str = "cross",
        threshold_text: float = 0.90,
        threshold_image: float = 0.92,
        top_k: int = 2,
        weight: float = 0.5,
        soft: bool = False,
        soft_tau: float = 0.01,
        warmup_frac: float = 0.05,
    ) -> None:
        if guide not in GUIDES:
            raise ValueError(f"unknown mining guide {guide!r}; choose one of {', '.join(GUIDES)}")
        if top_k < 0 or weight < 0 or soft_tau <= 0 or not 0 <= warmup_frac <= 1:
            raise ValueError(
                f"invalid mining settings: top_k={top_k} (>= 0), weight={weight} (>= 0), soft_tau={soft_tau} (> 0), "
                f"warmup_frac={warmup_frac} (in [0, 1])"
            )
        self.guide = guide
        self.threshold_text = threshold_text
        self.threshold_image = threshold_image
        self.top_k = top_k
        self.weight = weight
        self.soft = soft
        self.soft_tau = soft_tau
        self.warmup_frac = warmup_frac
        self.last_diagnostics: dict[str, torch.Tensor] = {}

    def active(self, step: int, total_steps: int) -> bool:
        """Whether mining is on at ``step`` (off during warm-up, with guide ``off`` or ``top_k=0``)."""
        if self.guide == "off" or (self.top_k == 0 and self.guide != "labels"):
            return False
        return step >= self.warmup_frac * total_steps

    def targets(
        self,
        text_sim: torch.Tensor,
        image_sim: torch.Tensor,
        step: int,
        total_steps: int,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-stochastic (Y_i2t, Y_t2i) [N, N] from text/image self-similarities [N, N] of the global batch.

        ``labels`` (int, -1 = unknown) are required by the ``labels`` guide and, when given, used for the mining
        precision diagnostic. Diagnostics (0-d tensors) are left in ``self.last_diagnostics``.
        """
        n = text_sim.shape[0]
        if text_sim.shape != (n, n) or image_sim.shape != (n, n):
            raise ValueError(
                f"text_sim {tuple(text_sim.shape)} and image_sim {tuple(image_sim.shape)} must both be [N, N]"
            )
        check_no_nan(text_sim=text_sim, image_sim=image_sim)
        if labels is not None and labels.shape != (n,):
            raise ValueError(f"labels must be [N] = [{n}], got {tuple(labels.shape)}")
        if self.guide == "labels" and labels is None:
            raise ValueError("mining guide 'labels' needs labels for every sample in the batch")
        text_sim, image_sim = text_sim.detach().float(), image_sim.detach().float()
        if not self.active(step, total_steps):
            mined_i2t = mined_t2i = torch.zeros(n, n, device=text_sim.device)
        elif self.guide == "labels":
            same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
            mined_i2t = mined_t2i = (same & ~_eye(n, text_sim.device)).float()
        else:
            pass_text = text_sim >= self.threshold_text
            pass_image = image_sim >= self.threshold_image
            both = pass_text & pass_image
            passes = {
                "cross": (pass_text, pass_image),
                "text": (pass_text, pass_text),
                "image": (pass_image, pass_image),
                "and": (both, both),
            }[self.guide]
            ranking = {"text": (text_sim, text_sim), "image": (image_sim, image_sim)}.get(
                self.guide, (text_sim, image_sim)
            )
            mined_i2t = self._select(ranking[0], passes[0])
            mined_t2i = self._select(ranking[1], passes[1])
        self.last_diagnostics = _diagnostics(mined_i2t, mined_t2i, labels)
        return self._to_targets(mined_i2t), self._to_targets(mined_t2i)

    def _select(self, sim: torch.Tensor, passed: torch.Tensor) -> torch.Tensor:
        """M: candidates j ≠ i passing the threshold and within the row's top_k; soft weights when ``soft``."""
        n = sim.shape[0]
        candidates = passed & ~_eye(n, sim.device)
        scores = sim.masked_fill(~candidates, float("-inf"))
        k = min(self.top_k, n - 1)
        top = torch.zeros_like(candidates)
        if k > 0:
            top.scatter_(1, scores.topk(k, dim=1).indices, True)
        selected = top & candidates
        if not self.soft:
            return selected.float()
        weights = torch.softmax((sim / self.soft_tau).masked_fill(~selected, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # rows with no mined candidate
        return weights * selected.sum(1, keepdim=True)

    def _to_targets(self, mined: torch.Tensor) -> torch.Tensor:
        y = _eye(len(mined), mined.device).float() + self.weight * mined
        return y / y.sum(1, keepdim=True)


def _eye(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(n, dtype=torch.bool, device=device)


def _diagnostics(
    mined_i2t: torch.Tensor, mined_t2i: torch.Tensor, labels: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Mean mined positives per row and, with labels, the share of mined pairs with equal known labels."""
    out = {
        "mined_per_row_i2t": (mined_i2t > 0).float().sum(1).mean(),
        "mined_per_row_t2i": (mined_t2i > 0).float().sum(1).mean(),
    }
    if labels is not None:
        same = ((labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)).float()
        mined = torch.cat([(mined_i2t > 0).float(), (mined_t2i > 0).float()])
        hits = (mined * torch.cat([same, same])).sum()
        count = mined.sum()
        out["mining_precision"] = torch.where(
            count > 0, hits / count.clamp_min(1), count.new_tensor(float("nan"))
        )
    return out


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """``target ← momentum·target + (1 − momentum)·source`` for parameters; buffers are copied.

    ``source`` may be wrapped in DistributedDataParallel (its ``.module`` is used).
    """
    if isinstance(source, nn.parallel.DistributedDataParallel):
        source = source.module
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    src_params = dict(source.named_parameters())
    for name, param in target.named_parameters():
        if name not in src_params:
            raise KeyError(f"EMA target parameter {name!r} has no counterpart in the source model")
        param.lerp_(src_params[name].detach().to(param.dtype), 1.0 - momentum)
    src_buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        if name in src_buffers:
            buffer.copy_(src_buffers[name])


class EMAEncoder(nn.Module):
    """A gradient-free copy of an encoder for mining similarities (``mining.encoder = ema | frozen_init``).

    ``frozen=True`` keeps the initial weights forever (``frozen_init``); otherwise ``update(model)`` applies an EMA
    step. It is an ``nn.Module`` so that it is saved and restored with the training state.
    """

    def __init__(self, source: nn.Module, momentum: float = 0.999, frozen: bool = False) -> None:
        super().__init__()
        if isinstance(source, nn.parallel.DistributedDataParallel):
            source = source.module
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self.momentum = momentum
        self.frozen = frozen

    def update(self, source: nn.Module) -> None:
        """One EMA step towards ``source`` (no-op for a frozen copy)."""
        if not self.frozen:
            ema_update(self.module, source, self.momentum)

    def train(self, mode: bool = True) -> EMAEncoder:
        """The copy always stays in eval mode (no dropout noise in mining similarities)."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
