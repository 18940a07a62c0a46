"""Where the FER+ synonym gap comes from: stage 2 of the default model's recipe, heads only vs MiniLM's top layers.

The shipped model's zero-shot UAR drops when every class name is replaced by a held-out synonym
(benchmarks/ferplus_eval.py). This study asks what closes that gap on the text side. Every variant is a product run
of recipe `ferplus_text` (stage 2: the MobileNetV2 backbone frozen, both projections and the temperature trained
with the recipe's loss, balancing and batch) started from the same stage-1 model (`affectclip train ferplus`),
then scored by `ferplus_eval.py`'s evaluation. Variants (recipe overrides):

  heads only         MiniLM frozen (`text_cfg.trainable=false`): only the projections and the temperature move
  top layer 1e-4     MiniLM's last transformer layer unlocked at its own lr 1e-4 (`text_cfg.trainable_layers=1`)
  top 2 layers       the last two layers
  top 3 layers       the last three: the shipped recipe

`--seeds 0 1 2` repeats every variant with other seeds, the spread to read the rows against. The study scores on
FER+ valid, so whatever it picks is picked on valid (MODEL_CARD.md says so for the shipped layer count).

    python benchmarks/ferplus_head_refit.py --stage1 runs/ferplus/model.safetensors \
        --manifest runs/ferplus/ferplus.jsonl --out benchmarks/results/ferplus_head_refit.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ferplus_eval import HEADLINE, evaluate, require_manifest, write_json  # noqa: E402

from affectclip.cli import main as affectclip  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "heads only": ["model.overrides.text_cfg.trainable=false", "model.overrides.text_cfg.trainable_layers=null"],
    "top layer 1e-4": ["model.overrides.text_cfg.trainable_layers=1"],
    "top 2 layers": ["model.overrides.text_cfg.trainable_layers=2"],
    "top 3 layers": ["model.overrides.text_cfg.trainable_layers=3"],
}


def row(res: dict[str, Any]) -> dict[str, Any]:
    """The study's numbers from a `ferplus_eval.evaluate` record."""
    syn = res["synonyms"]
    sets = [s["uar"] for s in syn["synonym_sets"]]
    return {"expclip5": {k: res["zero_shot"][HEADLINE][k] for k in ("war", "uar")},
            "canonical": {k: syn["canonical"][k] for k in ("war", "uar")}, "synonym_set_uar": sets,
            "mean_synonym_uar": syn["mean_synonym_uar"], "gap": syn["gap"]["estimate"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage1", required=True, help="a `affectclip train ferplus` run's model.safetensors")
    ap.add_argument("--manifest", default="runs/ferplus/ferplus.jsonl")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--runs", default="runs/ferplus_head_refit", help="folder of the variants' training runs")
    ap.add_argument("overrides", nargs="*", help="further recipe overrides for every variant, e.g. run.epochs=1")
    ap.add_argument("--out", default=None, help="JSON result file")
    args = ap.parse_args(argv)
    require_manifest(args.manifest)
    if not Path(args.stage1).is_file():
        raise SystemExit(f"{args.stage1} not found; train stage 1 with `affectclip train ferplus --output RUN`")
    data = [f"data.train={args.manifest}:train", f"data.val={args.manifest}:valid", "run.progress=false"]
    rows = {"stage 1 (no stage 2)": row(evaluate(args.stage1, args.manifest, 0, 256, 0))}
    for name in args.variants:
        for seed in args.seeds:
            label = name if seed == 0 else f"{name}, seed {seed}"
            run_dir = Path(args.runs) / f"{name.replace(' ', '_')}_seed{seed}"
            code = affectclip(["train", "ferplus_text", "--output", str(run_dir), "--overwrite",
                               f"model.pretrained={args.stage1}", f"run.seed={seed}", *data, *VARIANTS[name],
                               *args.overrides])
            if code != 0:
                raise SystemExit(f"{label}: `affectclip train` failed (exit {code}); see {run_dir}")
            rows[label] = row(evaluate(str(run_dir / "model.safetensors"), args.manifest, 0, 256, seed))
            print(f"{label}: done", flush=True)
    lines = ["| variant | expclip5 WAR / UAR | canonical WAR / UAR | synonym-set UAR (3 sets) | mean | gap |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['expclip5']['war']:.1f} / {r['expclip5']['uar']:.1f} | "
                     f"{r['canonical']['war']:.1f} / {r['canonical']['uar']:.1f} | "
                     f"{' / '.join(format(u, '.1f') for u in r['synonym_set_uar'])} | "
                     f"{r['mean_synonym_uar']:.1f} | {r['gap']:.1f} |")
    print("\n".join(lines))
    write_json(args.out, {"stage1": args.stage1, "overrides": args.overrides, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
