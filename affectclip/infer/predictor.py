"""End-user inference: `affectclip.load(path).predict(inputs)` -> one DataFrame row per face per frame.

Pipeline per input: stream frames (videos resampled to `fps`, never held in memory) -> detect faces -> track ids
across video frames (greedy IoU) -> aligned square crops at the model's input size -> batched `encode_image` ->
zero-shot scores against label prompts (prompt ensembling reused from `eval.zeroshot`).

**Scores.** A label's probability is softmax over labels of `cos(face, label) / T`; the default temperature is
the model's own learned one, `T = 1 / exp(logit_scale)` (CLIP ≈ 0.01), i.e. exactly the distribution the model was
trained to output. The probabilities therefore depend on which labels are offered together, and with a small T
they saturate near 0/1; to rank faces, ask for the cosine similarities themselves (`cosine=True`: one
`cos_<label>` column per label, in [-1, 1], independent of the other labels) or pass a larger `temperature`.

**Nothing is dropped.** A frame or image without a face gives one row with `status="no_face"`, empty `face_id` and
NaN scores; an input that cannot be read gives one row with `status="error: ..."` (a video failing mid-way keeps
the rows of the frames read before). Rows with faces have `status="ok"`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from affectclip.core.distributed import resolve_device
from affectclip.data.ferplus import FERPLUS_CLASSES as FERPLUS_LABELS  # the default model's labels
from affectclip.infer.media import MediaItem, discover, expected_frames, iter_item_frames
from affectclip.models.default import DEFAULT_MODEL_NAME, default_model_path

DEFAULT_PROMPTS = "expression"
TEXT_PROMPTS = "text"  # prompts="text": each label is used verbatim as its only prompt (open vocabulary)
META_COLUMNS = ("source", "media", "frame", "timestamp", "face_id", "x0", "y0", "x1", "y1", "det_score")
RESULT_COLUMNS = ("top_label", "top_score", "status")
FACE_MARGIN = 0.2  # context around the detector box in the aligned crop (align_crop's default)
INDEX_KEY = "affectclip_index"
COSINE_PREFIX = "cos_"  # predict(cosine=True): the raw cosine similarity of each label, column cos_<label>


def load(
    name_or_path: str | os.PathLike | torch.nn.Module | None = None,
    device: str | torch.device = "auto",
    detector: str = "default",
    quiet: bool = False,
    bpe_path: str | os.PathLike | None = None,
) -> EmotionModel:
    """An `EmotionModel` from one of our .safetensors checkpoints (or a foreign CLIP state dict, or a DualEncoder
    already in memory); None or "default" loads the installed default model. `detector`: haar | blazeface | mtcnn | default
    (blazeface, or haar until `affectclip assets install`). `quiet` hides the progress bar over long inputs;
    `bpe_path` points to the CLIP BPE merges file for CLIP-text models (default: the copy shipped with affectclip)."""
    from affectclip.models.factory import create_model

    if isinstance(name_or_path, torch.nn.Module):
        model, source = name_or_path, "<in-memory model>"
    else:
        path = default_model_path() if name_or_path in (None, DEFAULT_MODEL_NAME) else Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"model checkpoint not found: {path}; pass the path of a .safetensors checkpoint")
        # Inference only: with no parameter asking for gradients, a MiniLM text tower caches sentence vectors, so a
        # label set seen before (embed_text, search, repeated predict calls) is not encoded again.
        model, source = create_model(path).requires_grad_(False), str(path.resolve())
    return EmotionModel(model, resolve_device(device), detector=detector, source=source, quiet=quiet,
                        bpe_path=bpe_path)


def resolve_labels(
    labels: Sequence[str] | None, prompts: str | dict[str, list[str]] | None
) -> dict[str, list[str]]:
    """Label -> prompt texts. Labels default to the 8 FER+ classes (or the keys of a prompts dict); `prompts` is a
    prompt-set name (`eval/assets/templates.json`, 'descriptions', or 'text' = labels verbatim) or a dict."""
    from affectclip.eval.prompts import build_prompts, free_text

    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of strings, got the string {labels!r}; e.g. ['happy', 'sad']")
    if labels is None:
        labels = list(prompts) if isinstance(prompts, dict) else list(FERPLUS_LABELS)
    labels = [str(label).strip() for label in labels]
    if not labels:
        raise ValueError("no labels given; pass at least two, e.g. labels=['happy', 'sad']")
    empty = [i for i, label in enumerate(labels) if not label]
    if empty:
        raise ValueError(f"labels at positions {empty} are empty; remove them")
    folded = [label.lower() for label in labels]
    dups = sorted({label for label, key in zip(labels, folded, strict=True) if folded.count(key) > 1})
    if dups:
        raise ValueError(f"duplicate labels {dups}; each label must appear once")
    reserved = [label for label in labels if label in META_COLUMNS + RESULT_COLUMNS]
    if reserved:
        raise ValueError(f"labels {reserved} collide with output column names; rename them")
    if isinstance(prompts, dict):
        missing, extra = sorted(set(labels) - set(prompts)), sorted(set(prompts) - set(labels))
        if missing or extra:
            raise ValueError(f"prompts dict does not match the labels: no prompts for {missing}, unknown keys {extra}")
        return {label: list(prompts[label]) for label in labels}
    prompt_set = prompts or DEFAULT_PROMPTS
    return free_text(labels) if prompt_set == TEXT_PROMPTS else build_prompts(labels, prompt_set)


class EmotionModel:
    """A DualEncoder + tokenizer + preprocessing + face detector, ready for `predict`, `embed`, `search`."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        detector: str = "default",
        source: str = "",
        quiet: bool = False,
        bpe_path: str | os.PathLike | None = None,
    ) -> None:
        from affectclip.data.faces import DETECTORS
        from affectclip.data.transforms import create_transforms
        from affectclip.models.factory import get_tokenizer

        if detector != "default" and detector not in DETECTORS:
            raise ValueError(f"unknown face detector {detector!r}; choose one of default, {', '.join(DETECTORS)}")
        self.model = model.eval().to(device)
        self.device = device
        self.source = source
        self.quiet = quiet
        self.tokenizer = get_tokenizer(model, bpe_path=bpe_path)
        self.transform = create_transforms(model)
        self.image_size = self.transform.image_size
        self.detector_name = detector
        self._detector = None
        self._classifiers: dict[Any, Any] = {}

    @property
    def detector(self):
        """Built on first use: MTCNN loads weights, and `detect_faces=False` never needs a detector."""
        if self._detector is None:
            from affectclip.data.faces import get_detector

            self._detector = get_detector(self.detector_name)
        return self._detector

    @property
    def logit_scale(self) -> float:
        """s = exp(logit_scale): the temperature applied to cosine similarities before the softmax."""
        return float(self.model.logit_scale.detach().float().exp())

    # ------------------------------------------------------------------------------------------- extraction

    def _faces(self, image: np.ndarray, detect_faces: bool) -> list[tuple[tuple[float, ...], float, np.ndarray]]:
        """(box, det_score, crop) per face, left to right; the whole image as one 'face' when not detecting."""
        if not detect_faces:
            h, w = image.shape[:2]
            return [((0.0, 0.0, float(w), float(h)), math.nan, image)]
        from affectclip.data.faces import align_crop

        faces = [f for f in self.detector.detect(image) if f.box[2] > f.box[0] and f.box[3] > f.box[1]]
        faces.sort(key=lambda f: f.box[0])
        return [(f.box, f.score, align_crop(image, f, self.image_size, FACE_MARGIN)) for f in faces]

    @torch.no_grad()
    def _encode_crops(self, crops: list[torch.Tensor]) -> np.ndarray:
        x = torch.stack(crops).to(self.device)
        return self.model.encode_image(x, normalize=False).float().cpu().numpy()

    def _extract(
        self, inputs: Any, detect_faces: bool, fps: float | None, batch_size: int, quiet: bool | None,
        on_frame: Callable[[], None] | None = None,
    ) -> tuple[list[dict], np.ndarray]:
        """Rows (META_COLUMNS + status) and raw (unnormalised) image-tower features [N, D], NaN where no face.
        A progress bar over frames is drawn on a terminal (never in logs, never with `quiet`). `on_frame()` runs after
        each frame (a server's job progress / cancel point); what it raises propagates."""
        from affectclip.core.progress import progress_bar
        from affectclip.data.tracking import IoUTracker

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 (or None for every frame), got {fps}")
        items = discover(inputs)
        if detect_faces and items:
            _ = self.detector  # a detector that cannot be built is a setup error, not one error row per file
        rows: list[dict] = []
        feats: dict[int, np.ndarray] = {}
        pending: list[tuple[int, torch.Tensor]] = []

        def flush() -> None:
            for (r, _), v in zip(pending, self._encode_crops([t for _, t in pending]), strict=True):
                feats[r] = v
            pending.clear()

        total = sum(expected_frames(item, fps) or 0 for item in items) or None
        with progress_bar(total, "frames", self.quiet if quiet is None else quiet) as bar:
            for item in items:
                tracker = IoUTracker() if item.kind == "video" and detect_faces else None
                frames = iter_item_frames(item, fps)
                while True:
                    try:
                        frame, ts, image = next(frames)
                        faces = self._faces(image, detect_faces)
                    except StopIteration:
                        break
                    except Exception as exc:  # noqa: BLE001 — one unreadable input must not end the batch; the row says why
                        rows.append(_row(item, status=f"error: {exc or type(exc).__name__}"))
                        break
                    if not faces:
                        rows.append(_row(item, frame, ts, status="no_face"))
                    ids = tracker.update([f[0] for f in faces]) if tracker else range(len(faces))
                    for face_id, (box, score, crop) in zip(ids, faces, strict=True):
                        pending.append((len(rows), self.transform(crop)))
                        rows.append(_row(item, frame, ts, face_id, box, score, status="ok"))
                        if len(pending) >= batch_size:
                            flush()
                    bar.advance()
                    if on_frame is not None:
                        on_frame()
        if pending:
            flush()
        out = np.full((len(rows), self.model.embed_dim), np.nan, dtype=np.float32)
        for r, v in feats.items():
            out[r] = v
        return rows, out

    # ------------------------------------------------------------------------------------------- prediction

    def _classifier(self, labels: Sequence[str] | None, prompts: Any, agg: str):
        from affectclip.eval.zeroshot import build_classifier

        class_prompts = resolve_labels(labels, prompts)
        key = (json.dumps(class_prompts), agg)
        if key not in self._classifiers:
            self._classifiers[key] = build_classifier(
                self.model, self.tokenizer, class_prompts, agg=agg, device=str(self.device)
            )
        return self._classifiers[key]

    def predict(
        self,
        inputs: Any,
        labels: Sequence[str] | None = None,
        prompts: str | dict[str, list[str]] | None = None,
        detect_faces: bool = True,
        fps: float | None = 5.0,
        batch_size: int = 32,
        agg: str = "embedding",
        quiet: bool | None = None,
        cosine: bool = False,
        temperature: float | None = None,
        on_frame: Callable[[], None] | None = None,
    ) -> pd.DataFrame:
        """Per-face label probabilities for paths, folders, videos, PIL images or numpy arrays (see module doc).

        `labels` default to the 8 FER+ classes with the 'expression' prompt set; `prompts` is a prompt-set name,
        'text' (labels verbatim) or {label: [prompts]}; `detect_faces=False` scores each whole image as one face;
        `fps` is the video sampling rate (None = every frame); `agg` = 'embedding' or 'logit' prompt averaging;
        `temperature` replaces the model's own (1 / exp(logit_scale)) in the softmax; `cosine=True` adds the raw
        cosine similarity of each label (column `cos_<label>`, comparable across faces and label sets).
        Columns: source, media, frame, timestamp, face_id, x0, y0, x1, y1, det_score, <one probability per label>,
        [cos_<label> per label], top_label, top_score (the top probability), status.
        `on_frame()` is called after every frame read (progress / cancellation hook).
        """
        from affectclip.eval.zeroshot import zero_shot_predict

        if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        clf = self._classifier(labels, prompts, agg)  # validate labels before any decoding
        rows, feats = self._extract(inputs, detect_faces, fps, batch_size, quiet, on_frame)
        cos = np.full((len(rows), len(clf.classes)), np.nan, dtype=np.float64)
        ok = np.isfinite(feats).all(axis=1)
        if ok.any():
            f = F.normalize(torch.from_numpy(feats[ok]), dim=-1)
            cos[ok] = zero_shot_predict(f, clf, 0.0).double().numpy()  # log-scale 0: s = 1, plain cosine
        scale = self.logit_scale if temperature is None else 1.0 / temperature
        probs = np.full_like(cos, np.nan)
        probs[ok] = torch.from_numpy(cos[ok] * scale).softmax(-1).numpy()
        df = _frame(rows)
        for j, label in enumerate(clf.classes):
            df[label] = probs[:, j]
        cos_columns = [f"{COSINE_PREFIX}{label}" for label in clf.classes] if cosine else []
        for j, column in enumerate(cos_columns):
            df[column] = cos[:, j]
        df["top_label"] = pd.Series([clf.classes[j] if o else None for j, o in zip(probs.argmax(1), ok, strict=True)], dtype=object)
        df["top_score"] = np.where(ok, np.nan_to_num(probs).max(1), np.nan)
        df = df[[*META_COLUMNS, *clf.classes, *cos_columns, *RESULT_COLUMNS]]
        df.attrs["labels"] = list(clf.classes)
        return df

    def summarize(self, df: pd.DataFrame) -> pd.DataFrame:
        """Clip-level summary of a `predict` result; see `summarize`."""
        return summarize(df)

    # ------------------------------------------------------------------------------------------- embeddings

    def embed(
        self,
        inputs: Any,
        detect_faces: bool = True,
        fps: float | None = 5.0,
        batch_size: int = 32,
        clips: bool = True,
        quiet: bool | None = None,
        on_frame: Callable[[], None] | None = None,
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """(meta, L2-normalised embeddings [N, D]) with one row per face per frame (`level="face"`, NaN vectors for
        no_face/error rows) and, with `clips=True`, one row per tracked face of each video (`level="clip"`): the
        model's temporal head (mean pooling if it has none) over the track, in windows the head can hold."""
        rows, feats = self._extract(inputs, detect_faces, fps, batch_size, quiet, on_frame)
        meta = _frame(rows)
        meta["level"] = "face"
        emb = _normalize(feats)
        if clips:
            tracks = meta[(meta["media"] == "video") & (meta["status"] == "ok")].groupby(["source", "face_id"], sort=False)
            clip_rows, clip_emb = [], []
            for (source, face_id), g in tracks:
                clip_emb.append(self._pool_track(feats[g.index.to_numpy()]))
                clip_rows.append({"source": source, "media": "video", "face_id": face_id, "status": "ok",
                                  "level": "clip", "n_frames": len(g), "start": g["timestamp"].min(),
                                  "end": g["timestamp"].max()})
            if clip_rows:
                meta = pd.concat([meta, pd.DataFrame(clip_rows)], ignore_index=True)
                meta["face_id"] = meta["face_id"].astype("Int64")
                emb = np.concatenate([emb, np.stack(clip_emb)])
        return meta, emb

    @torch.no_grad()
    def _pool_track(self, raw: np.ndarray) -> np.ndarray:
        """One clip embedding from a track's raw frame features: windows of the temporal head's `max_frames`
        (position tables are finite), each pooled with padding masked, window embeddings averaged."""
        limit = getattr(self.model.temporal, "max_frames", None) or len(raw)
        x = torch.from_numpy(raw)
        windows = x.split(limit)
        padded = torch.zeros(len(windows), limit, x.shape[1])
        padding = torch.ones(len(windows), limit, dtype=torch.bool)
        for i, w in enumerate(windows):
            padded[i, : len(w)], padding[i, : len(w)] = w, False
        pooled = self.model.pool_frames(padded.to(self.device), padding_mask=padding.to(self.device)).float().cpu()
        return F.normalize(F.normalize(pooled, dim=-1).mean(0), dim=-1).numpy()

    @torch.no_grad()
    def embed_text(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings [N, D], comparable by dot product with `embed` vectors."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if not texts or bad:
            raise ValueError(f"embed_text needs non-empty strings; empty or non-string items at positions {bad}")
        chunks = [
            self.model.encode_text(self.tokenizer(texts[i : i + batch_size]).to(self.device)).float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(chunks).numpy()

    def search(
        self, index: str | os.PathLike | tuple[pd.DataFrame, np.ndarray], query: str, top: int = 10
    ) -> pd.DataFrame:
        """Rows of an embedded collection (a saved index or `(meta, emb)`) ranked by cosine to the text `query`;
        rows without an embedding (no_face, error) are never returned."""
        meta, emb = load_embeddings(index)[:2] if isinstance(index, (str, os.PathLike)) else index
        if emb.shape[1] != self.model.embed_dim:
            raise ValueError(f"index holds {emb.shape[1]}-d embeddings but the model outputs {self.model.embed_dim}-d; "
                             "search with the model that built the index")
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        q = self.embed_text([query])[0]
        valid = np.flatnonzero(np.isfinite(emb).all(axis=1))
        scores = emb[valid] @ q
        order = np.argsort(-scores, kind="stable")[:top]
        out = meta.iloc[valid[order]].reset_index(drop=True)
        out.insert(0, "score", scores[order])
        out.insert(0, "rank", np.arange(1, len(order) + 1))
        return out


# ----------------------------------------------------------------------------------------------------- tables


def _row(
    item: MediaItem,
    frame: int | None = None,
    timestamp: float = math.nan,
    face_id: int | None = None,
    box: Sequence[float] = (math.nan,) * 4,
    det_score: float = math.nan,
    status: str = "ok",
) -> dict:
    x0, y0, x1, y1 = (float(v) for v in box)
    return {"source": item.source, "media": item.kind, "frame": frame, "timestamp": float(timestamp),
            "face_id": face_id, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "det_score": float(det_score),
            "status": status}


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with nullable integer frame/face_id (empty, not NaN-as-float, for rows without them)."""
    df = pd.DataFrame(rows, columns=[*META_COLUMNS, "status"])
    for col in ("frame", "face_id"):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    return df


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def label_columns(df: pd.DataFrame) -> list[str]:
    """The score columns of a `predict` result (kept in `df.attrs`, else everything that is not a fixed column)."""
    fixed = set(META_COLUMNS + RESULT_COLUMNS)
    return list(df.attrs.get("labels")
                or [c for c in df.columns if c not in fixed and not str(c).startswith(COSINE_PREFIX)])


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean label probabilities per (source, face_id) over the frames where that face was found, with n_frames,
    start/end timestamps and the top label of the mean — the clip-level view of a video (one row per face)."""
    labels = label_columns(df)
    ok = df[df["status"] == "ok"]
    g = ok.groupby(["source", "face_id"], sort=False)
    out = g[labels].mean()
    out.insert(0, "n_frames", g.size())
    out.insert(1, "start", g["timestamp"].min())
    out.insert(2, "end", g["timestamp"].max())
    out["top_label"] = out[labels].idxmax(axis=1) if len(out) else pd.Series(dtype=object)
    out["top_score"] = out[labels].max(axis=1)
    return out.reset_index()


# ----------------------------------------------------------------------------------------------------- index files


def save_embeddings(meta: pd.DataFrame, emb: np.ndarray, path: str | os.PathLike, model_source: str = "") -> list[Path]:
    """Write an embedded collection: `.parquet` (meta columns + an `embedding` list column, model recorded in the
    schema metadata) or `.npy` (the matrix) + a `.json` sidecar (model + meta rows). Returns the files written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from affectclip.core.io import atomic_path, atomic_write_json

    path = Path(path)
    if len(meta) != len(emb):
        raise ValueError(f"meta has {len(meta)} rows but there are {len(emb)} embeddings")
    info = {"model": model_source, "embed_dim": int(emb.shape[1])}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        table = pa.Table.from_pandas(meta.reset_index(drop=True), preserve_index=False)
        flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).ravel())
        table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, int(emb.shape[1])))
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), INDEX_KEY.encode(): json.dumps(info)})
        with atomic_path(path) as tmp:  # a full disk never leaves a truncated index under the final name
            pq.write_table(table, tmp)
        return [path]
    if path.suffix == ".npy":
        sidecar = path.with_suffix(".json")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, emb.astype(np.float32))
        atomic_write_json(sidecar, {INDEX_KEY: info, "rows": json.loads(meta.to_json(orient="records"))}, indent=None)
        return [path, sidecar]
    raise ValueError(f"embeddings are written as .parquet or .npy, got '{path.name}'")


def load_embeddings(path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """(meta, embeddings, info) from a file written by `save_embeddings`; info holds the model that built it.
    A damaged or foreign file (bad JSON, missing keys, wrong types or shapes) is a `UserError` naming it."""
    from affectclip.core.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding index not found: {path}; build one with `affectclip embed`")
    try:
        meta, emb, info = _read_embeddings(path)
        if not isinstance(info, dict) or emb.ndim != 2:  # NaN rows are legal: inputs without a face
            raise ValueError("the index info is not an object, or the vectors are not a matrix")
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{path}: not a readable embedding index ({type(exc).__name__}: {exc}); re-run "
                        "`affectclip embed`") from None
    return meta, emb, info


def _read_embeddings(path: Path) -> tuple[pd.DataFrame, np.ndarray, dict]:
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(INDEX_KEY.encode())
        if raw is None or "embedding" not in table.column_names:
            raise ValueError(f"{path} is not an affectclip embedding index (no '{INDEX_KEY}' metadata / embedding column)")
        info = json.loads(raw)
        column = table.column("embedding").combine_chunks()
        emb = np.asarray(column.flatten(), dtype=np.float32).reshape(len(column), info["embed_dim"])
        return table.drop(["embedding"]).to_pandas(), emb, info
    if path.suffix == ".npy":
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise FileNotFoundError(f"{sidecar} (the row metadata of {path.name}) is missing; re-run `affectclip embed`")
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
        emb = np.load(path)
        meta = pd.DataFrame(doc["rows"])
        if emb.ndim != 2 or len(meta) != len(emb):
            raise ValueError(f"{path}: {emb.shape} embeddings do not match the {len(meta)} rows of {sidecar.name}")
        return meta, emb.astype(np.float32), doc[INDEX_KEY]
    raise ValueError(f"embedding index must be .parquet or .npy, got '{path.name}'")
