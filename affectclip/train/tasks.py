"""Training tasks: how a method turns a batch into per-sample features and a loss.

A task is an nn.Module (it may own learnable loss parameters or an EMA encoder, which are checkpointed with it):
* `prepare(batch, device)`  -> model inputs (tokenisation, device moves); CPU-side work only;
* `features(model, inputs)` -> dict of per-sample tensors/lists along dim 0 (what feature caching concatenates);
* `loss(features, step, total_steps)` -> {"loss": scalar, other terms...};
* `after_step(model, step)` -> e.g. EMA update.

`loss.name` picks the task: ``clip`` (EmoCLIP and plain InfoNCE), ``sentiment`` (EmotionCLIP), ``global_local``
(EmoCapCLIP proposal, methods.md §4.6).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from affectclip.core.distributed import DistInfo
from affectclip.eval.features import has_subject_token
from affectclip.train.config import ConfigError, TrainConfig


def caption_text(caption: Any, field: str) -> str:
    """The text a single-caption task trains on: a plain caption, or one part of a structured caption."""
    if caption is None:
        raise ValueError("a training sample has no caption; every row needs a `caption` for contrastive training")
    if isinstance(caption, str):
        return caption
    if field == "caption":
        from affectclip.data.captions import flatten_caption

        return flatten_caption(caption)
    if field not in caption or not caption[field]:
        raise ValueError(f"structured caption lacks its '{field}' part ({caption!r:.120}); set data.caption_field "
                         "to a part every caption has, or 'caption' for the whole text")
    return caption[field]


def text_key(text: str) -> int:
    """A stable 63-bit id of a caption, so identical captions can be recognised across ranks."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


class CachedTokenizer:
    """A tokenizer that remembers each distinct text's token row.

    Training captions repeat every epoch (and often within a batch), and our tokenizers are pure Python (~50 us per
    caption): a millisecond of every step of a small model, spent on the CPU thread that also runs the step.
    Rows are identical to the wrapped tokenizer's. Bounded: past `max_entries` distinct texts the memo starts over
    (a caption set that large rarely repeats within an epoch anyway). Other attributes (`context_length`,
    `truncated`, which now counts distinct texts) come from the wrapped tokenizer."""

    def __init__(self, tokenizer: Any, max_entries: int = 200_000) -> None:
        self.tokenizer, self.max_entries = tokenizer, int(max_entries)
        self._rows: dict[str, torch.Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        if name in ("tokenizer", "_rows"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            return self.tokenizer(texts)  # its own empty result or its error naming the bad entry
        new = [t for t in dict.fromkeys(texts) if t not in self._rows]
        if new:
            if len(self._rows) + len(new) > self.max_entries:
                self._rows.clear()
            self._rows.update(zip(new, self.tokenizer(new), strict=True))
        return torch.stack([self._rows[t] for t in texts])


def loss_dist_args(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    """ClipLoss distribution settings; `loss.gather=false` contrasts within each process's batch only."""
    if not cfg.loss.gather:
        return {"local_loss": False, "gather_with_grad": False, "rank": 0, "world_size": 1}
    return {"local_loss": cfg.loss.local_loss, "gather_with_grad": cfg.loss.gather_with_grad,
            "rank": info.rank, "world_size": info.world_size}


class Task(nn.Module):
    """Shared batch preparation for image and video batches."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, tokenizer, info: DistInfo) -> None:
        super().__init__()
        from affectclip.train.data import build_batch_augment

        self.cfg, self.tokenizer, self.info = cfg, tokenizer, info
        self.use_mask = has_subject_token(model)
        self.batch_augment = build_batch_augment(cfg, model)  # None: samples arrive augmented from the DataLoader

    def prepare(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        inputs: dict[str, Any] = {"index": list(_as_list(batch["index"])), "ids": list(batch.get("id", batch["index"]))}
        if "padding_mask" in batch:
            inputs["padding_mask"] = batch["padding_mask"].to(device)
        if "frame_features" in batch:  # a frozen-tower feature cache (train/features.py checked the towers are frozen)
            inputs["frame_features"] = batch["frame_features"].to(device, non_blocking=True)
        else:
            self._prepare_pixels(batch, inputs, device)
        labels = batch.get("label")
        inputs["labels"] = (torch.as_tensor(labels, dtype=torch.long) if labels is not None
                            else torch.full((len(inputs["index"]),), -1, dtype=torch.long)).to(device)
        inputs["captions"] = list(batch["caption"])
        return inputs

    def _prepare_pixels(self, batch: dict[str, Any], inputs: dict[str, Any], device: torch.device) -> None:
        visual_key = "video" if "video" in batch else "image"
        if visual_key not in batch:
            raise ValueError("batch has neither 'image', 'video' nor 'frame_features'; check the dataset returns "
                             "sample dicts")
        inputs["visual"] = batch[visual_key].to(device, non_blocking=True)
        if self.use_mask:
            if "mask" not in batch:
                raise ValueError("this model has a subject token but the batch carries no subject `mask`; add masks "
                                 "to the data or set model.overrides.vision_cfg.subject_token=false")
            inputs["mask"] = batch["mask"].to(device)
        if self.batch_augment is not None:  # staged uint8 pixels: augment the whole batch here, on its device
            if self.use_mask:
                inputs["visual"], inputs["mask"] = self.batch_augment(inputs["visual"], inputs["mask"])
            else:
                inputs["visual"] = self.batch_augment(inputs["visual"])
        if self.cfg.run.channels_last and inputs["visual"].ndim == 4:
            inputs["visual"] = inputs["visual"].contiguous(memory_format=torch.channels_last)

    def encode_visual(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if "frame_features" in inputs:  # the rest of encode_video after its frozen frame encoder, same math
            return F.normalize(model.pool_frames(inputs["frame_features"], inputs.get("padding_mask")), dim=-1)
        x = inputs["visual"]
        if x.ndim == 5:
            return model.encode_video(x, mask=inputs.get("mask"), padding_mask=inputs.get("padding_mask"))
        return model.encode_image(x, mask=inputs.get("mask"))

    def after_step(self, model: nn.Module, step: int) -> None:
        """Hook for state that follows the model (EMA encoders)."""


class ContrastiveTask(Task):
    """Symmetric InfoNCE on (image|clip, caption) pairs; identical captions (or labels) are shared positives."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, tokenizer, info: DistInfo) -> None:
        super().__init__(cfg, model, tokenizer, info)
        from affectclip.losses.contrastive import ClipLoss

        self.loss_fn = ClipLoss(**loss_dist_args(cfg, info))

    def prepare(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        inputs = super().prepare(batch, device)
        texts = [caption_text(c, self.cfg.data.caption_field) for c in inputs["captions"]]
        if "text_features" in batch:  # cached by a frozen text tower (train/features.py)
            inputs["text_features"] = batch["text_features"].to(device)
        else:
            inputs["tokens"] = self.tokenizer(texts).to(device)
        inputs["keys"] = torch.tensor([text_key(t) for t in texts], dtype=torch.long, device=device)
        return inputs

    def features(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        # Captions built from labels/vote distributions repeat a lot within a batch: encode each distinct token row
        # once and scatter back (same features and gradients; a trainable text tower draws one dropout mask per
        # distinct caption instead of one per row).
        if "text_features" in inputs:
            text = inputs["text_features"]
        else:
            unique, inverse = torch.unique(inputs["tokens"], dim=0, return_inverse=True)
            text = model.encode_text(unique)[inverse]
        return {"image": self.encode_visual(model, inputs), "text": text,
                "scale": model.logit_scale.exp(), "keys": inputs["keys"], "labels": inputs["labels"]}

    def targets(self, f: dict[str, Any]) -> torch.Tensor | None:
        from affectclip.losses.contrastive import identity_targets

        lc = self.cfg.loss
        if lc.label_positives:
            (labels,) = self.loss_fn.gather(f["labels"])
            return identity_targets(labels, ignore_index=-1)
        if lc.dedupe_targets:
            (keys,) = self.loss_fn.gather(f["keys"])
            return identity_targets(keys, ignore_index=None)
        return None

    def loss(self, f: dict[str, Any], step: int, total_steps: int) -> dict[str, torch.Tensor]:
        return {"loss": self.loss_fn(f["image"], f["text"], f["scale"], targets=self.targets(f))}


class SentimentTask(ContrastiveTask):
    """EmotionCLIP: InfoNCE whose negatives are down-weighted by caption emotion similarity (methods.md §2.5).

    `loss.sentiment.scorer`: ``batch`` uses per-sample `sentiment` (or `soft_label`) vectors from the data
    (precomputed by `affectclip data sentiment` or label distributions); ``vader`` / ``hf_local`` score the captions
    on the fly (cached per distinct caption).
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, tokenizer, info: DistInfo) -> None:
        super().__init__(cfg, model, tokenizer, info)
        from affectclip.losses.sentiment import SentimentGuidedClipLoss

        s = dict(cfg.loss.sentiment)
        self.source = s.pop("scorer", "vader")
        scorer_args = s.pop("scorer_args", {})
        allowed = {"lam", "eps", "max_penalty", "faithful"}
        if set(s) - allowed:
            raise ConfigError(f"unknown key(s) {sorted(set(s) - allowed)} in loss.sentiment; allowed: "
                              f"{sorted(allowed | {'scorer', 'scorer_args'})}")
        self.loss_fn = SentimentGuidedClipLoss(**s, **loss_dist_args(cfg, info))
        self.scorer = None
        if self.source != "batch":
            from affectclip.data.sentiment import get_scorer

            self.scorer = get_scorer(self.source, **scorer_args)
        self._cache: dict[str, torch.Tensor] = {}

    def prepare(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        inputs = super().prepare(batch, device)
        if self.scorer is None:
            vec = batch.get("sentiment", batch.get("soft_label"))
            if vec is None:
                raise ValueError("loss.sentiment.scorer=batch but the batch has no `sentiment` or `soft_label`; run "
                                 "`affectclip data sentiment` on the manifest or choose scorer: vader")
            inputs["sentiment"] = torch.as_tensor(vec, dtype=torch.float32).to(device)
        else:
            texts = [caption_text(c, self.cfg.data.caption_field) for c in inputs["captions"]]
            new = [t for t in dict.fromkeys(texts) if t not in self._cache]
            if new:
                for t, row in zip(new, self.scorer(new), strict=True):
                    self._cache[t] = torch.as_tensor(row, dtype=torch.float32)
            inputs["sentiment"] = torch.stack([self._cache[t] for t in texts]).to(device)
        return inputs

    def features(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        return {**super().features(model, inputs), "sentiment": inputs["sentiment"]}

    def loss(self, f: dict[str, Any], step: int, total_steps: int) -> dict[str, torch.Tensor]:
        return {"loss": self.loss_fn(f["image"], f["text"], f["scale"], sentiment_probs=f["sentiment"],
                                     targets=self.targets(f))}


class GlobalLocalTask(Task):
    """EmoCapCLIP proposal: global caption <-> image, local sentences <-> attention-pooled patches, mined positives.

    Each caption sentence is encoded separately (global, summary, up to `sample_k` local sentences), so long
    structured captions are never cut at the text tower's context length (methods.md §4.6.2).
    """

    GLOBAL_TEXT = ("mean_gs", "global", "summary")

    def __init__(self, cfg: TrainConfig, model: nn.Module, tokenizer, info: DistInfo) -> None:
        super().__init__(cfg, model, tokenizer, info)
        from affectclip.losses.global_local import GlobalLocalLoss
        from affectclip.losses.mining import EMAEncoder, PositiveMiner

        gl = dict(cfg.loss.global_local)
        self.global_text = gl.pop("global_text", "mean_gs")
        self.sample_k = int(gl.pop("sample_k", 3))
        if self.global_text not in self.GLOBAL_TEXT:
            raise ConfigError(f"loss.global_local.global_text '{self.global_text}' is unknown; use one of "
                              f"{', '.join(self.GLOBAL_TEXT)}")
        self.loss_fn = GlobalLocalLoss(**gl, **loss_dist_args(cfg, info))
        mining = dict(cfg.loss.mining)
        encoder = mining.pop("encoder", "ema")
        momentum = mining.pop("ema_momentum", 0.999)
        self.miner = PositiveMiner(**mining)
        self.mining_encoder = encoder
        self.ema = None
        if self.miner.guide not in ("off", "labels") and encoder in ("ema", "frozen_init"):
            self.ema = EMAEncoder(model, momentum=momentum, frozen=encoder == "frozen_init")
        elif encoder not in ("ema", "frozen_init", "current"):
            raise ConfigError(f"loss.mining.encoder '{encoder}' is unknown; use ema, frozen_init or current")
        self.rng = random.Random(cfg.run.seed)

    def prepare(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        if "frame_features" in batch:
            raise ConfigError("the global_local task trains the image tower on images; a feature cache (data.train="
                              "features:DIR) only serves clip/sentiment training of a temporal head")
        inputs = super().prepare(batch, device)
        caps = inputs["captions"]
        bad = [i for i, c in enumerate(caps) if not isinstance(c, dict) or not c.get("global")]
        if bad:
            raise ValueError(f"the global_local task needs structured captions with a 'global' part; samples "
                             f"{[inputs['ids'][i] for i in bad[:5]]} lack it (use `affectclip.data.captions."
                             "parse_structured` or a manifest with caption objects)")
        glob_txt = [c["global"] for c in caps]
        summ_txt = [c.get("summary") or c["global"] for c in caps]
        k = self.sample_k
        local_txt, local_mask = [], torch.zeros(len(caps), max(k, 1), dtype=torch.bool)
        for i, c in enumerate(caps):
            sents = [s for s in c.get("local") or [] if s.strip()]
            chosen = self.rng.sample(sents, min(k, len(sents)))
            local_mask[i, : len(chosen)] = True
            local_txt += chosen + [""] * (max(k, 1) - len(chosen))
        inputs["tokens_global"] = self.tokenizer(glob_txt).to(device)
        inputs["tokens_summary"] = self.tokenizer(summ_txt).to(device)
        inputs["tokens_local"] = self.tokenizer(local_txt).to(device)
        inputs["local_mask"] = local_mask.to(device)
        return inputs

    def _text_global(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        g = model.encode_text(inputs["tokens_global"])
        if self.global_text == "global":
            return g
        m = model.encode_text(inputs["tokens_summary"])
        return m if self.global_text == "summary" else F.normalize(g + m, dim=-1)

    def features(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs["visual"].ndim != 4:
            raise ConfigError("the global_local task trains on images; set data.video_frames=0")
        n, k = inputs["local_mask"].shape
        image, patches = model.encode_image_and_dense(inputs["visual"], mask=inputs.get("mask"))
        out = {
            "image": image, "patches": patches,
            "text": self._text_global(model, inputs),
            "local": model.encode_text(inputs["tokens_local"]).reshape(n, k, -1),
            "local_mask": inputs["local_mask"], "scale": model.logit_scale.exp(), "labels": inputs["labels"],
        }
        if self.miner.guide not in ("off", "labels"):
            with torch.no_grad():
                ref = self.ema.module if self.ema is not None else model
                out["mine_image"] = ref.encode_image(inputs["visual"], mask=inputs.get("mask")).detach()
                out["mine_text"] = self._text_global(ref, inputs).detach()
        return out

    def loss(self, f: dict[str, Any], step: int, total_steps: int) -> dict[str, torch.Tensor]:
        targets = None
        if self.miner.active(step, total_steps):  # positives are mined over the global batch (all ranks)
            if self.miner.guide == "labels":
                (labels,) = self.loss_fn.clip.gather(f["labels"])
                eye = torch.eye(len(labels), device=labels.device)
                targets = self.miner.targets(eye, eye, step, total_steps, labels=labels)
            else:
                labels, mine_text, mine_image = self.loss_fn.clip.gather(f["labels"], f["mine_text"], f["mine_image"])
                text_sim = mine_text @ mine_text.T
                image_sim = mine_image @ mine_image.T
                targets = self.miner.targets(text_sim, image_sim, step, total_steps, labels=labels)
        out = self.loss_fn(f["image"], f["patches"], f["text"], f["local"], f["local_mask"], f["scale"],
                           targets=targets)
        for name, value in self.miner.last_diagnostics.items():
            out[f"mining_{name}"] = value
        return out

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.ema is not None:
            self.ema.update(model)


TASKS = {"clip": ContrastiveTask, "sentiment": SentimentTask, "global_local": GlobalLocalTask}


def build_task(cfg: TrainConfig, model: nn.Module, tokenizer, info: DistInfo) -> Task:
    if cfg.loss.name not in TASKS:
        raise ConfigError(f"loss.name '{cfg.loss.name}' is unknown; use one of {', '.join(TASKS)}")
    return TASKS[cfg.loss.name](cfg, model, tokenizer, info)


def _as_list(x: Any) -> list:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)
