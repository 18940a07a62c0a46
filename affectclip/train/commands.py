"""`affectclip train`, `affectclip features`, `affectclip average`, `affectclip recipes`, `affectclip demo` and
`affectclip plot`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a recipe (name or YAML) with key=value overrides",
                       description="Train any recipe on any manifest/shards; multi-GPU via `torchrun ... -m "
                                   "affectclip.cli train ...`.")
    p.add_argument("config", help="recipe name (see `affectclip recipes`) or a YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. run.epochs=3 data.train=my.jsonl:train")
    p.add_argument("--output", "-o", required=True, help="run folder (checkpoints, logs, summary)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its latest checkpoint; with a larger run.epochs, extend it "
                        "(the learning-rate schedule is recomputed for the new length)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    p.set_defaults(func=_train)

    f = sub.add_parser("features", help="cache frozen-tower frame and caption features for temporal-head training",
                       description="Encode data.train (and data.val) of a frozen-tower recipe (EmoCLIP's default) once; "
                                   "then train the temporal head with data.train=features:OUT_DIR "
                                   "data.val=features:OUT_DIR. One frame-sampler/augmentation draw per clip is frozen "
                                   "in the cache.")
    f.add_argument("config", help="recipe name or YAML file (both towers must be frozen)")
    f.add_argument("out_dir", help="cache folder (index.json + train/val .safetensors)")
    f.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.train=clips.jsonl:train")
    f.add_argument("--overwrite", action="store_true", help="replace a cache already in OUT_DIR")
    f.set_defaults(func=_features)

    a = sub.add_parser("average", help="average the weights of several checkpoints of one model (a model soup)",
                       description="Average runs fine-tuned from the same weights (different seeds), or the last "
                                   "checkpoints of one run (RUN/checkpoints/step_*/model.safetensors). Unrelated runs "
                                   "average to a broken model: evaluate the result.")
    a.add_argument("checkpoints", nargs="+", help="two or more .safetensors checkpoints of the same model config")
    a.add_argument("--output", "-o", required=True, help="the averaged .safetensors file")
    a.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per checkpoint (normalised to sum 1; default: uniform)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    a.set_defaults(func=_average)

    r = sub.add_parser("recipes", help="list the shipped training recipes")
    r.set_defaults(func=_recipes)

    d = sub.add_parser("demo", help="train and evaluate a tiny model on synthetic faces (about 2 minutes on CPU)")
    d.add_argument("--output", "-o", default="runs/demo", help="run folder (default: runs/demo)")
    d.add_argument("overrides", nargs="*", help="recipe overrides, e.g. run.epochs=1")
    d.set_defaults(func=_demo)

    pl = sub.add_parser("plot", help="draw loss and validation curves of a run folder to PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    pl.set_defaults(func=_plot)


def _load(config: str, overrides: list[str]):
    from affectclip.core.errors import UserError
    from affectclip.train.config import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def _run(cfg, output: str, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    from affectclip.core.errors import UserError
    from affectclip.train.config import ConfigError
    from affectclip.train.loop import train

    try:
        return train(cfg, output, resume=resume, overwrite=overwrite)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def _train(args: argparse.Namespace) -> int:
    from affectclip.core.distributed import is_main_process

    cfg = _load(args.config, args.overrides)
    summary = _run(cfg, args.output, args.resume, args.overwrite)
    if not is_main_process():  # torchrun: rank 0 reports for the run
        return 0
    start = summary["start_step"]
    resumed = f" (resumed at step {start}, trained to {summary['steps']})" if start else ""
    print(f"trained {summary['steps'] - start} steps{resumed} in {summary['seconds']:.1f} s "
          f"({summary['samples_per_s']:.0f} samples/s); run folder: {args.output}")
    if summary["validation"]:
        last = summary["validation"][-1]
        print(f"validation (zero-shot): WAR {last['war']:.2f}  UAR {last['uar']:.2f}  N {last['n_samples']}")
    if summary["bad_samples"]:
        print(f"{summary['bad_samples']} samples could not be read ({summary['bad_reads']} failed reads over the run) "
              f"and were skipped; see {args.output}/run_summary.json")
    return 0


def _features(args: argparse.Namespace) -> int:
    from affectclip.core.distributed import is_main_process
    from affectclip.core.errors import UserError
    from affectclip.train.config import ConfigError
    from affectclip.train.features import build_feature_cache

    cfg = _load(args.config, args.overrides)
    try:
        index = build_feature_cache(cfg, args.out_dir, overwrite=args.overwrite)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    if not is_main_process():  # torchrun: rank 0 wrote the cache and reports it
        return 0
    for role, split in index["splits"].items():
        print(f"{role}: cached {split['n']} samples, {len(split['errors'])} failed ({split['seconds']:.1f} s)")
        for err in split["errors"][:10]:
            print(f"  failed: index {err['index']} {err['path']}: {err['error']}")
        if len(split["errors"]) > 10:
            print(f"  ... {len(split['errors']) - 10} more in {args.out_dir}/index.json")
    if cfg.data.augment or (cfg.data.video_sampler or {}).get("name") in ("window", "random_subset"):
        print("note: the training split holds ONE augmentation / frame-window draw per clip, reused every epoch")
    print(f"train from it: affectclip train {args.config} ... data.train=features:{args.out_dir}"
          + (f" data.val=features:{args.out_dir}" if "val" in index["splits"] else ""))
    return 0


def _average(args: argparse.Namespace) -> int:
    from affectclip.core.errors import UserError
    from affectclip.models.checkpoint import average_checkpoints

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --output")
    path = average_checkpoints(args.checkpoints, out, args.weights)
    print(f"averaged {len(args.checkpoints)} checkpoints into {path}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from affectclip.train.config import list_recipes

    for name, desc in list_recipes().items():
        print(f"{name:12s} {desc}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Synthetic data -> tiny model -> zero-shot table, confusion matrix PNG and checkpoint."""
    from affectclip.eval.results import plot_confusion

    cfg = _load("demo", args.overrides)
    out = Path(args.output)
    summary = _run(cfg, str(out), overwrite=True)
    res = summary["validation"][-1]
    classes = list(res["per_class_recall"])
    print()
    print("Zero-shot on held-out synthetic faces (prompt 'an expression of {class}.'):")
    print(f"  N = {res['n_samples']}, chance = {100 / len(classes):.1f} %")
    print(f"  WAR (accuracy) {res['war']:6.2f} %")
    print(f"  UAR            {res['uar']:6.2f} %")
    print("  per-class recall: " + ", ".join(f"{c} {v:.0f}" for c, v in res["per_class_recall"].items()))
    png = plot_confusion(res["confusion_matrix"], classes, out / "confusion_matrix.png",
                             title=f"demo zero-shot, UAR {res['uar']:.1f} %")
    (out / "demo_result.json").write_text(json.dumps(res, indent=2))
    print(f"checkpoint: {out / 'model.safetensors'}   confusion matrix: {png}")
    print("(synthetic, label-derived captions: this checks the machinery, not emotion understanding)")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from affectclip.core.errors import UserError
    from affectclip.train.plot import plot_run

    try:
        png = plot_run(args.run_dir, args.out)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    print(png)
    return 0
