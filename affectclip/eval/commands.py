"""`affectclip eval`: list benchmarks, run one evaluation into a JSON record, merge records into a table.

Heavy modules (torch, the model factory, sklearn) are imported inside the handlers so `affectclip --help` stays fast.
Inputs are validated (benchmark or manifest, task, split, classes, data folder, prompts vs classes, every requested
fold, a writable --output) before any model is built, so a mistake costs seconds, not a model load. `--fold all`
evaluates every official fold with one model load and adds a record with the mean ± std over folds. Under `torchrun`
the ranks share feature extraction (see eval/features.py) and rank 0 writes the records.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from affectclip.models.default import DEFAULT_MODEL_NAME

TASKS = ("zeroshot", "linear_probe", "fewshot", "regression", "retrieval")
PROBE_TASKS = ("linear_probe", "fewshot", "regression")
MASK_POLICIES = ("none", "full", "face")  # = eval.features.MASK_POLICIES (not imported: keeps --help fast)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on emotion benchmarks (zero-shot, probes, retrieval)")
    p.add_argument("--list", action="store_true", help="list the benchmark adapters and their official layouts")
    sub = p.add_subparsers(dest="eval_command", metavar="{run,table}")
    p.set_defaults(func=_cmd_eval)

    r = sub.add_parser("run", help="run one (model, benchmark or manifest, task) evaluation into a JSON result record")
    r.add_argument("--model", default=DEFAULT_MODEL_NAME,
                   help="checkpoint path, model config name or config .json; 'default' (the default) is the shipped "
                        "FER+ model")
    r.add_argument("--pretrained", help="weights to load into --model (any supported checkpoint format)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--benchmark", help="benchmark name (see `affectclip eval --list`)")
    src.add_argument("--manifest", help="any labelled affectclip manifest as a benchmark: M or M:SPLIT; classes "
                     "from its labels (or --classes); the split from :SPLIT or --split (default test/valid, or "
                     "every row when rows have no split)")
    r.add_argument("--train-manifest", help="manifest (M or M:SPLIT, default split train) the probes train on "
                   "instead of the train rows of --manifest")
    r.add_argument("--classes", help="comma-separated class names in index order for --manifest (default: its "
                   "sorted label names); rows with other labels are counted as failures")
    r.add_argument("--allow-outside", action="store_true",
                   help="let --manifest/--train-manifest rows name files outside the manifest's folder (refused by default)")
    r.add_argument("--root", help="dataset folder in the benchmark's official layout")
    r.add_argument("--task", choices=TASKS, default="zeroshot",
                   help="zeroshot (prompts), linear_probe (C chosen on a part of train), fewshot (1-16 shots), "
                        "regression (ridge on continuous targets) or retrieval (text<->media R@K on captions)")
    r.add_argument("--split", help="evaluation split (default: the benchmark's test/validation split)")
    r.add_argument("--fold", help="official fold(s) for DFEW/MAFW: 1..5, a list like 1,3, or 'all' (adds the mean "
                   "± std over folds)")
    r.add_argument("--prompts", default="expression", help="prompt set (template set name or 'descriptions')")
    r.add_argument("--agg", choices=("embedding", "logit"), default="embedding",
                   help="prompt aggregation: average the prompt embeddings (CLIP) or the per-prompt logits")
    r.add_argument("--video-pool", choices=("mean_embed", "mean_logits"), default="mean_embed",
                   help="frame pooling for image models on video (models with a temporal head use it)")
    r.add_argument("--probe-c", type=float, help="fix the probe's C / ridge alpha instead of sweeping on a part "
                   "carved from train")
    r.add_argument("--probe-protocol", choices=("affectclip", "emotionclip"), default="affectclip",
                   help="probe solver: affectclip (lbfgs) or emotionclip (sag, 2000 iterations, seed 2022)")
    r.add_argument("--mask-policy", choices=MASK_POLICIES,
                   help="subject mask for subject-token (EmotionCLIP) models: none (the model's missing-mask rule), "
                        "full (whole frame), face (the manifest's mask/boxes); default full for subject-token "
                        "models, none otherwise")
    r.add_argument("--batch-size", type=int, default=64, help="samples encoded per forward pass")
    r.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    r.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1 ...; under "
                   "torchrun each rank uses the GPU of its LOCAL_RANK")
    r.add_argument("--output", default="results", help="folder for the JSON record, manifests and feature cache")
    r.add_argument("--quiet", action="store_true", help="no progress bar or encoding summary (results still print)")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("table", help="merge result records into one table (one row per record)")
    t.add_argument("results_dir", help="folder holding result records (searched recursively)")
    t.add_argument("--format", choices=("md", "csv"), default="md", help="markdown (default) or CSV")
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


def _check_output(output: str) -> Path:
    """`--output` is a folder we can write in: checked before any model load or encoding, not after the work."""
    from affectclip.core.errors import UserError

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; give a folder for the result records")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"--output {out} is not a writable folder ({exc.strerror or exc}); choose another "
                        "folder") from None
    return out


def _prepare(args: argparse.Namespace, fold: int | None = None, rank: int = 0) -> dict[str, Any]:
    """Resolve the data (benchmark or manifest), splits, classes and prompts without touching the model."""
    prep = _prepare_manifest(args) if args.manifest else _prepare_benchmark(args, fold, rank)
    if args.task == "zeroshot":
        from affectclip.eval.prompts import build_prompts, compound_components

        if prep.pop("compound", False):
            prep["compounds"] = {c: compound_components(c) for c in prep["classes"]}
            prep["prompts"] = build_prompts(sorted({x for v in prep["compounds"].values() for x in v}), args.prompts)
        else:
            prep["prompts"] = build_prompts(prep["classes"], args.prompts)
    return prep


def _prepare_benchmark(args: argparse.Namespace, fold: int | None, rank: int) -> dict[str, Any]:
    """A benchmark's official layout written as manifests under --output. Ranks other than 0 write their (identical)
    manifests to their own folder so no two processes write one file."""
    from affectclip.data.manifest import read_manifest
    from affectclip.eval.benchmarks import get_benchmark

    if args.classes or args.train_manifest:
        raise ValueError("--classes and --train-manifest go with --manifest; a benchmark has its own classes and "
                         "train split")
    bench = get_benchmark(args.benchmark)
    if args.task not in bench.tasks:
        raise ValueError(f"{bench.name} supports tasks {bench.tasks}, not '{args.task}'")
    if not args.root:
        raise ValueError(f"--root is required: the {bench.name} folder ({bench.layout})")
    split = args.split or bench.splits[-1]
    needs_train = args.task in PROBE_TASKS
    if needs_train and ("train" not in bench.splits or split == "train"):
        raise ValueError(f"{args.task} trains on 'train' and evaluates on another split; {bench.name} has {bench.splits}")
    tag = f"{bench.name}_{{}}" + (f"_fold{fold}" if fold else "")
    folder = Path(args.output) / "manifests" / (f"rank{rank}" if rank else "")
    splits = {"eval": split, **({"train": "train"} if needs_train else {})}
    files, skipped = {}, []
    for key, name in splits.items():
        files[key], left_out = bench.to_manifest(args.root, name, folder / f"{tag.format(name)}.jsonl", fold)
        skipped += left_out
    if args.task == "regression" and not bench.continuous:
        raise ValueError(f"{bench.name} has no continuous targets for --task regression")
    return {"name": bench.name, "split": split, "classes": list(bench.classes), "compound": bench.compound,
            # the adapters write absolute paths under the user's --root: reading there is what the user asked for
            "data": {k: read_manifest(f, check_files=False, allow_outside=True) for k, f in files.items()},
            "sources": {"root": str(Path(args.root).resolve())}, "split_files": [str(f) for f in files.values()],
            "skipped": skipped, "continuous": bench.continuous}


def _prepare_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """Any labelled manifest as a benchmark (eval/manifest_source.py): its split, classes and scorable rows."""
    from affectclip.eval import manifest_source as ms

    manifest, inline_split = ms.load(args.manifest, allow_outside=args.allow_outside)
    if args.split and inline_split and args.split != inline_split:
        raise ValueError(f"--manifest {args.manifest} names split '{inline_split}' but --split is '{args.split}'")
    evaluated, split = ms.select_split(manifest, args.split or inline_split)
    data, sources = {"eval": evaluated}, {"eval": str(Path(manifest.source).resolve())}
    if args.task in PROBE_TASKS:
        if args.train_manifest:
            train_manifest, train_split = ms.load(args.train_manifest, "--train-manifest", args.allow_outside)
            data["train"], _ = ms.select_split(train_manifest, train_split or "train", ("train",))
            sources["train"] = f"{Path(train_manifest.source).resolve()}:{train_split or 'train'}"
        elif split in ("train", ms.ALL):
            raise ValueError(f"{args.task} trains on the manifest's 'train' rows and reports another split; "
                             f"evaluating '{split}' would score the training rows: pass --split or --train-manifest")
        else:
            data["train"], _ = ms.select_split(manifest, "train", ("train",))
            sources["train"] = f"{sources['eval']}:train"
    elif args.train_manifest:
        raise ValueError(f"--train-manifest is for the probe tasks {PROBE_TASKS}, not --task {args.task}")
    need = {"retrieval": "caption", "regression": "targets"}.get(args.task, "label")
    classes = [] if need != "label" else ms.manifest_classes(
        [manifest, *([train_manifest] if args.train_manifest else [])],
        args.classes.split(",") if args.classes else None)
    skipped = []
    for key in data:
        data[key], left_out = ms.scorable(data[key], classes, need)
        skipped += left_out
    continuous: tuple[str, ...] = ()
    if need == "targets":
        data, continuous, left_out = ms.aligned_targets(data)
        skipped += left_out
    return {"name": Path(manifest.source).stem, "split": split, "classes": classes, "data": data,
            "sources": sources, "split_files": sorted({str(m.source) for m in data.values()}), "skipped": skipped,
            "continuous": continuous}


def _load(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Model, tokenizer, transform, the identity of the evaluated weights (record + feature cache key) and the
    resolved mask policy. `--model default` is the shipped model (models/default.py)."""
    import affectclip
    from affectclip.eval.protocol import resolve_mask_policy
    from affectclip.eval.results import weights_identity
    from affectclip.models.default import default_model_path

    source = default_model_path() if args.model == DEFAULT_MODEL_NAME else args.model
    model = affectclip.create_model(source, pretrained=args.pretrained, device=device)
    policy = resolve_mask_policy(model, args.mask_policy)
    weights = weights_identity(args.pretrained or source, model)
    return {"model": model, "tokenizer": affectclip.get_tokenizer(model), "transform": affectclip.create_transforms(model),
            "device": device, "mask_policy": policy, "weights": weights,
            "id": {"model": args.model, "tensors_sha256": weights["tensors_sha256"],
                   "config": getattr(model, "config", {})}}


def _video_pool(args: argparse.Namespace) -> str:
    """The pooling the features are extracted with: only zero-shot can average logits over frames."""
    return args.video_pool if args.task == "zeroshot" else "mean_embed"


def _features(loaded: dict[str, Any], manifest: Any, classes: list[str], args: argparse.Namespace, what: str) -> Any:
    """Features of one manifest split (cached under --output); a progress bar while encoding and a summary line."""
    import time

    from affectclip.data.datasets import ManifestDataset
    from affectclip.data.video import UniformSampler
    from affectclip.eval.features import cache_key, cached_features, with_box_masks

    if loaded["mask_policy"] == "face":
        manifest = with_box_masks(manifest, Path(args.output) / "masks")
    # A temporal head with a shorter position table (EmotionCLIP: 8 frames) gets that many uniform frames, not 16.
    limit = getattr(loaded["model"].temporal, "max_frames", None)
    sampler = UniformSampler(limit) if limit and limit < UniformSampler.T else None
    ds = ManifestDataset(manifest, transform=loaded["transform"], classes=classes or None, video_sampler=sampler)
    pool = _video_pool(args)
    keep = args.task == "zeroshot" and pool == "mean_logits"
    key = {**loaded["id"], "data": cache_key({"root": str(manifest.root), "records": manifest.records}),
           "classes": classes, "transform": repr(loaded["transform"])}
    t0 = time.perf_counter()
    quiet = args.quiet or not loaded["is_main"]
    fs, cached = cached_features(Path(args.output) / "features", key, model=loaded["model"], dataset=ds,
                                 batch_size=args.batch_size, device=loaded["device"], video_pool=pool,
                                 keep_frames=keep, num_workers=args.workers, mask_policy=loaded["mask_policy"],
                                 progress=None if quiet else f"encoding {what}")
    if not quiet:
        how = "read from the feature cache" if cached else f"encoded in {time.perf_counter() - t0:.1f} s"
        print(f"{what}: {len(fs.indices)} samples {how}, {len(fs.errors)} unreadable", file=sys.stderr)
    return fs


def _protocol(args: argparse.Namespace, loaded: dict[str, Any]) -> dict[str, Any]:
    """Every option of this run that changes the numbers (stored in the record, hashed into its file name)."""
    from affectclip.eval.protocol import ZeroShotProtocol

    if args.task == "zeroshot":
        return ZeroShotProtocol(prompts=args.prompts, agg=args.agg, mask_policy=loaded["mask_policy"],
                                video_pool=args.video_pool).describe(loaded["model"])
    out = {"mask_policy": loaded["mask_policy"], "video_pool": _video_pool(args)}
    if args.task in PROBE_TASKS:
        out.update(probe_protocol=args.probe_protocol, probe_c=args.probe_c)
    return out


def _run_task(args: argparse.Namespace, prep: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """Evaluate, then count every failure in one place: rows left out before encoding and unreadable samples."""
    fs = {k: _features(loaded, m, prep["classes"], args, f"{prep['name']} {prep['split'] if k == 'eval' else k}")
          for k, m in prep["data"].items()}
    result = _evaluate(args, prep, loaded, fs)
    failed = prep["skipped"] + [e for f in fs.values() for e in f.errors]
    if "train" in fs:
        result["n_train"] = len(fs["train"].indices)
    return {**result, "failures": {"count": len(failed), "examples": failed[:20]},
            "mask_policy": loaded["mask_policy"], "protocol": _protocol(args, loaded)}


def _evaluate(args: argparse.Namespace, prep: dict[str, Any], loaded: dict[str, Any], fs: dict[str, Any]) -> dict:
    from affectclip.eval import probe

    model, tokenizer, device = loaded["model"], loaded["tokenizer"], loaded["device"]
    classes, ev = prep["classes"], fs["eval"]
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
    if args.task == "regression":  # targets = the benchmark's multi-hot categories, then the continuous values
        k = len(tr.targets[0]) - len(prep["continuous"])
        return probe.ridge_probe(tr.features, tr.targets[:, k:], ev.features, ev.targets[:, k:], prep["continuous"],
                                 alpha=args.probe_c)
    if prep["continuous"]:
        k = len(classes)
        return probe.multilabel_probe(tr.features, tr.targets[:, :k], ev.features, ev.targets[:, :k],
                                      C=args.probe_c, protocol=args.probe_protocol)
    if args.task == "fewshot":
        return probe.fewshot_probe(tr.features, tr.labels, ev.features, ev.labels, classes,
                                   C=args.probe_c or 1.0, protocol=args.probe_protocol)
    return probe.linear_probe(tr.features, tr.labels, ev.features, ev.labels, classes, C=args.probe_c,
                              protocol=args.probe_protocol)


def _write(args: argparse.Namespace, prep: dict[str, Any], fold: int | None, result: dict[str, Any],
           loaded: dict[str, Any]) -> dict:
    from affectclip.eval.results import make_record, plot_confusion, write_record

    record = make_record(
        model=args.model, benchmark=prep["name"], split=prep["split"], fold=fold, task=args.task,
        classes=prep["classes"], result=result, weights=loaded["weights"], data=prep["sources"],
        split_files=prep["split_files"], prompt_set=args.prompts if args.task == "zeroshot" else None,
        config={k: v for k, v in vars(args).items() if k != "func"},
    )
    path = write_record(record, args.output)
    metrics = record["metrics"]
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], prep["classes"], path.with_suffix(".png"), title=path.stem)
    _report(record, path)
    return record


def _report(record: dict[str, Any], path: Path) -> None:
    """The headline numbers (nested ones such as retrieval's `text_to_item.R@1` flattened), failures, the file."""
    from affectclip.eval.results import scalar_metrics

    print(json.dumps({k: round(v, 2) for k, v in scalar_metrics(record["metrics"]).items()}))
    failures = record.get("failures") or {}
    if failures.get("count"):
        first = failures["examples"][0]
        where = f"row {first['row']}" if first.get("row") else first.get("path")
        print(f"{failures['count']} sample(s) could not be scored (listed in the record); first: {where}: "
              f"{first['error']}")
    print(f"wrote {path}")


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from affectclip.core.distributed import cleanup, device_and_rank
    from affectclip.eval.results import fold_mean_record, write_record

    folds = _user_errors(_folds)(args)
    _check_output(args.output)
    rank = int(os.environ.get("RANK", "0"))
    preps = [_user_errors(_prepare)(args, f, rank) for f in folds]
    device, info = device_and_rank(args.device)
    try:
        loaded = {**_user_errors(_load)(args, str(device)), "is_main": info.is_main}
        records = []
        for fold, prep in zip(folds, preps, strict=True):
            result = _user_errors(_run_task)(args, prep, loaded)
            if info.is_main:
                records.append(_write(args, prep, fold, result, loaded))
        if info.is_main and len(records) > 1:
            mean = _user_errors(fold_mean_record)(records)
            _report(mean, write_record(mean, args.output))
    finally:
        cleanup(info)
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from affectclip.core.errors import UserError
    from affectclip.eval.results import build_table, to_markdown, write_table

    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name for the table")
    df = _user_errors(build_table)(args.results_dir)
    if args.out:
        try:
            print(f"wrote {write_table(df, args.out, args.format)}")
        except OSError as exc:
            raise UserError(f"cannot write the table to {args.out} ({exc.strerror or exc}); choose another "
                            "file") from None
    else:
        print(to_markdown(df) if args.format == "md" else df.to_csv(index=False), end="")
    return 0
