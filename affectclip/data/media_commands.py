"""`affectclip data frames` and `affectclip data faces`: videos → JPEG frames, images/videos → aligned face crops.

Both commands process every input they can, never stop at the first bad file, and end with a summary; unreadable
inputs are listed in OUT/failed.txt and make the exit status 1. `data faces` writes a row for every image/frame
that has no face (empty face_id) so nothing is silently dropped from a dataset. The output folder is checked before
any decoding, every output name derived from an input name stays inside it (`core.outputs.output_path`: a video
named `...mp4` must not write into OUT's parent), and the summary files are written atomically.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from affectclip.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

CSV_FIELDS = ["source", "frame", "timestamp", "face_id", "x0", "y0", "x1", "y1", "score", "crop"]


def add_media_commands(data_subparsers: argparse._SubParsersAction) -> None:
    """Add `frames` and `faces` to the `data` command group."""
    p = data_subparsers.add_parser("frames", help="decode videos into JPEG frames (+ frames.json with timestamps)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or folders searched recursively for videos")
    p.add_argument("out", metavar="OUT", help="output folder; one sub-folder per video")
    p.add_argument("--fps", type=float, default=None, help="resample to this rate (EmotionCLIP: 8); default: all frames")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.set_defaults(func=run_frames)

    from affectclip.data.faces import DEFAULT_DETECTOR, DETECTORS

    p = data_subparsers.add_parser("faces", help="detect, track and align faces in images and videos")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, videos, or folders (searched recursively)")
    p.add_argument("out", metavar="OUT", help="output folder: OUT/<name>/<frame>_<face_id>.jpg and OUT/faces.csv")
    p.add_argument("--detector", choices=sorted(DETECTORS), default=DEFAULT_DETECTOR)
    p.add_argument("--size", type=int, default=224, help="crop side in pixels (default 224)")
    p.add_argument("--margin", type=float, default=0.2, help="context around the face box, fraction (default 0.2)")
    p.add_argument("--fps", type=float, default=5.0, help="frames per second analysed in videos (default 5)")
    p.set_defaults(func=run_faces)


def _expand(inputs: list[str], extensions: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Input files with their output names: path relative to a given folder (without suffix), else the stem."""
    from affectclip.core.errors import UserError

    found: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
            found += [(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.is_file():
            found.append((path, path.stem))
        else:
            raise UserError(f"{path}: no such file or folder")
    if not found:
        raise UserError(f"no input files with extensions {', '.join(extensions)} in {', '.join(inputs)}")
    from affectclip.core.outputs import safe_relative_name

    used: dict[str, int] = {}
    named = []
    for path, name in found:  # two inputs with the same (safe) name must not overwrite each other's output
        name = safe_relative_name(name)
        used[name] = used.get(name, 0) + 1
        named.append((path, name if used[name] == 1 else f"{name}_{used[name]}"))
    return named


def _write_failures(out: Path, failures: list[tuple[Path, str]]) -> None:
    from affectclip.core.io import atomic_write_text
    from affectclip.core.outputs import display_path

    report = out / "failed.txt"
    if failures:
        lines = [(display_path(path), display_path(error)) for path, error in failures]
        atomic_write_text(report, "".join(f"{path}\t{error}\n" for path, error in lines))
        print(f"{len(failures)} input(s) failed, listed in {report}:", file=sys.stderr)
        for path, error in lines[:10]:
            print(f"  {path}: {error}", file=sys.stderr)
    elif report.exists():
        report.unlink()  # a stale report from an earlier run would be misleading


def run_frames(args: argparse.Namespace) -> int:
    import math

    from affectclip.core.errors import UserError
    from affectclip.core.outputs import check_output_dir, output_path
    from affectclip.data.video import VideoError, extract_frames

    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps must be a number > 0, got {args.fps}")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be in 1-100, got {args.quality}")
    out = check_output_dir(args.out, "OUT")
    videos = _expand(args.inputs, VIDEO_EXTENSIONS)
    out.mkdir(parents=True, exist_ok=True)
    failures, total = [], 0
    for path, name in videos:
        try:
            total += extract_frames(path, output_path(out, name, f"the frame folder of {path}"), fps=args.fps,
                                    quality=args.quality)
        except (VideoError, OSError, UserError) as exc:
            failures.append((path, str(exc)))
    print(f"{len(videos) - len(failures)}/{len(videos)} videos → {total} frames in {out}")
    _write_failures(out, failures)
    return 1 if failures else 0


def _frames_of(path: Path, fps: float) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame, timestamp, rgb) of an image (one frame) or of a video sampled at `fps`."""
    from affectclip.core.images import decode_rgb
    from affectclip.data.video import iter_frames

    if path.suffix.lower() in IMAGE_EXTENSIONS:
        yield 0, 0.0, decode_rgb(path)  # an ImageDecodeError names the file
    else:
        yield from iter_frames(path, fps=fps)


def run_faces(args: argparse.Namespace) -> int:
    import math

    from PIL import Image

    from affectclip.core.errors import UserError
    from affectclip.core.images import ImageDecodeError
    from affectclip.core.io import atomic_path
    from affectclip.core.outputs import check_output_dir, display_path, output_path
    from affectclip.data.faces import align_crop, get_detector
    from affectclip.data.tracking import IoUTracker
    from affectclip.data.video import VideoError

    if not (16 <= args.size <= 4096 and math.isfinite(args.fps) and args.fps > 0
            and math.isfinite(args.margin) and 0 <= args.margin <= 10):
        raise UserError("--size must be in 16-4096, --fps a number > 0 and --margin in 0-10")
    out = check_output_dir(args.out, "OUT")
    sources = _expand(args.inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    detector = get_detector(args.detector)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[Path, str]] = []
    n_frames = n_faces = n_empty = 0
    with atomic_path(out / "faces.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        for path, name in sources:
            tracker = IoUTracker()
            try:
                folder = output_path(out, name, f"the crop folder of {path}")
                for frame_idx, ts, rgb in _frames_of(path, args.fps):
                    n_frames += 1
                    faces = detector.detect(rgb)
                    base = {"source": display_path(path), "frame": frame_idx, "timestamp": f"{ts:.3f}"}
                    if not faces:
                        n_empty += 1
                        writer.writerow({**base, "face_id": ""})
                        continue
                    for face, face_id in zip(faces, tracker.update([f.box for f in faces]), strict=True):
                        file = folder / f"{frame_idx:06d}_{face_id}.jpg"
                        file.parent.mkdir(parents=True, exist_ok=True)
                        with atomic_path(file) as partial:  # a full disk never leaves a truncated crop
                            Image.fromarray(align_crop(rgb, face, args.size, args.margin)).save(
                                partial, format="JPEG", quality=95)
                        crop = file.relative_to(out)
                        x0, y0, x1, y1 = (f"{v:.1f}" for v in face.box)
                        writer.writerow({**base, "face_id": face_id, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                                         "score": f"{face.score:.4f}", "crop": display_path(crop.as_posix())})
                        n_faces += 1
            except (VideoError, ImageDecodeError, OSError, UserError) as exc:
                failures.append((path, str(exc)))
    print(f"{len(sources)} inputs, {n_frames} images/frames: {n_faces} faces, {n_empty} without a face "
          f"(listed in faces.csv with an empty face_id), {len(failures)} unreadable → {out}")
    _write_failures(out, failures)
    return 1 if failures else 0
