"""FER+ ablations of the default model's recipe, in a regime cheap enough for a 2-core CPU session.

Every row is a product training run: `affectclip train ferplus` with the regime's overrides and the row's own, then
`ferplus_eval.py`'s evaluation of the run's final `model.safetensors`. Nothing here trains or scores by itself.

Regime (say it wherever the numbers are quoted): recipe `ferplus` with the ImageNet CNN backbone FROZEN
(`vision_cfg.freeze_backbone`), 48 px input, no augmentation, a seeded subset of FER+ train, `run.max_steps` steps,
lr 1e-3 without warm-up, no validation during training; only the image projection, the text projection and the
logit scale train (MiniLM is frozen, its sentence vectors cached by the product), except in the "MiniLM tuned" row.
Absolute numbers are far below the shipped model's; the table compares losses/towers under equal budgets. Metric:
zero-shot WAR/UAR on FER+ valid (8 classes, majority labels), prompt set `expclip5`; and the open-vocabulary gap of
`ferplus_eval.py` (canonical-adjective UAR minus the mean UAR of the three unseen-synonym sets).

Rows: plain InfoNCE (hard diagonal) | + soft targets (identical captions are shared positives) | + label positives
(same majority label = positive) | + sentiment guidance (EmotionCLIP reweighting with the vote distribution as q,
the recipe's loss) | EfficientNet-Lite0 instead of MobileNetV2 | MiniLM frozen vs tuned on a short budget.

    python benchmarks/ferplus_ablation.py --manifest runs/ferplus/ferplus.jsonl --out benchmarks/results/ferplus_ablation.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ferplus_eval import HEADLINE, evaluate, ferplus_split, require_manifest, write_json  # noqa: E402

from affectclip.cli import main as affectclip  # noqa: E402
from affectclip.data.manifest import write_manifest  # noqa: E402

CLIP = ["loss.name=clip", "loss.dedupe_targets=false"]
SHORT = ("short",)  # rows on the short budget: tuning MiniLM costs a BERT forward/backward per step
VARIANTS: dict[str, tuple[list[str], tuple[str, ...]]] = {  # row -> (recipe overrides, budget)
    "plain InfoNCE": (CLIP, ()),
    "+ soft targets (dedupe captions)": (["loss.name=clip", "loss.dedupe_targets=true"], ()),
    "+ label positives": ([*CLIP, "loss.label_positives=true"], ()),
    "+ sentiment guidance (votes)": ([], ()),
    "sentiment, EfficientNet-Lite0": (["model.name=efficientnet-lite0-minilm"], ()),
    "sentiment, MiniLM frozen (short)": ([], SHORT),
    "sentiment, MiniLM tuned (short)": (["model.overrides.text_cfg.trainable=true"], SHORT),
}


def _decimal(x: float) -> str:
    """A rate as an override value YAML reads as a number (it reads `2e-05` as a string)."""
    return f"{x:.12f}".rstrip("0").rstrip(".")


def regime(train: Path, steps: int, batch_size: int, lr: float, text_lr: float, seed: int) -> list[str]:
    return [f"data.train={train}:train", "data.val=null", "run.best_metric=null", "data.augment={}",
            "model.overrides.vision_cfg.image_size=48", "model.overrides.vision_cfg.freeze_backbone=true",
            f"run.max_steps={steps}", "run.epochs=1000", f"data.batch_size={batch_size}", f"optim.lr={_decimal(lr)}",
            f"optim.lr_text={_decimal(text_lr)}", "optim.warmup_steps=0", f"run.seed={seed}", "run.progress=false"]


def subset_manifest(manifest: str, n: int, seed: int, out: Path) -> Path:
    """The seeded FER+ train subset every row trains on, as a manifest of absolute paths."""
    rows = ferplus_split(manifest, "train", n, seed)
    records = [{**r, "path": str(rows.resolve(r["path"]))} for r in rows.records]
    return write_manifest(records, out)


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--only", nargs="*", default=None, choices=list(VARIANTS), help="rows to run (default all)")
    ap.add_argument("--runs", default="runs/ferplus_ablation", help="folder of the rows' training runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    require_manifest(args.manifest)
    runs = Path(args.runs)
    train = subset_manifest(args.manifest, args.train_subset, args.seed, runs / "train_subset.jsonl")
    rows = []
    for i, (name, (overrides, budget)) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        steps, bs = (args.short_steps, args.short_batch_size) if budget == SHORT else (args.steps, args.batch_size)
        run_dir = runs / f"row{i}"
        t0 = time.time()
        code = affectclip(["train", "ferplus", "--output", str(run_dir), "--overwrite",
                           *regime(train, steps, bs, args.lr, args.text_lr, args.seed), *overrides])
        if code != 0:
            raise SystemExit(f"{name}: `affectclip train` failed (exit {code}); see {run_dir}")
        seconds = time.time() - t0
        res = evaluate(str(run_dir / "model.safetensors"), args.manifest, 0, 256, args.seed)
        head, syn = res["zero_shot"][HEADLINE], res["synonyms"]
        gap = syn["canonical"]["uar"] - syn["mean_synonym_uar"]
        rows.append({"name": name, "overrides": overrides, "steps": steps, "batch_size": bs, "seconds": seconds,
                     "war": head["war"], "uar": head["uar"], "per_class_recall": head["per_class_recall"],
                     "canonical_uar": syn["canonical"]["uar"], "mean_synonym_uar": syn["mean_synonym_uar"],
                     "synonym_gap": gap})
        print(f"{name:36s} steps {steps:4d}  WAR {head['war']:6.2f}  UAR {head['uar']:6.2f}  synonym gap "
              f"{gap:5.1f}  ({seconds:.0f} s training)", flush=True)
    out = {"regime": "recipe ferplus, frozen ImageNet backbone at 48 px, no augmentation; projections (+MiniLM when "
                     "tuned) trained by `affectclip train`", "regime_overrides": regime(
                         Path("SUBSET"), args.steps, args.batch_size, args.lr, args.text_lr, args.seed),
           "train_subset": args.train_subset, "seed": args.seed, "prompts": HEADLINE, "rows": rows}
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
