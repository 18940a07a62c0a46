"""Ablation of the methods' loss components on the same data, model and seed.

Variants: plain InfoNCE -> + sentiment guidance (EmotionCLIP; uncapped as published, and with the offset capped) -> + cross-modal positive mining (EmoCapCLIP, global
branch only) -> + local branch (full EmoCapCLIP proposal). Default data is the synthetic face generator (captions
are label-derived: this compares mechanics, not emotion understanding); `--manifest FILE.jsonl` with `train`/`valid`
splits (e.g. the FER+ manifest from `affectclip data ferplus`) runs the same table on real data.

    python benchmarks/ablation_methods.py [--epochs 3] [--n-train 2048] [--out benchmarks/results/ablation_methods]

Prints a Markdown table and writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from affectclip.train.config import load_config
from affectclip.train.loop import train

MINING = ("loss.mining={guide: cross, encoder: ema, ema_momentum: 0.99, threshold_text: 0.9, threshold_image: 0.9, "
          "top_k: 2, weight: 0.5, warmup_frac: 0.2}")
VARIANTS = {
    "plain InfoNCE": ["loss.name=clip", "loss.dedupe_targets=false"],
    "+ sentiment guidance (uncapped, as published)": ["loss.name=sentiment", "loss.sentiment={lam: 10.0, scorer: vader}"],
    "+ sentiment guidance (offset capped at 5)": ["loss.name=sentiment",
                                                  "loss.sentiment={lam: 10.0, scorer: vader, max_penalty: 5.0}"],
    "+ positive mining (global only)": ["loss.name=global_local", "loss.global_local={local_mode: 'off'}", MINING],
    "+ local branch (EmoCapCLIP proposal)": ["loss.name=global_local", "loss.global_local={local_mode: attn_pool}", MINING],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-cnn-minilm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--n-val", type=int, default=512)
    ap.add_argument("--manifest", default=None, help="real data: a manifest with train/valid splits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/ablation_methods")
    args = ap.parse_args()

    if args.manifest:
        data = [f"data.train={args.manifest}:train", f"data.val={args.manifest}:valid", "data.caption_field=caption"]
    else:
        data = [f"data.synthetic={{n_train: {args.n_train}, n_val: {args.n_val}, image_size: 64, seed: {args.seed}}}",
                "data.caption_field=global"]
    common = [f"model.name={args.model}", f"run.epochs={args.epochs}", f"run.seed={args.seed}", "run.progress=false",
              "optim.lr=0.002", "optim.warmup_steps=10", *data]
    rows = []
    for name, overrides in VARIANTS.items():
        t0 = time.time()
        summary = train(load_config("demo", common + overrides), None)
        val = summary["validation"][-1]
        rows.append({"variant": name, "war": val["war"], "uar": val["uar"], "n": val["n_samples"],
                     "final_loss": summary["final"].get("loss"), "seconds": round(time.time() - t0, 1),
                     "overrides": overrides})
        print(f"{name}: WAR {val['war']:.2f} UAR {val['uar']:.2f} ({rows[-1]['seconds']} s)", flush=True)
    table = ["| variant | zero-shot WAR | zero-shot UAR | N | train s |", "|---|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['war']:.2f} | {r['uar']:.2f} | {r['n']} | {r['seconds']} |" for r in rows]
    data_desc = args.manifest or f"synthetic faces ({args.n_train} train / {args.n_val} held-out, seed {args.seed})"
    md = (f"Ablation on {data_desc}, model {args.model}, {args.epochs} epochs, same seed for every variant.\n\n"
          + "\n".join(table) + "\n")
    print("\n" + md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"data": data_desc, "model": args.model, "epochs": args.epochs,
                                                    "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
