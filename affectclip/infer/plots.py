"""Pictures of a `predict` result (`affectclip predict --plot DIR`).

* videos: one PNG per video, one panel per tracked face, each label's probability (or, with `--cosine`, its cosine
  similarity) over time;
* images: each image with its face boxes and top labels drawn on it, plus a contact sheet of all of them.

Images are re-read from their paths (the result table holds no pixels), so in-memory inputs are not drawn.
Matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from affectclip.infer.predictor import COSINE_PREFIX, label_columns

THUMB = 320  # contact-sheet cell size in pixels
MAX_FACE_PANELS = 8  # a video with more tracked faces plots the 8 seen in the most frames


def _safe_name(index: int, source: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem)[:60] or "input"
    return f"{index:03d}_{stem}"


def plot_video(df: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """Label scores over time, one panel per face (rows of one video source): the cosine similarities when the
    result has them (`predict --cosine`: they move with the face, where saturated probabilities are flat lines),
    else the probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"]
    faces = ok["face_id"].value_counts().index[:MAX_FACE_PANELS].sort_values()
    n = max(1, len(faces))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), sharex=True, squeeze=False)
    cosine = all(f"{COSINE_PREFIX}{label}" in df.columns for label in labels)
    for ax, face_id in zip(axes[:, 0], faces, strict=False):
        track = ok[ok["face_id"] == face_id].sort_values("timestamp")
        for label in labels:
            ax.plot(track["timestamp"], track[f"{COSINE_PREFIX}{label}" if cosine else label], marker=".",
                    label=label)
        ax.set_ylabel(f"face {face_id} ({'cosine' if cosine else 'probability'})")
        if not cosine:
            ax.set_ylim(0, 1)
    if not len(faces):
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", va="center", transform=axes[0, 0].transAxes)
    axes[0, 0].set_title(Path(df["source"].iloc[0]).name)
    axes[0, 0].legend(loc="upper right", fontsize="small", ncol=min(4, len(labels)))
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def annotate_image(image: np.ndarray, rows: pd.DataFrame):
    """PIL image with each face's box, face id and top label/probability drawn on it."""
    from PIL import Image, ImageDraw

    out = Image.fromarray(image)
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 250))
    for _, r in rows[rows["status"] == "ok"].iterrows():
        box = [r["x0"], r["y0"], r["x1"], r["y1"]]
        draw.rectangle(box, outline=(255, 64, 64), width=width)
        text = f"#{r['face_id']} {r['top_label']} {r['top_score']:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        y = max(0, box[1] - (bottom - top) - 2)
        draw.rectangle([box[0], y, box[0] + right - left + 4, y + bottom - top + 2], fill=(255, 64, 64))
        draw.text((box[0] + 2, y), text, fill=(255, 255, 255))
    return out


def contact_sheet(images: list, path: Path, columns: int = 4) -> Path:
    """Thumbnails of the annotated images on one grid."""
    from PIL import Image

    rows = math.ceil(len(images) / columns)
    cols = min(columns, len(images))
    sheet = Image.new("RGB", (cols * THUMB, rows * THUMB), (32, 32, 32))
    for i, img in enumerate(images):
        thumb = img.copy()
        thumb.thumbnail((THUMB, THUMB))
        sheet.paste(thumb, ((i % cols) * THUMB, (i // cols) * THUMB))
    sheet.save(path)
    return path


def plot_predictions(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the time series (videos) and annotated images + contact sheet (images) of a `predict` result."""
    from affectclip.infer.media import read_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = label_columns(df)
    written: list[Path] = []
    annotated = []
    for i, (source, rows) in enumerate(df.groupby("source", sort=False)):
        if rows["status"].str.startswith("error").all():
            continue
        name = _safe_name(i, source)
        if rows["media"].iloc[0] == "video":
            written.append(plot_video(rows, labels, out / f"{name}_scores.png"))
        elif Path(source).is_file():
            img = annotate_image(read_image(Path(source)), rows)
            img.save(out / f"{name}_annotated.png")
            written.append(out / f"{name}_annotated.png")
            annotated.append(img)
    if len(annotated) > 1:
        written.append(contact_sheet(annotated, out / "contact_sheet.png"))
    return written
