"""`affectclip data ...` sub-commands: check, synthetic, ferplus, shard, sentiment (+ frames, faces from
media_commands.py).

Handlers import their modules lazily so `affectclip --help` stays instant. Output paths are checked before any
work starts (`core.outputs`); `check` and `shard` judge files outside the manifest's folder alike (refused unless
`--allow-outside`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _user_error(message: str) -> Exception:
    from affectclip.core.errors import UserError

    return UserError(message)


def _check(args: argparse.Namespace) -> int:
    from affectclip.data.manifest import read_manifest

    manifest = read_manifest(args.manifest, check_files=not args.no_files, strict=False,
                             allow_outside=args.allow_outside)
    print(manifest.report())
    return 1 if manifest.problems else 0


def _synthetic(args: argparse.Namespace) -> int:
    from affectclip.core.outputs import check_output_dir
    from affectclip.data.synthetic import write_synthetic_dataset

    if not 1 <= args.image_size <= 1024:
        raise _user_error(f"--image-size must be in 1-1024 pixels, got {args.image_size}")
    check_output_dir(args.out, "OUT")
    path = write_synthetic_dataset(args.out, args.n_train, args.n_test, args.seed, args.image_size, args.grayscale)
    print(f"wrote {args.n_train + args.n_test} synthetic faces and {path}")
    return 0


def _ferplus(args: argparse.Namespace) -> int:
    from affectclip.core.outputs import check_output_file
    from affectclip.data.ferplus import build_ferplus_manifest
    from affectclip.data.manifest import write_manifest

    check_output_file(args.out, "OUT")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    rows, dropped = build_ferplus_manifest(args.ferplus_dir, args.rule, splits, relative_to=Path(args.out).parent,
                                           captions=args.captions)
    write_manifest(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out} (rule {args.rule}; {dropped} images without a label dropped)")
    if any(r["path"].startswith("..") for r in rows):
        print("note: its image paths lead outside the manifest's folder; read it with --allow-outside "
              "(config: data.allow_outside=true)")
    return 0


def _shard(args: argparse.Namespace) -> int:
    import math

    from affectclip.core.outputs import check_output_dir
    from affectclip.data.manifest import read_manifest
    from affectclip.data.shards import write_shards

    if not (math.isfinite(args.max_size_mb) and args.max_size_mb > 0) or args.max_count <= 0:
        raise _user_error("--max-size-mb and --max-count must be positive numbers")
    check_output_dir(args.out, "OUT")
    manifest = read_manifest(args.manifest, allow_outside=args.allow_outside)
    if manifest.problems:  # exactly what `data check` reports: a shard never packs a row the check refuses
        more = f" (and {len(manifest.problems) - 1} more)" if len(manifest.problems) > 1 else ""
        raise _user_error(f"{args.manifest}: {manifest.problems[0]}{more}; fix the rows (`affectclip data check "
                          f"{args.manifest}` lists them) before packing")
    shards = write_shards(manifest, args.out, max_size=int(args.max_size_mb * 2**20), max_count=args.max_count)
    print(f"wrote {len(manifest)} samples into {len(shards)} shard(s) under {args.out}")
    return 0


def _sentiment(args: argparse.Namespace) -> int:
    from affectclip.core.outputs import check_output_file
    from affectclip.data.captions import add_sentiment
    from affectclip.data.manifest import read_manifest, write_manifest

    check_output_file(args.out, "OUT")
    manifest = read_manifest(args.manifest, check_files=False)
    records = add_sentiment(manifest.records, args.scorer)
    write_manifest(records, args.out)
    print(f"wrote {len(records)} rows with a 'sentiment' field ({args.scorer}) to {args.out}")
    return 0


def _allow_outside_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside", action="store_true",
                   help="read rows whose files lie outside the manifest's folder (absolute paths, '..', symlinks "
                        "leading out); refused by default")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group to the top-level parser."""
    data = subparsers.add_parser("data", help="prepare, check and convert datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("check", help="validate a manifest (schema, files, masks); non-zero exit on any problem")
    p.add_argument("manifest", help="manifest file (.jsonl, .csv or .parquet)")
    p.add_argument("--no-files", action="store_true", help="check the schema only, not the files it points to")
    _allow_outside_option(p)
    p.set_defaults(func=_check)

    p = sub.add_parser("synthetic", help="write a synthetic face dataset (PNGs + manifest.jsonl) for demos/tests")
    p.add_argument("out", help="output folder")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--grayscale", action="store_true")
    p.set_defaults(func=_synthetic)

    p = sub.add_parser("ferplus", help="build a manifest from the FER+ folder (labels.csv + images/)")
    p.add_argument("ferplus_dir")
    p.add_argument("out", help="output manifest (.jsonl, .csv or .parquet)")
    p.add_argument("--rule", choices=["majority", "plurality8"], default="majority",
                   help="majority = official FER+ rule; plurality8 = argmax of the 8 emotion votes")
    p.add_argument("--splits", default="train,valid", help="comma-separated splits to include")
    p.add_argument("--captions", choices=["fixed", "varied"], default="fixed",
                   help="fixed = 'a face showing <distribution>'; varied = several sentence frames across rows")
    p.set_defaults(func=_ferplus)

    p = sub.add_parser("shard", help="pack a manifest into WebDataset-style tar shards")
    p.add_argument("manifest")
    p.add_argument("out", help="output folder for shard-NNNNNN.tar")
    p.add_argument("--max-size-mb", type=float, default=256.0)
    p.add_argument("--max-count", type=int, default=1000)
    _allow_outside_option(p)
    p.set_defaults(func=_shard)

    p = sub.add_parser("sentiment", help="add a 'sentiment' score vector to every row, computed from its caption")
    p.add_argument("manifest")
    p.add_argument("out", help="output manifest (.jsonl, .csv or .parquet)")
    p.add_argument("--scorer", default="vader")
    p.set_defaults(func=_sentiment)

    from affectclip.data.media_commands import add_media_commands

    add_media_commands(sub)
