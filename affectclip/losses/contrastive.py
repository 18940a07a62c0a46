"""Symmetric InfoNCE (the CLIP loss) with soft targets and open_clip's distributed variants.

Semantics follow methods.md §1.3 and open_clip ``loss.py``:

* *global loss* (``local_loss=False``): every rank gathers all features and computes the full
  N_global × N_global logits; the loss is the same value on every rank.
* *local loss* (``local_loss=True``): each rank computes only its own rows (``local @ all.T``) with labels
  offset by ``rank * n_local``. With ``gather_with_grad`` it is numerically equivalent to the global loss.
* ``gather_with_grad=False``: the gathered copy carries no gradient except the re-inserted local shard.

Gradient bookkeeping (open_clip issue #616): with ``gather_with_grad`` the backward of the differentiable
all-gather *sums* the feature gradients over ranks, so each rank's parameter gradient is ``world_size`` times its
shard's share of dL/dθ; DistributedDataParallel's *averaging* then yields exactly the single-process gradient of
the full-batch loss, for both the global and the local loss. No manual rescaling is needed.

All reductions run in fp32 even under autocast: logits are formed from fp32 copies of the features.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Targets = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


def fp32(fn: Callable) -> Callable:
    """Run ``fn`` with autocast disabled, so the matmuls and reductions of a loss stay in fp32.

    Casting inputs with ``.float()`` is not enough: under autocast a matmul of fp32 tensors is still executed in
    bf16/fp16, which loses the precision the softmax over hundreds of logits needs.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def check_no_nan(**tensors: torch.Tensor | None) -> None:
    """Raise ``FloatingPointError`` naming the first tensor that contains NaN.

    A NaN feature silently poisons every row of a contrastive loss (it enters every softmax denominator), so it
    is cheaper to stop at the source than to debug a NaN loss later. Only host (CPU) tensors are checked: there the
    check is one small reduction, while on an accelerator reading its answer would stall the host on every loss
    call. A NaN there still makes the loss NaN, which the training loop stops on (at its logging intervals).
    """
    for name, tensor in tensors.items():
        if tensor is None or tensor.device.type != "cpu":
            continue
        if torch.is_floating_point(tensor) and bool(torch.isnan(tensor).any()):
            raise FloatingPointError(
                f"{name} contains NaN (shape {tuple(tensor.shape)}); check the encoder outputs / inputs "
                "(lower the learning rate, use bf16 instead of fp16, or inspect the offending batch)"
            )


def gather_features(
    image: torch.Tensor,
    text: torch.Tensor,
    *extra: torch.Tensor,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, ...]:
    """All-gather ``image``, ``text`` and any ``extra`` tensors along dim 0 across ranks.

    Returns the gathered tensors in the order given. With ``gather_with_grad`` the gather is differentiable
    (gradients flow back to the rank that produced each shard); otherwise ``dist.all_gather`` is used and this
    rank's own shard is re-inserted so that at least the local slice keeps its gradient. Ranks may hold different
    numbers of samples (a rank drops the unreadable samples of its batch): see ``gather_tensor``.
    """
    sizes = rank_sizes(len(image), image.device, world_size)
    return tuple(
        gather_tensor(t, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size, sizes=sizes)
        for t in (image, text, *extra)
    )


def rank_sizes(n: int, device: torch.device | str, world_size: int) -> list[int]:
    """Every rank's number of samples, in rank order (one small all-gather; ``[n]`` on one process)."""
    if world_size == 1:
        return [n]
    _require_process_group(world_size)
    mine = torch.tensor([n], dtype=torch.long, device=device)
    parts = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(parts, mine)
    return torch.cat(parts).tolist()


def _require_process_group(world_size: int) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"gathering features with world_size={world_size} needs an initialised torch.distributed process group"
        )


def gather_tensor(
    tensor: torch.Tensor,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
    sizes: list[int] | None = None,
) -> torch.Tensor:
    """All-gather one per-sample tensor along dim 0 (see ``gather_features``); identity when world_size == 1.

    Collectives need equal shapes, so a shorter shard is zero-padded to the longest and every shard is cut back to
    its rank's size after the gather; ``sizes`` (from ``rank_sizes``) saves the exchange when already known.
    """
    if world_size == 1:
        return tensor
    sizes = sizes if sizes is not None else rank_sizes(len(tensor), tensor.device, world_size)
    if sizes[rank] != len(tensor):
        raise ValueError(f"rank {rank} holds {len(tensor)} samples but sizes says {sizes[rank]}")
    padded = tensor
    if len(tensor) < max(sizes):
        padded = torch.cat([tensor, tensor.new_zeros((max(sizes) - len(tensor), *tensor.shape[1:]))])
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API (_functional_collectives): keep the
            warnings.simplefilter("ignore", FutureWarning)  # public one, without a warning in every user's run
            shards = list(all_gather(padded))
    else:
        shards = [torch.zeros_like(padded) for _ in range(world_size)]
        dist.all_gather(shards, padded.contiguous())
        shards[rank] = padded
    return torch.cat([shard[:n] for shard, n in zip(shards, sizes, strict=True)], dim=0)


@fp32
def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-(1/N) Σ_i Σ_j Y_ij log softmax_j(logits_i)`` in fp32; ``targets`` = row-stochastic Y.

    Entries with Y_ij = 0 contribute exactly 0 even where the logit is -inf (a masked or sentiment-removed
    column), instead of the 0·(-inf) = NaN a plain product would give.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape"
        )
    logp = F.log_softmax(logits.float(), dim=-1)
    targets = targets.float()
    return -torch.where(targets > 0, targets * logp, torch.zeros_like(logp)).sum(-1).mean()


def identity_targets(keys: Sequence | torch.Tensor, ignore_index: int | None = -1) -> torch.Tensor:
    """Row-stochastic [N, N] targets where samples with identical keys are shared positives.

    ``keys`` are captions (duplicate captions are never negatives — EmoCLIP's class-description training puts
    the same text on every sample of a class) or integer labels. Integer keys equal to ``ignore_index``
    (unknown label) only match themselves. Y_ij = 1[key_i = key_j] / #{j : key_j = key_i}.
    """
    if isinstance(keys, torch.Tensor):
        if keys.dim() != 1:
            raise ValueError(f"identity_targets: keys must be 1-D, got shape {tuple(keys.shape)}")
        codes = keys.long()
    else:
        index: dict = {}
        codes = torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)
        ignore_index = None
    same = codes[:, None] == codes[None, :]
    if ignore_index is not None:
        unknown = codes == ignore_index
        same &= ~(unknown[:, None] | unknown[None, :])
    same |= torch.eye(len(codes), dtype=torch.bool, device=codes.device)
    same = same.float()
    return same / same.sum(-1, keepdim=True)


def _split_targets(targets: Targets) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if targets is None or isinstance(targets, torch.Tensor):
        return targets, targets
    if len(targets) != 2:
        raise ValueError("targets must be a [N, N] tensor or a pair (Y_image_to_text, Y_text_to_image)")
    return targets[0], targets[1]


def directional_loss(logits: torch.Tensor, targets: torch.Tensor | None, row_offset: int) -> torch.Tensor:
    """CE of one direction: ``logits`` [n, N] are rows ``row_offset:row_offset+n`` of the global matrix.

    ``targets`` (global [N, N], row-stochastic) or None for the hard diagonal.
    """
    n, n_all = logits.shape
    if targets is None:
        labels = torch.arange(n, device=logits.device) + row_offset
        return F.cross_entropy(logits.float(), labels)
    if targets.shape != (n_all, n_all):
        raise ValueError(
            f"targets must cover the global batch: expected shape ({n_all}, {n_all}), got {tuple(targets.shape)}"
        )
    check_no_nan(targets=targets)
    return soft_cross_entropy(logits, targets[row_offset : row_offset + n].to(logits.device))


def symmetric_loss(
    logits_i2t: torch.Tensor, logits_t2i: torch.Tensor, targets: Targets = None, row_offset: int = 0
) -> torch.Tensor:
    """½ [CE(image→text) + CE(text→image)] with hard (None) or soft targets (one matrix or a pair)."""
    y_i2t, y_t2i = _split_targets(targets)
    return 0.5 * (
        directional_loss(logits_i2t, y_i2t, row_offset) + directional_loss(logits_t2i, y_t2i, row_offset)
    )


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the (optionally gathered) global batch; open_clip ``ClipLoss`` semantics."""

    def __init__(
        self, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} / world_size {world_size}")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size

    def rank_sizes(self, local: torch.Tensor) -> list[int]:
        """Every rank's sample count, given this rank's per-sample tensor: exchanged once per loss call and passed
        to ``gather`` and ``row_offset`` (ranks may differ: each drops its own unreadable samples)."""
        return rank_sizes(len(local), local.device, self.world_size)

    def gather(self, *tensors: torch.Tensor, sizes: list[int] | None = None) -> tuple[torch.Tensor, ...]:
        """Gather per-sample tensors (same length) from all ranks with this loss's settings (identity on one
        process)."""
        sizes = sizes if sizes is not None else self.rank_sizes(tensors[0])
        return tuple(
            gather_tensor(
                t, gather_with_grad=self.gather_with_grad, rank=self.rank, world_size=self.world_size, sizes=sizes
            )
            for t in tensors
        )

    def row_offset(self, sizes: list[int]) -> int:
        """Index of this rank's first row in the global batch when computing local rows, else 0."""
        return sum(sizes[: self.rank]) if self.local_loss and self.world_size > 1 else 0

    @fp32
    def logits(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        sizes: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 (image→text, text→image) logits: [n_local, N] with ``local_loss``, else [N, N]."""
        if image_features.shape != text_features.shape or image_features.dim() != 2:
            raise ValueError(
                f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
                "must both be [N, D]"
            )
        logit_scale = torch.as_tensor(logit_scale, device=image_features.device)
        check_no_nan(image_features=image_features, text_features=text_features, logit_scale=logit_scale)
        scale = logit_scale.float()
        image, text = image_features.float(), text_features.float()
        return self.pair_logits(lambda a, b: scale * a @ b.T, image, text, *self.gather(image, text, sizes=sizes))

    def pair_logits(
        self, sim: Callable, image: Any, text: Any, all_image: Any, all_text: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image→text, text→image) logits from a similarity ``sim(images, texts) -> [n_images, n_texts]``.

        With ``local_loss`` only this rank's rows are formed (``sim(local, all)``), else the full global matrix.
        ``image``/``text`` may be tuples when the similarity needs several tensors per sample.
        """
        if self.local_loss and self.world_size > 1:
            return sim(image, all_text), sim(all_image, text).T
        logits = sim(all_image, all_text)
        return logits, logits.T

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        targets: Targets = None,
        sizes: list[int] | None = None,
    ) -> torch.Tensor:
        """Scalar loss. ``logit_scale`` is already exponentiated; ``targets`` cover the global batch; ``sizes``
        (from ``rank_sizes``) when the caller already exchanged them this step."""
        sizes = sizes if sizes is not None else self.rank_sizes(image_features)
        logits_i2t, logits_t2i = self.logits(image_features, text_features, logit_scale, sizes)
        return symmetric_loss(logits_i2t, logits_t2i, targets, self.row_offset(sizes))
