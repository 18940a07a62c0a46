"""`affectclip predict | embed | search | export`: the end-user inference commands.

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
    if args.labels and args.labels_file:
        raise _user_error("give --labels or --labels-file, not both")
    if args.labels:
        return [s.strip() for s in args.labels.split(",")]
    if args.labels_file:
        path = Path(args.labels_file)
        if not path.is_file():
            raise _user_error(f"--labels-file {path}: no such file")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        except UnicodeDecodeError as exc:
            raise _user_error(f"--labels-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return [line for line in lines if line and not line.startswith("#")]
    return None


def _load(args: argparse.Namespace):
    from affectclip.infer.predictor import load

    return load(args.model, device=args.device, detector=getattr(args, "detector", "default"),
                verbose=sys.stderr.isatty())


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
    model = _load(args)
    df = model.predict(args.inputs, labels=labels, prompts=args.prompts, detect_faces=not args.no_detect, fps=fps,
                       batch_size=args.batch_size, agg=args.agg)
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
    model = load(model_path, device=args.device)
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
    from affectclip.infer.export import PARITY_TOLERANCE, export_onnx, validate_onnx
    from affectclip.infer.predictor import load

    model = load(args.model, device="cpu")
    paths = export_onnx(model.model, args.onnx, model.tokenizer, opset=args.opset)
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.no_validate:
        return 0
    diffs = validate_onnx(model.model, args.onnx, model.tokenizer)
    for name, diff in diffs.items():
        print(f"parity {name}: max |onnxruntime - pytorch| = {diff:.3g} (tolerance {PARITY_TOLERANCE:g})")
    if max(diffs.values()) > PARITY_TOLERANCE:
        print("ONNX export does NOT match PyTorch within tolerance", file=sys.stderr)
        return 1
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model checkpoint (.safetensors); default: the installed default model")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1 ...")


def _media_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, videos or folders (searched recursively)")
    _model_options(p)
    p.add_argument("--fps", type=float, default=5.0, help="video sampling rate (default 5; 0 = every frame)")
    p.add_argument("--no-detect", action="store_true", help="inputs are already face crops: use whole images")
    p.add_argument("--detector", default="default", choices=["default", "haar", "blazeface", "mtcnn"],
                   help="face detector (default: mtcnn)")
    p.add_argument("--batch-size", type=int, default=32, help="face crops per image-tower batch")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add predict, embed, search and export to the top-level parser."""
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "predict", help="emotion probabilities per face in images and videos", formatter_class=raw, epilog=EXIT_EPILOG,
        description="One row per face per frame: box, face id (tracked in videos), one probability per label "
                    "(softmax at the model's own logit scale) and the top label. Frames without a face and "
                    "unreadable files are kept as rows with status 'no_face' / 'error: ...'.")
    _media_options(p)
    p.add_argument("--labels", help="comma-separated labels (default: the 8 FER+ classes)")
    p.add_argument("--labels-file", help="file with one label per line")
    p.add_argument("--prompts", default=None,
                   help="prompt set: expression (default), descriptions, other names of eval/assets/templates.json, "
                        "or 'text' to use each label verbatim (free-text labels)")
    p.add_argument("--agg", default="embedding", choices=["embedding", "logit"], help="prompt ensembling")
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

    p = subparsers.add_parser("export", help="export the image and text towers to ONNX and check parity")
    p.add_argument("--model", help="model checkpoint (.safetensors); default: the installed default model")
    p.add_argument("--onnx", required=True, metavar="OUTDIR", help="folder for image_encoder.onnx, text_encoder.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    p.set_defaults(func=_export)
