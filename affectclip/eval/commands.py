"""`affectclip eval`: list benchmarks, run one evaluation into a JSON record, merge records into a table.

Heavy modules (torch, the model factory, sklearn) are imported inside the handlers so `affectclip --help` stays fast.
Inputs are validated (benchmark, task, split, data folder, prompts vs classes, every requested fold) before any
model is built, so a mistake costs seconds, not a model load. `--fold all` evaluates every official fold with one
model load and adds a record with the mean ± std over folds. Under `torchrun` the ranks share feature extraction
(see eval/features.py) and rank 0 writes the records.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TASKS = ("zeroshot", "linear_probe", "fewshot", "regression", "retrieval")
MASK_POLICIES = ("none", "full", "face")  # = eval.features.MASK_POLICIES (not imported: keeps --help fast)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on emotion benchmarks (zero-shot, probes, retrieval)")
    p.add_argument("--list", action="store_true", help="list the benchmark adapters and their official layouts")
    sub = p.add_subparsers(dest="eval_command", metavar="{run,table}")
    p.set_defaults(func=_cmd_eval)

    r = sub.add_parser("run", help="run one (model, benchmark, task) evaluation and write a JSON result record")
    r.add_argument("--model", required=True, help="model config name, config .json, or checkpoint path")
    r.add_argument("--pretrained", help="weights to load into --model (any supported checkpoint format)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--benchmark", help="benchmark name (see `affectclip eval --list`)")
    src.add_argument("--manifest", help="an affectclip manifest instead of a benchmark (retrieval, custom sets)")
    r.add_argument("--allow-outside", action="store_true",
                   help="let --manifest rows name files outside the manifest's folder (refused by default)")
    r.add_argument("--root", help="dataset folder in the benchmark's official layout")
    r.add_argument("--task", choices=TASKS, default="zeroshot")
    r.add_argument("--split", help="evaluation split (default: the benchmark's test/validation split)")
    r.add_argument("--fold", help="official fold(s) for DFEW/MAFW: 1..5, a list like 1,3, or 'all' (adds the mean "
                   "± std over folds)")
    r.add_argument("--prompts", default="expression", help="prompt set (template set name or 'descriptions')")
    r.add_argument("--agg", choices=("embedding", "logit"), default="embedding", help="prompt aggregation")
    r.add_argument("--video-pool", choices=("mean_embed", "mean_logits"), default="mean_embed",
                   help="frame pooling for image models on video (models with a temporal head use it)")
    r.add_argument("--probe-c", type=float, help="fix the probe's C / ridge alpha instead of sweeping on train")
    r.add_argument("--probe-protocol", choices=("affectclip", "emotionclip"), default="affectclip")
    r.add_argument("--mask-policy", choices=MASK_POLICIES,
                   help="subject mask for subject-token (EmotionCLIP) models: none (the model's missing-mask rule), "
                        "full (whole frame), face (the manifest's mask/boxes); default full for subject-token "
                        "models, none otherwise")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    r.add_argument("--device", default="cpu")
    r.add_argument("--output", default="results", help="folder for the JSON record, manifests and feature cache")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("table", help="merge result records into one table")
    t.add_argument("results_dir")
    t.add_argument("--format", choices=("md", "csv"), default="md")
    t.add_argument("--out", help="write the table to this file instead of printing it")
    t.set_defaults(func=_cmd_table)


def _cmd_eval(args: argparse.Namespace) -> int:
    from affectclip.eval.benchmarks import list_benchmarks

    if not args.list:
        print("usage: affectclip eval {--list | run ... | table RESULTS_DIR}")
        return 1
    for b in list_benchmarks():
        folds = f", {b['folds']} folds" if b["folds"] else ""
        print(f"{b['name']:<16} tasks={','.join(b['tasks'])} splits={','.join(b['splits'])}{folds} "
              f"classes={len(b['classes'])}\n    {b['layout']}")
    return 0


def _user_errors(fn):
    """Turn bad-input exceptions from the adapters/builders into `UserError` (one clear line, exit code 2)."""
    from affectclip.core.errors import UserError

    def wrapped(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise UserError(exc.args[0] if exc.args else str(exc)) from exc

    return wrapped


def _folds(args: argparse.Namespace) -> list[int | None]:
    """`--fold` -> the folds to run: [None] for fold-less benchmarks, one or more official folds otherwise."""
    from affectclip.eval.benchmarks import get_benchmark

    n = get_benchmark(args.benchmark).folds if args.benchmark else 0
    if not n:
        if args.fold:
            raise ValueError(f"{args.benchmark or args.manifest} has no official folds; drop --fold")
        return [None]
    if not args.fold:
        raise ValueError(f"{args.benchmark} needs --fold 1..{n}, a list like 1,3, or 'all' (report the fold mean)")
    if args.fold == "all":
        return list(range(1, n + 1))
    try:
        folds = [int(x) for x in args.fold.split(",")]
    except ValueError:
        raise ValueError(f"--fold must be 1..{n}, a comma list of them, or 'all'; got '{args.fold}'") from None
    bad = [f for f in folds if not 1 <= f <= n]
    if bad or len(set(folds)) != len(folds):
        raise ValueError(f"--fold {args.fold}: {args.benchmark} folds are 1..{n}, each at most once")
    return folds


def _prepare(args: argparse.Namespace, fold: int | None = None, rank: int = 0) -> dict[str, Any]:
    """Resolve benchmark, splits, manifests and prompts without touching the model.

    Ranks other than 0 write their (identical) manifests to their own folder so no two processes write one file.
    """
    from affectclip.eval.benchmarks import get_benchmark
    from affectclip.eval.prompts import build_prompts, compound_components

    out = Path(args.output)
    if args.manifest:
        if args.task != "retrieval":
            raise ValueError("--manifest is supported for --task retrieval; use --benchmark for classification")
        if not Path(args.manifest).is_file():
            raise FileNotFoundError(f"manifest {args.manifest} does not exist")
        return {"name": Path(args.manifest).stem, "split": args.split or "all", "classes": [],
                "manifests": {"eval": Path(args.manifest)}, "split_files": [args.manifest]}
    bench = get_benchmark(args.benchmark)
    if args.task not in bench.tasks:
        raise ValueError(f"{bench.name} supports tasks {bench.tasks}, not '{args.task}'")
    if not args.root:
        raise ValueError(f"--root is required: the {bench.name} folder ({bench.layout})")
    split = args.split or bench.splits[-1]
    needs_train = args.task in ("linear_probe", "fewshot", "regression")
    if needs_train and ("train" not in bench.splits or split == "train"):
        raise ValueError(f"{args.task} trains on 'train' and evaluates on another split; {bench.name} has {bench.splits}")
    tag = f"{bench.name}_{{}}" + (f"_fold{fold}" if fold else "")
    folder = out / "manifests" / (f"rank{rank}" if rank else "")
    manifests = {"eval": bench.to_manifest(args.root, split, folder / f"{tag.format(split)}.jsonl", fold)}
    if needs_train:
        manifests["train"] = bench.to_manifest(args.root, "train", folder / f"{tag.format('train')}.jsonl", fold)
    prep = {"name": bench.name, "split": split, "bench": bench, "classes": list(bench.classes), "manifests": manifests,
            "split_files": [str(p) for p in manifests.values()]}
    if args.task == "zeroshot":
        if bench.compound:
            prep["compounds"] = {c: compound_components(c) for c in bench.classes}
            comps = sorted({x for v in prep["compounds"].values() for x in v})
            prep["prompts"] = build_prompts(comps, args.prompts)
        else:
            prep["prompts"] = build_prompts(bench.classes, args.prompts)
    return prep


def _load(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Model, tokenizer, transform, the identity that keys the feature cache, and the resolved mask policy."""
    import affectclip
    from affectclip.eval.protocol import resolve_mask_policy
    from affectclip.eval.results import sha256_file

    model = affectclip.create_model(args.model, pretrained=args.pretrained, device=device)
    policy = resolve_mask_policy(model, args.mask_policy)
    weights = args.pretrained or (args.model if Path(args.model).is_file() else None)
    return {"model": model, "tokenizer": affectclip.get_tokenizer(model), "transform": affectclip.create_transforms(model),
            "device": device, "mask_policy": policy,
            "id": {"model": args.model, "weights_sha256": sha256_file(weights) if weights else None,
                   "config": getattr(model, "config", {})}}


def _features(loaded: dict[str, Any], manifest: Path, classes, args: argparse.Namespace) -> Any:
    from affectclip.data.datasets import ManifestDataset
    from affectclip.eval.features import cached_features, with_box_masks
    from affectclip.eval.results import sha256_file

    # Benchmark manifests are written by the adapters with absolute paths under the user's --root: reading there
    # is what the user asked for. A user's own --manifest keeps its rows inside its folder.
    allow_outside = args.allow_outside or not args.manifest
    if loaded["mask_policy"] == "face":
        derived = with_box_masks(manifest, Path(args.output) / "masks", allow_outside)
        allow_outside |= derived != manifest  # its absolute rows were checked when the source manifest was read
        manifest = derived
    ds = ManifestDataset(manifest, transform=loaded["transform"], classes=classes or None, allow_outside=allow_outside)
    keep = args.task == "zeroshot" and args.video_pool == "mean_logits"
    key = {**loaded["id"], "manifest_sha256": sha256_file(manifest), "transform": repr(loaded["transform"])}
    fs, _ = cached_features(Path(args.output) / "features", key, model=loaded["model"], dataset=ds,
                            batch_size=args.batch_size, device=loaded["device"], video_pool=args.video_pool,
                            keep_frames=keep, num_workers=args.workers, mask_policy=loaded["mask_policy"])
    return fs


def _run_task(args: argparse.Namespace, prep: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    result = _evaluate(args, prep, loaded)
    return {**result, "mask_policy": loaded["mask_policy"]}


def _evaluate(args: argparse.Namespace, prep: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    from affectclip.eval import probe

    model, tokenizer, device = loaded["model"], loaded["tokenizer"], loaded["device"]
    classes = prep["classes"]
    fs = {k: _features(loaded, m, classes, args) for k, m in prep["manifests"].items()}
    ev = fs["eval"]
    if args.task == "zeroshot":
        from affectclip.eval.protocol import ZeroShotProtocol

        protocol = ZeroShotProtocol(prompts=args.prompts, agg=args.agg, mask_policy=loaded["mask_policy"],
                                    video_pool=args.video_pool)
        return protocol.evaluate(model, tokenizer, classes, features=ev, device=device,
                                 compounds=prep.get("compounds"))
    if args.task == "retrieval":
        from affectclip.eval.retrieval import evaluate_retrieval

        return evaluate_retrieval(model, tokenizer, None, device=device, features=ev)
    tr = fs["train"]
    failures = {"count": len(ev.errors) + len(tr.errors), "examples": (ev.errors + tr.errors)[:20]}
    bench = prep["bench"]
    if bench.continuous:  # targets = multi-hot categories then continuous values
        k = len(classes)
        if args.task == "regression":
            r = probe.ridge_probe(tr.features, tr.targets[:, k:], ev.features, ev.targets[:, k:], bench.continuous,
                                  alpha=args.probe_c)
        else:
            r = probe.multilabel_probe(tr.features, tr.targets[:, :k], ev.features, ev.targets[:, :k], C=args.probe_c,
                                       protocol=args.probe_protocol)
    elif args.task == "fewshot":
        r = probe.fewshot_probe(tr.features, tr.labels, ev.features, ev.labels, classes,
                                C=args.probe_c or 1.0, protocol=args.probe_protocol)
    elif args.task == "linear_probe":
        r = probe.linear_probe(tr.features, tr.labels, ev.features, ev.labels, classes, C=args.probe_c,
                               protocol=args.probe_protocol)
    else:
        raise ValueError(f"{bench.name} has no continuous targets for --task regression")
    return {**r, "failures": failures}


def _write(args: argparse.Namespace, prep: dict[str, Any], fold: int | None, result: dict[str, Any]) -> dict:
    from affectclip.eval.results import make_record, plot_confusion, write_record

    record = make_record(
        model=args.model, benchmark=prep["name"], split=prep["split"], fold=fold, task=args.task,
        classes=prep["classes"], result=result, weights=args.pretrained, split_files=prep["split_files"],
        prompt_set=args.prompts if args.task == "zeroshot" else None,
        config={k: v for k, v in vars(args).items() if k != "func"},
    )
    path = write_record(record, args.output)
    metrics = record["metrics"]
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], prep["classes"], path.with_suffix(".png"), title=path.stem)
    _report(metrics, path)
    return record


def _report(metrics: dict[str, Any], path: Path) -> None:
    shown = {k: round(v, 2) for k, v in metrics.items() if isinstance(v, float)}
    print(json.dumps(shown))
    print(f"wrote {path}")


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from affectclip.core.distributed import cleanup, init_distributed
    from affectclip.eval.results import fold_mean_record, write_record

    folds = _user_errors(_folds)(args)
    rank = int(os.environ.get("RANK", "0"))
    preps = [_user_errors(_prepare)(args, f, rank) for f in folds]
    info = init_distributed("cuda" if args.device.startswith("cuda") else "cpu")
    device = f"cuda:{info.local_rank}" if info.enabled and args.device == "cuda" else args.device
    try:
        loaded = _user_errors(_load)(args, device)
        records = []
        for fold, prep in zip(folds, preps, strict=True):
            result = _user_errors(_run_task)(args, prep, loaded)
            if info.is_main:
                records.append(_write(args, prep, fold, result))
        if info.is_main and len(records) > 1:
            mean = _user_errors(fold_mean_record)(records)
            _report(mean["metrics"], write_record(mean, args.output))
    finally:
        cleanup(info)
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from affectclip.eval.results import build_table, to_markdown, write_table

    df = _user_errors(build_table)(args.results_dir)
    if args.out:
        print(f"wrote {write_table(df, args.out, args.format)}")
    else:
        print(to_markdown(df) if args.format == "md" else df.to_csv(index=False), end="")
    return 0
