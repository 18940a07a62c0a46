"""FER+ valid benchmark of an affectclip model: zero-shot by text prompt, open-vocabulary synonyms, linear probe.

Protocol (evaluation.md §2.4, §3, §4): FER+ `valid` split (FER2013 PublicTest), 8 classes in native order, official
majority labels (N = 3,191); images are the 48 px grey PNGs replicated to 3 channels by the model's own eval
transform. Zero-shot prompt sets are fixed protocol (eval/assets/templates.json); `expclip5` is the headline set,
chosen before any result was seen. The synonym test swaps every class name for a word that never occurs in the
training captions (checked against the manifest) — that is what "open vocabulary" can honestly mean for a model
whose captions only ever name the 8 classes. The probe fits on a seeded subset of FER+ train, C swept on a held-out
10 % of that subset (never on valid).

    python benchmarks/ferplus_eval.py --model affectclip/assets/default_model.safetensors \
        --manifest runs/ferplus/ferplus.jsonl --out benchmarks/results/ferplus_default.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from affectclip.data.datasets import ManifestDataset  # noqa: E402
from affectclip.data.ferplus import ADJECTIVES, EVAL_SYNONYMS, FERPLUS_CLASSES, TRAIN_ADJECTIVES  # noqa: E402
from affectclip.data.manifest import Manifest, read_manifest  # noqa: E402
from affectclip.eval.metrics import stratified_bootstrap, uar  # noqa: E402

PROMPT_SETS = ("expclip5", "expression", "classname", "face_expression", "expclip10", "clip_benchmark_fer")
HEADLINE = "expclip5"
SYNONYMS = EVAL_SYNONYMS  # unseen words per class (adjective forms), never in the training captions
# Adjective templates (CLIP_benchmark FER2013 set) so canonical adjectives and synonyms are compared like for like.
ADJ_TEMPLATES = ("a photo of a {c} looking face.", "a photo of a face showing the emotion: {c}.",
                 "a photo of a face looking {c}.", "a face that looks {c}.", "they look {c}.", "look at how {c} they are.")


def require_manifest(path: str | Path) -> None:
    """Stop with the command that builds a FER+ manifest when `path` is not one."""
    if not Path(path).is_file():
        raise SystemExit(f"{path} not found; build it with `affectclip data ferplus FERPLUS_DIR {path} --captions varied`")


def write_json(path: str | Path | None, record: dict[str, Any]) -> None:
    """A result record as indented JSON (nothing when no path is given)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=1))
        print(f"wrote {path}")


def ferplus_split(manifest_path: str | Path, split: str, limit: int | None = None, seed: int = 0) -> Manifest:
    """One split of a FER+ manifest (from `affectclip data ferplus`), optionally a seeded random subset."""
    # The FER+ manifest names images in the FER+ folder the user gave `data ferplus`, usually outside its own.
    manifest = read_manifest(manifest_path, check_files=False, allow_outside=True).split(split)
    if len(manifest) == 0:
        raise SystemExit(f"{manifest_path} has no '{split}' rows; build it with "
                         "`affectclip data ferplus FERPLUS_DIR OUT.jsonl --splits train,valid`")
    records = manifest.records
    if limit is not None and limit < len(records):
        records = random.Random(seed).sample(records, limit)
    return Manifest(records, manifest.root, manifest.source, allow_outside=manifest.allow_outside)


def dataset(manifest: Manifest, transform: Any) -> ManifestDataset:
    return ManifestDataset(manifest, transform, classes=list(FERPLUS_CLASSES))


def caption_words(manifest_path: str | Path) -> set[str]:
    """Every word of every caption in the manifest (all splits), for the unseen-synonym check."""
    words: set[str] = set()
    for rec in read_manifest(manifest_path, check_files=False).records:
        words |= set(re.findall(r"[a-z]+", str(rec.get("caption", "")).lower()))
    return words


def adjective_prompts(names: dict[str, str]) -> dict[str, list[str]]:
    return {cls: [t.format(c=word) for t in ADJ_TEMPLATES] for cls, word in names.items()}


def synonym_study(model, tokenizer, feats, seen: set[str]) -> dict[str, Any]:
    """Canonical adjectives vs synonym sets (all classes swapped at once), and per word (one class swapped)."""
    from affectclip.eval.zeroshot import evaluate_zero_shot

    leaked = sorted({w for ws in SYNONYMS.values() for word in ws for w in word.split()} & seen)
    if leaked:
        raise SystemExit(f"synonym words {leaked} occur in the training captions; they would not test generalisation")

    preds: list[np.ndarray] = []  # canonical, then the synonym sets: predictions in feats.labels order

    def run(names: dict[str, str], keep: bool = False) -> dict[str, Any]:
        r = evaluate_zero_shot(model, tokenizer, None, FERPLUS_CLASSES, adjective_prompts(names), features=feats)
        if keep:
            preds.append(np.asarray(r["predictions"]["pred"]))
        return r["metrics"]

    canonical = run(dict(ADJECTIVES), keep=True)
    sets = []
    for k in range(3):
        names = {c: SYNONYMS[c][k] for c in FERPLUS_CLASSES}
        m = run(names, keep=True)
        sets.append({"words": names, "war": m["war"], "uar": m["uar"], "per_class_recall": m["per_class_recall"]})
    y, n = feats.labels, len(FERPLUS_CLASSES)

    def gap(idx: np.ndarray) -> float:
        canon, *syn = (uar(y[idx], p[idx], n)[0] for p in preds)
        return canon - float(np.mean(syn))

    # paired over the same images: how far the gap itself moves when the valid faces are resampled
    gap_ci = stratified_bootstrap(y, gap, n_boot=2000, seed=0)
    words = []
    for c in FERPLUS_CLASSES:
        for w in SYNONYMS[c]:
            m = run({**ADJECTIVES, c: w})
            words.append({"class": c, "word": w, "recall": m["per_class_recall"][c],
                          "canonical_recall": canonical["per_class_recall"][c], "uar": m["uar"]})
    return {"templates": list(ADJ_TEMPLATES), "canonical": {"words": dict(ADJECTIVES), "war": canonical["war"],
            "uar": canonical["uar"], "per_class_recall": canonical["per_class_recall"]},
            "synonym_sets": sets, "mean_synonym_uar": float(np.mean([s["uar"] for s in sets])),
            "gap": gap_ci, "per_word": words}


def evaluate(model_path: str, manifest_path: str, probe_train: int, batch_size: int, seed: int) -> dict[str, Any]:
    import torch

    from affectclip.data.transforms import create_transforms
    from affectclip.eval.features import extract_features
    from affectclip.eval.probe import linear_probe
    from affectclip.eval.prompts import build_prompts
    from affectclip.eval.zeroshot import evaluate_zero_shot
    from affectclip.models.factory import create_model, get_tokenizer

    torch.manual_seed(seed)
    model = create_model(model_path).eval()
    tokenizer = get_tokenizer(model)
    tf = create_transforms(model, train=False)
    valid = extract_features(model, dataset(ferplus_split(manifest_path, "valid"), tf), batch_size)
    out: dict[str, Any] = {"model": model_path, "manifest": manifest_path, "split": "valid", "label_rule": "majority",
                           "classes": list(FERPLUS_CLASSES), "n_valid": int(valid.labels.size), "zero_shot": {}}
    for name in PROMPT_SETS:
        r = evaluate_zero_shot(model, tokenizer, None, FERPLUS_CLASSES, build_prompts(FERPLUS_CLASSES, name),
                               features=valid)
        out["zero_shot"][name] = {**r["metrics"], "prompts": r["prompts"], "prompts_truncated": r["prompts_truncated"]}
    out["headline_prompts"] = HEADLINE
    out["synonyms"] = synonym_study(model, tokenizer, valid, caption_words(manifest_path))
    out["text_neighbours"] = text_neighbours(model, tokenizer)
    if probe_train > 0:
        train = extract_features(model, dataset(ferplus_split(manifest_path, "train", probe_train, seed), tf), batch_size)
        probe = linear_probe(train.features, train.labels, valid.features, valid.labels, FERPLUS_CLASSES, seed=seed)
        out["linear_probe"] = {**probe["metrics"], "probe": probe["probe"], "n_train": int(train.labels.size)}
    return out


def text_neighbours(model, tokenizer) -> dict[str, Any]:
    """Which class's training words each held-out word is nearest to, in the text tower's raw sentence space
    (MiniLM's own output before our projection, with any layers tuned in training) and in the joint space: a word
    misplaced in the raw space is a limit of the text encoder, not of the projection. Nearest = highest cosine to
    any training adjective of a class, each inside "a photo of a {word} face"."""
    import torch
    import torch.nn.functional as F

    def embed(words: list[str], raw: bool) -> torch.Tensor:
        tokens = tokenizer([f"a photo of a {w} face" for w in words])
        with torch.no_grad():
            out = model.text.sentence_embedding(tokens) if raw else model.encode_text(tokens)
        return F.normalize(out.float(), dim=-1)

    train = [(c, w) for c in FERPLUS_CLASSES for w in TRAIN_ADJECTIVES[c]]
    held_out = [(c, w) for c in FERPLUS_CLASSES for w in SYNONYMS[c]]
    out: dict[str, Any] = {}
    for space in ("raw", "joint"):
        if space == "raw" and not hasattr(model.text, "sentence_embedding"):
            continue
        sims = embed([w for _, w in held_out], space == "raw") @ embed([w for _, w in train], space == "raw").T
        nearest = {}
        for i, (_, word) in enumerate(held_out):
            best = {c: max(float(sims[i, j]) for j, (tc, _) in enumerate(train) if tc == c) for c in FERPLUS_CLASSES}
            nearest[word] = max(best, key=best.get)
        out[space] = {"nearest_class": nearest, "misplaced": [w for c, w in held_out if nearest[w] != c]}
    return out


def table(res: dict[str, Any]) -> str:
    lines = [f"FER+ valid, 8 classes, majority labels, N = {res['n_valid']}  ({res['model']})",
             f"{'evaluation':42s} {'WAR':>6s} {'UAR':>6s}"]
    for name, m in res["zero_shot"].items():
        tag = " (headline)" if name == res["headline_prompts"] else ""
        lines.append(f"{'zero-shot ' + name + tag:42s} {m['war']:6.2f} {m['uar']:6.2f}")
    syn = res["synonyms"]
    lines.append(f"{'zero-shot canonical adjectives':42s} {syn['canonical']['war']:6.2f} {syn['canonical']['uar']:6.2f}")
    for s in syn["synonym_sets"]:
        lines.append(f"{'zero-shot synonyms ' + '/'.join(list(s['words'].values())[:3]) + '/...':42s} "
                     f"{s['war']:6.2f} {s['uar']:6.2f}")
    g = syn["gap"]
    lines.append(f"synonym gap (canonical UAR - mean synonym-set UAR): {g['estimate']:.2f}, "
                 f"{100 * g['level']:.0f} % bootstrap interval {g['low']:.2f} .. {g['high']:.2f}")
    if "linear_probe" in res:
        p = res["linear_probe"]
        lines.append(f"{'linear probe (C=' + format(p['probe']['C'], 'g') + ', n=' + str(p['n_train']) + ')':42s} "
                     f"{p['war']:6.2f} {p['uar']:6.2f}")
    lines.append("per word (class recall with this word vs canonical adjective):")
    for w in syn["per_word"]:
        lines.append(f"  {w['class']:10s} {w['word']:14s} {w['recall']:.2f} vs {w['canonical_recall']:.2f}")
    for space, r in res["text_neighbours"].items():
        wrong = ", ".join(f"{w} -> {r['nearest_class'][w]}" for w in r["misplaced"]) or "none"
        lines.append(f"held-out words nearest another class's training words ({space} text space): {wrong}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "affectclip/assets/default_model.safetensors"))
    ap.add_argument("--manifest", default="runs/ferplus/ferplus.jsonl",
                    help="FER+ manifest with train and valid rows (affectclip data ferplus ... --captions varied)")
    ap.add_argument("--probe-train", type=int, default=6000, help="train images for the linear probe (0 = skip)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON result file")
    args = ap.parse_args(argv)
    require_manifest(args.manifest)
    res = evaluate(args.model, args.manifest, args.probe_train, args.batch_size, args.seed)
    print(table(res))
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
