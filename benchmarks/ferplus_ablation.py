"""FER+ ablations of the default model's recipe, in a regime cheap enough for a 2-core CPU session.

Regime (say it wherever the numbers are quoted): the ImageNet CNN backbone is FROZEN and its pooled features are
computed once (48 px, no augmentation) for a seeded subset of FER+ train and for all of FER+ valid; only the image
projection, the text projection and the logit scale train (LiT-style), for a fixed number of steps, seed 0. The
MiniLM sentence embeddings of every distinct caption are cached too, except in the "MiniLM tuned" row, where MiniLM
trains end to end on the captions of each batch. Absolute numbers are far below a fine-tuned backbone's; the table
compares losses/towers under equal budgets. Metric: zero-shot WAR/UAR on FER+ valid (8 classes, majority labels),
prompt set `expclip5`; and the open-vocabulary gap of `ferplus_eval.py` (canonical-adjective UAR minus the mean UAR
of the three unseen-synonym sets).

Rows: plain InfoNCE (hard diagonal) | + soft targets (identical captions are shared positives) | + label positives
(same majority label = positive) | + sentiment guidance (EmotionCLIP reweighting with the vote distribution as q)
| MiniLM tuned | EfficientNet-Lite0 instead of MobileNetV2.

    python benchmarks/ferplus_ablation.py --manifest runs/ferplus/ferplus.jsonl --out benchmarks/results/ferplus_ablation.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ferplus_eval import HEADLINE, caption_words, dataset, ferplus_split, synonym_study  # noqa: E402

from affectclip.data.ferplus import FERPLUS_CLASSES  # noqa: E402

BACKBONES = {"mobilenetv2": "mobilenetv2-minilm", "efficientnet-lite0": "efficientnet-lite0-minilm"}
VARIANTS = (  # (row name, backbone, loss, MiniLM trainable, short budget)
    ("plain InfoNCE", "mobilenetv2", "infonce", False, False),
    ("+ soft targets (dedupe captions)", "mobilenetv2", "dedupe", False, False),
    ("+ label positives", "mobilenetv2", "labels", False, False),
    ("+ sentiment guidance (votes)", "mobilenetv2", "sentiment", False, False),
    ("sentiment, EfficientNet-Lite0", "efficientnet-lite0", "sentiment", False, False),
    # Tuning MiniLM costs a BERT forward/backward per step, so frozen vs tuned is compared on a short budget.
    ("sentiment, MiniLM frozen (short)", "mobilenetv2", "sentiment", False, True),
    ("sentiment, MiniLM tuned (short)", "mobilenetv2", "sentiment", True, True),
)
OVERRIDES = {"vision_cfg": {"image_size": 48}, "text_cfg": {"context_length": 32}}


@torch.no_grad()
def backbone_features(model, ds, batch_size: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Pooled (pre-projection) backbone features [N, F] and the sample dicts' non-pixel fields, in index order."""
    model.eval()
    feats, meta = [], []
    for start in range(0, len(ds), batch_size):
        samples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        bad = [s for s in samples if "error" in s]
        if bad:
            raise SystemExit(f"cannot read {bad[0].get('path')}: {bad[0]['error']}")
        x = torch.stack([s["image"] for s in samples])
        feats.append(model.visual.backbone.forward_features(x).mean(dim=(2, 3)))
        meta += [{"label": int(s["label"]), "caption": s["caption"], "soft": s["soft_label"]} for s in samples]
    return torch.cat(feats), meta


def train_variant(model, feats, meta, loss_name: str, tune_text: bool, steps: int, batch_size: int, lr: float,
                  seed: int, text_lr: float) -> dict[str, float]:
    """Train the projections (and MiniLM when tune_text, at its own `text_lr`: a pretrained BERT collapses at the
    projections' rate) on cached image features; seconds and final loss."""
    from affectclip.losses.contrastive import ClipLoss, identity_targets
    from affectclip.losses.sentiment import SentimentGuidedClipLoss
    from affectclip.models.factory import get_tokenizer
    from affectclip.train.tasks import text_key

    torch.manual_seed(seed)
    tok = get_tokenizer(model)
    text = model.text
    text.bert.requires_grad_(tune_text)
    text.trainable = tune_text
    text.train(True)
    groups = [{"params": [*model.visual.proj.parameters(), *text.proj.parameters(), model.logit_scale], "base_lr": lr}]
    if tune_text:
        groups.append({"params": list(text.bert.parameters()), "base_lr": text_lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.05)
    captions = [m["caption"] for m in meta]
    cache: dict[str, torch.Tensor] = {}
    if not tune_text:
        distinct = list(dict.fromkeys(captions))
        with torch.no_grad():
            for i in range(0, len(distinct), 256):
                emb = text.sentence_embedding(tok(distinct[i:i + 256]))
                cache.update(zip(distinct[i:i + 256], emb, strict=True))
    labels = torch.tensor([m["label"] for m in meta])
    soft = torch.stack([m["soft"] for m in meta])
    keys = torch.tensor([text_key(c) for c in captions])
    loss_fn = SentimentGuidedClipLoss(lam=10.0) if loss_name == "sentiment" else ClipLoss()
    g = torch.Generator().manual_seed(seed)
    t0, loss = time.time(), torch.tensor(0.0)
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = grp["base_lr"] * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps)).item())
        idx = torch.randperm(len(meta), generator=g)[:batch_size]
        img = model.visual.proj(feats[idx])
        batch_caps = [captions[i] for i in idx.tolist()]
        if tune_text:
            uniq = list(dict.fromkeys(batch_caps))
            emb = text.proj(text.sentence_embedding(tok(uniq)))
            txt = emb[[uniq.index(c) for c in batch_caps]]
        else:
            txt = text.proj(torch.stack([cache[c] for c in batch_caps]))
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        scale = model.logit_scale.exp()
        if loss_name == "sentiment":
            loss = loss_fn(img, txt, scale, sentiment_probs=soft[idx])
        else:
            targets = {"infonce": None, "dedupe": identity_targets(keys[idx], ignore_index=None),
                       "labels": identity_targets(labels[idx], ignore_index=-1)}[loss_name]
            loss = loss_fn(img, txt, scale, targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
    text.bert.requires_grad_(False)
    text.trainable = False
    return {"seconds": time.time() - t0, "final_loss": float(loss.detach())}


@torch.no_grad()
def zero_shot(model, valid_feats: torch.Tensor, valid_labels: list[int], seen: set[str]) -> dict[str, Any]:
    """Headline zero-shot WAR/UAR, and the open-vocabulary gap: canonical adjectives vs unseen synonyms (UAR)."""
    from affectclip.eval.features import FeatureSet
    from affectclip.eval.prompts import build_prompts
    from affectclip.eval.zeroshot import evaluate_zero_shot
    from affectclip.models.factory import get_tokenizer

    model.eval()
    f = F.normalize(model.visual.proj(valid_feats), dim=-1).numpy()
    fs = FeatureSet(features=f, labels=torch.tensor(valid_labels).numpy(), indices=torch.arange(len(f)).numpy())
    r = evaluate_zero_shot(model, get_tokenizer(model), None, FERPLUS_CLASSES,
                           build_prompts(FERPLUS_CLASSES, HEADLINE), features=fs)
    syn = synonym_study(model, get_tokenizer(model), fs, seen)
    return {**{k: r["metrics"][k] for k in ("war", "uar", "per_class_recall")},
            "canonical_uar": syn["canonical"]["uar"], "mean_synonym_uar": syn["mean_synonym_uar"],
            "synonym_gap": syn["canonical"]["uar"] - syn["mean_synonym_uar"]}


def main(argv: list[str] | None = None) -> int:
    from affectclip.data.transforms import create_transforms
    from affectclip.models.factory import create_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default="runs/ferplus/ferplus.jsonl")
    ap.add_argument("--train-subset", type=int, default=6000, help="seeded subset of FER+ train")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--short-steps", type=int, default=100, help="steps of the MiniLM frozen-vs-tuned rows")
    ap.add_argument("--short-batch-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--text-lr", type=float, default=2e-5, help="MiniLM's own learning rate in the tuned row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="row names to run (default all)")
    ap.add_argument("--cache-dir", default="runs/ferplus/ablation_cache", help="backbone feature cache ('' = none)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    train_m = ferplus_split(args.manifest, "train", args.train_subset, args.seed)
    valid_m = ferplus_split(args.manifest, "valid")
    seen = caption_words(args.manifest)
    cached: dict[str, Any] = {}
    rows = []
    for name, backbone, loss_name, tune, short in VARIANTS:
        if args.only and name not in args.only:
            continue
        torch.manual_seed(args.seed)  # the projections' initialisation
        model = create_model(BACKBONES[backbone], **OVERRIDES)
        cache_file = Path(args.cache_dir) / f"{backbone}_{args.train_subset}_{args.seed}.pt" if args.cache_dir else None
        if backbone not in cached and cache_file is not None and cache_file.is_file():
            cached[backbone] = torch.load(cache_file, weights_only=False)
        if backbone not in cached:
            tf = create_transforms(model, train=False)
            t0 = time.time()
            tr = backbone_features(model, dataset(train_m, tf), 256)
            va = backbone_features(model, dataset(valid_m, tf), 256)
            cached[backbone] = (tr, va)
            print(f"[{backbone}] features in {time.time() - t0:.0f} s", flush=True)
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                torch.save(cached[backbone], cache_file)
        (tr_f, tr_meta), (va_f, va_meta) = cached[backbone]
        steps, bs = (args.short_steps, args.short_batch_size) if short else (args.steps, args.batch_size)
        info = train_variant(model, tr_f, tr_meta, loss_name, tune, steps, bs, args.lr, args.seed, args.text_lr)
        res = zero_shot(model, va_f, [m["label"] for m in va_meta], seen)
        rows.append({"name": name, "backbone": backbone, "loss": loss_name, "minilm": "tuned" if tune else "frozen",
                     "steps": steps, "batch_size": bs, **info, **res})
        print(f"{name:36s} steps {steps:4d}  WAR {res['war']:6.2f}  UAR {res['uar']:6.2f}  synonym gap "
              f"{res['synonym_gap']:5.1f}  ({info['seconds']:.0f} s)", flush=True)
        del model
    out = {"regime": "frozen ImageNet backbone, cached 48 px features; projections (+MiniLM when tuned) trained",
           "train_subset": args.train_subset, "batch_size": args.batch_size, "lr": args.lr, "text_lr": args.text_lr,
           "seed": args.seed,
           "prompts": HEADLINE, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
