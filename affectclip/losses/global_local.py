"""EmoCapCLIP-proposal global + local contrastive loss (methods.md §4.6.3–4.6.4, PROPOSAL).

Global branch: soft-target InfoNCE between image embeddings v_i and global caption embeddings t_i.
Local branch: each local sentence l_jk (one facial region's behaviour) is aligned with image i through
c_ijk (``attn_pool``: a sentence-conditioned soft region; ``token_max``: FILIP-style max over patches;
``sentence_global``: the global image embedding), averaged over the caption's valid sentences into
sim_loc(i, j), then contrasted with its own learnable scale. Both branches share the (mined) targets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from affectclip.losses.contrastive import (
    ClipLoss,
    Targets,
    _split_targets,
    check_no_nan,
    fp32,
    soft_cross_entropy,
)

LOCAL_MODES = ("attn_pool", "token_max", "sentence_global", "off")


@fp32
def attention_maps(patches: torch.Tensor, sentences: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Attention a [N, K, P] of each image's own sentences over its patches: ``softmax_p(cos(P_ip, l_ik) / τ)``.

    Reshape the last axis to the tower's ``grid_size`` to see which face region a sentence describes.
    """
    if patches.dim() != 3 or sentences.dim() != 3 or len(patches) != len(sentences):
        raise ValueError(
            f"attention_maps needs patches [N, P, D] and sentences [N, K, D]; got {tuple(patches.shape)} "
            f"and {tuple(sentences.shape)}"
        )
    cos = torch.einsum(
        "npd,nkd->nkp", F.normalize(patches.float(), dim=-1), F.normalize(sentences.float(), dim=-1)
    )
    return torch.softmax(cos / tau, dim=-1)


@fp32
def local_similarity(
    patches: torch.Tensor | None,
    sentences: torch.Tensor,
    sentence_mask: torch.Tensor,
    mode: str = "attn_pool",
    tau: float = 0.1,
    image_global: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample-level local similarity sim [N, M] = mean over caption j's valid sentences k of c_ijk (fp32).

    ``patches`` [N, P, D], ``sentences`` [M, K, D], ``sentence_mask`` [M, K] (True/1 = real sentence). Captions
    without any valid sentence get 0 (callers mask them out). ``attn_pool`` never materialises the pooled regions
    r_ijk (N·M·K·D values): with unit vectors, cos(r, l) = Σ_p a_p cos(P_p, l) / sqrt(aᵀ G a), G = P Pᵀ per image.
    """
    if mode not in LOCAL_MODES[:-1]:
        raise ValueError(f"unknown local mode {mode!r}; choose one of {', '.join(LOCAL_MODES[:-1])}")
    if sentences.dim() != 3 or sentence_mask.shape != sentences.shape[:2]:
        raise ValueError(
            f"sentences must be [M, K, D] with sentence_mask [M, K]; got {tuple(sentences.shape)} and "
            f"{tuple(sentence_mask.shape)}"
        )
    text = F.normalize(sentences.float(), dim=-1)
    if mode == "sentence_global":
        if image_global is None or image_global.dim() != 2:
            raise ValueError("local mode 'sentence_global' needs image_global [N, D]")
        c = torch.einsum("nd,mkd->nmk", F.normalize(image_global.float(), dim=-1), text)
    else:
        if patches is None or patches.dim() != 3:
            raise ValueError(f"local mode {mode!r} needs patches [N, P, D]")
        image = F.normalize(patches.float(), dim=-1)
        cos = torch.einsum("npd,mkd->nmkp", image, text)
        if mode == "token_max":
            c = cos.amax(-1)
        else:
            attn = torch.softmax(cos / tau, dim=-1)
            gram = image @ image.transpose(1, 2)  # [N, P, P]
            norm_sq = (torch.einsum("nmkp,npq->nmkq", attn, gram) * attn).sum(-1)
            c = (attn * cos).sum(-1) / norm_sq.clamp_min(1e-12).sqrt()
    mask = sentence_mask.to(c.dtype)
    return (c * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def _masked_direction(
    logits: torch.Tensor, targets: torch.Tensor, row_valid: torch.Tensor, col_valid: torch.Tensor
) -> torch.Tensor:
    """Soft CE over valid rows and columns only, targets renormalised; 0 (graph-connected) without valid rows."""
    y = targets[:, col_valid]
    mass = y.sum(-1, keepdim=True)
    keep = row_valid & (mass[:, 0] > 0)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return soft_cross_entropy(logits[keep][:, col_valid], (y / mass.clamp_min(1e-12))[keep])


class GlobalLocalLoss(nn.Module):
    """``L = w_glob·L_glob + w_loc·L_loc + w_intra·L_intra`` with a learnable local scale (log space, clamped).

    Zero-local-sentence samples are removed from the local loss (their rows, and as image→text candidates); an
    all-empty batch gives a local loss of exactly 0 that stays connected to the graph. With ``local_loss`` each
    rank averages over its own valid rows, and
    ``L_intra`` is always a per-rank mean (DDP then averages the ranks).
    """

    def __init__(
        self,
        w_glob: float = 1.0,
        w_loc: float = 0.5,
        w_intra: float = 0.0,
        local_mode: str = "attn_pool",
        attn_tau: float = 0.1,
        local_scale_init: float = 10.0,
        max_scale: float = 100.0,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if local_mode not in LOCAL_MODES:
            raise ValueError(f"unknown local mode {local_mode!r}; choose one of {', '.join(LOCAL_MODES)}")
        if attn_tau <= 0 or local_scale_init <= 0 or max_scale <= 0:
            raise ValueError("attn_tau, local_scale_init and max_scale must be > 0")
        self.clip = ClipLoss(
            local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size
        )
        self.w_glob, self.w_loc, self.w_intra = w_glob, w_loc, w_intra
        self.local_mode = local_mode
        self.attn_tau = attn_tau
        self.max_log_scale = math.log(max_scale)
        self.local_logit_scale = nn.Parameter(torch.tensor(math.log(local_scale_init)))

    def local_scale(self) -> torch.Tensor:
        """s_l = exp(clamp(log s_l, ≤ ln max_scale))."""
        return self.local_logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(
        self,
        image_global: torch.Tensor,
        patches: torch.Tensor,
        text_global: torch.Tensor,
        local_sentences: torch.Tensor,
        local_mask: torch.Tensor,
        logit_scale: torch.Tensor | float,
        targets: Targets = None,
        sizes: list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns ``{"loss", "loss_glob", "loss_loc", "loss_intra"}``; ``targets`` = global (Y_i2t, Y_t2i) or None;
        ``sizes`` = every rank's sample count when the caller already exchanged them this step (else once here)."""
        n = len(image_global)
        if (
            patches.shape[0] != n
            or local_sentences.shape[0] != n
            or local_mask.shape != local_sentences.shape[:2]
        ):
            raise ValueError(
                f"batch mismatch: image_global {tuple(image_global.shape)}, patches {tuple(patches.shape)}, "
                f"local_sentences {tuple(local_sentences.shape)}, local_mask {tuple(local_mask.shape)}"
            )
        check_no_nan(patches=patches, local_sentences=local_sentences)
        sizes = sizes if sizes is not None else self.clip.rank_sizes(image_global)  # one exchange for both branches
        loss_glob = self.clip(image_global, text_global, logit_scale, targets, sizes=sizes)
        loss_loc = self._local(image_global, patches, local_sentences, local_mask.bool(), targets, sizes)
        loss_intra = self._intra(patches, local_sentences, local_mask.bool())
        loss = self.w_glob * loss_glob + self.w_loc * loss_loc + self.w_intra * loss_intra
        return {"loss": loss, "loss_glob": loss_glob, "loss_loc": loss_loc, "loss_intra": loss_intra}

    @fp32
    def _local(
        self,
        image_global: torch.Tensor,
        patches: torch.Tensor,
        sentences: torch.Tensor,
        mask: torch.Tensor,
        targets: Targets,
        sizes: list[int],
    ) -> torch.Tensor:
        if self.local_mode == "off" or self.w_loc == 0:
            return self.local_scale() * 0.0
        all_image, all_patches, all_sentences, all_mask = self.clip.gather(
            image_global.float(), patches.float(), sentences.float(), mask.float(), sizes=sizes
        )
        all_mask = all_mask.bool()
        scale = self.local_scale()

        def sim(image: tuple, text: tuple) -> torch.Tensor:
            return scale * local_similarity(
                image[1], text[0], text[1], self.local_mode, self.attn_tau, image[0]
            )

        logits_i2t, logits_t2i = self.clip.pair_logits(
            sim,
            (image_global, patches),
            (sentences, mask),
            (all_image, all_patches),
            (all_sentences, all_mask),
        )
        offset = self.clip.row_offset(sizes)
        n_all = len(all_mask)
        caption_valid = all_mask.any(-1)
        rows_valid = caption_valid[offset : offset + len(logits_i2t)]
        y_i2t, y_t2i = _split_targets(targets)
        eye = torch.eye(n_all, device=logits_i2t.device)
        for name, y in (("Y_i2t", y_i2t), ("Y_t2i", y_t2i)):
            if y is not None and y.shape != (n_all, n_all):
                raise ValueError(
                    f"{name} must cover the global batch [{n_all}, {n_all}], got {tuple(y.shape)}"
                )
        y_i2t = (eye if y_i2t is None else y_i2t.float())[offset : offset + len(logits_i2t)]
        y_t2i = (eye if y_t2i is None else y_t2i.float())[offset : offset + len(logits_t2i)]
        all_images = torch.ones(n_all, dtype=torch.bool, device=logits_i2t.device)
        return 0.5 * (
            _masked_direction(logits_i2t, y_i2t, rows_valid, caption_valid)
            + _masked_direction(logits_t2i, y_t2i, rows_valid, all_images)
        )

    @fp32
    def _intra(self, patches: torch.Tensor, sentences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """K-way CE: the region pooled for sentence k of sample i must match l_ik among i's own sentences."""
        if self.w_intra == 0:
            return self.local_scale() * 0.0
        image = F.normalize(patches.float(), dim=-1)
        text = F.normalize(sentences.float(), dim=-1)
        regions = F.normalize(attention_maps(image, text, self.attn_tau) @ image, dim=-1)  # [n, K, D]
        logits = self.local_scale() * regions @ text.transpose(1, 2)  # [n, K(region), K(sentence)]
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        rows = mask & (mask.sum(-1, keepdim=True) >= 2)
        if not bool(rows.any()):
            return self.local_scale() * 0.0
        labels = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        return F.cross_entropy(logits[rows], labels[rows])
