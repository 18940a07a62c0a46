"""Pluggable caption sentiment sources for EmotionCLIP's sentiment-guided loss (methods.md §2.5).

Every scorer is called as ``scorer(texts, ids=None)`` and returns ``np.float32 [N, C]`` probability rows in the
order of its ``classes`` list. EmotionCLIP used the 7-class ``j-hartmann/emotion-english-distilroberta-base``
(``hf_local`` from a local folder is the faithful choice); every other source is a documented deviation:

* ``vader`` — offline default; VADER neg/neu/pos as a coarse 3-class stand-in (only polarity, no emotions).
* ``precomputed`` — vectors stored per sample id (e.g. logits precomputed with the real model).
* ``label_distribution`` — vote / probability vectors of labelled data (e.g. FER+ 10-vote distributions).

Precomputed vectors are looked up by sample id, never by row position: EmotionCLIP's release computed its
logits for a different index file than the one it trained on, silently misaligning them (§2.9 item 12).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

EKMAN7 = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
"""Class order of j-hartmann/emotion-english-distilroberta-base (EmotionCLIP's sentiment model)."""


class SentimentScorer(ABC):
    """Maps captions (or sample ids) to emotion probability rows ``np.float32 [N, C]`` over ``classes``."""

    classes: list[str]

    @abstractmethod
    def __call__(
        self, texts: Sequence[str] | None = None, ids: Sequence[str] | None = None
    ) -> np.ndarray: ...


def _need_texts(texts: Sequence[str] | None, scorer: str) -> list[str]:
    if texts is None:
        raise ValueError(f"the {scorer} sentiment scorer needs caption texts")
    if isinstance(texts, str):
        texts = [texts]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"the {scorer} sentiment scorer needs strings; rows {bad[:5]} are not")
    return list(texts)


class VaderScorer(SentimentScorer):
    """VADER ``[neg, neu, pos]`` renormalised to sum 1; texts without scored tokens count as neutral.

    A coarse stand-in for EmotionCLIP's 7-class emotion model: it only separates polarity, so captions with
    different emotions of the same polarity (anger vs sadness) look alike to the reweighting.
    """

    classes = ["negative", "neutral", "positive"]

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: Sequence[str] | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
        rows = []
        for text in _need_texts(texts, "vader"):
            scores = self._analyzer.polarity_scores(text)
            rows.append([scores["neg"], scores["neu"], scores["pos"]])
        out = np.asarray(rows, dtype=np.float32).reshape(-1, 3)
        total = out.sum(1, keepdims=True)
        out = np.where(total > 0, out / np.maximum(total, 1e-12), np.array([0.0, 1.0, 0.0], dtype=np.float32))
        return out.astype(np.float32)


class HFClassifierScorer(SentimentScorer):
    """A local Hugging Face sequence-classification folder (e.g. j-hartmann DistilRoBERTa), softmax outputs.

    Loads with ``local_files_only``; classes come from the config's ``id2label``. Batched, no gradients.
    """

    def __init__(
        self, path: str | Path, batch_size: int = 32, max_length: int = 512, device: str = "cpu"
    ) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no Hugging Face model folder at {path} (config.json missing); download e.g. "
                "j-hartmann/emotion-english-distilroberta-base on a connected machine with "
                "`hf download ... --local-dir DIR` and pass DIR"
            )
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).to(device).eval()
        )
        id2label = self.model.config.id2label
        self.classes = [str(id2label[i]).lower() for i in range(len(id2label))]
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    def __call__(self, texts: Sequence[str] | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
        import torch

        texts = _need_texts(texts, "hf_local")
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                out.append(torch.softmax(self.model(**enc).logits.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, len(self.classes)), np.float32)


NORMALIZE = ("none", "sum", "softmax")


class PrecomputedScorer(SentimentScorer):
    """Vectors stored per sample id, from a mapping or a file (.jsonl/.json, .csv, .parquet, .npz).

    Files: JSONL/JSON/CSV/Parquet records with ``id_field`` and ``field`` (a list; in CSV a JSON list string);
    ``.npz`` with arrays ``ids`` and ``field`` (and optionally ``classes``). ``normalize``: ``none`` (rows must
    already be probabilities), ``sum`` (counts / votes), ``softmax`` (logits).
    """

    def __init__(
        self,
        source: str | Path | Mapping[str, Sequence[float]],
        field: str = "sentiment",
        id_field: str = "id",
        classes: Sequence[str] | None = None,
        normalize: str = "none",
    ) -> None:
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.source = str(source) if not isinstance(source, Mapping) else "<mapping>"
        if isinstance(source, Mapping):
            table, file_classes = {str(k): v for k, v in source.items()}, None
        else:
            table, file_classes = _read_vectors(Path(source), field, id_field)
        if not table:
            raise ValueError(f"{self.source}: no sentiment vectors found in field {field!r}")
        ids = list(table)
        rows = [np.asarray(table[i], dtype=np.float64).reshape(-1) for i in ids]
        widths = {len(row) for row in rows}
        if len(widths) != 1:
            raise ValueError(
                f"{self.source}: field {field!r} has vectors of different lengths {sorted(widths)}"
            )
        vectors = np.stack(rows)
        if not np.isfinite(vectors).all():
            bad = ids[int(np.nonzero(~np.isfinite(vectors).all(1))[0][0])]
            raise ValueError(f"{self.source}: field {field!r} of id {bad!r} contains NaN/inf")
        self.vectors = _normalize(vectors, normalize, self.source, field, ids).astype(np.float32)
        self.index = {sample_id: row for row, sample_id in enumerate(ids)}
        width = vectors.shape[1]
        self.classes = list(
            classes or file_classes or (EKMAN7 if width == 7 else [f"class_{k}" for k in range(width)])
        )
        if len(self.classes) != width:
            raise ValueError(f"{len(self.classes)} class names given for {width}-d vectors in {self.source}")

    def __call__(self, texts: Sequence[str] | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
        if ids is None:
            raise ValueError(f"precomputed sentiment ({self.source}) is looked up by sample id; pass ids=")
        missing = [str(i) for i in ids if str(i) not in self.index]
        if missing:
            raise KeyError(
                f"{len(missing)} sample ids have no precomputed sentiment in {self.source} "
                f"(first: {missing[:5]}); recompute the vectors for this manifest"
            )
        return self.vectors[[self.index[str(i)] for i in ids]]


class LabelDistributionScorer(PrecomputedScorer):
    """Label vote / probability vectors as the sentiment distribution q (e.g. FER+ votes); rows sum-normalised."""

    def __init__(
        self,
        source: str | Path | Mapping[str, Sequence[float]],
        field: str = "soft_label",
        id_field: str = "id",
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(source, field=field, id_field=id_field, classes=classes, normalize="sum")


def _normalize(vectors: np.ndarray, mode: str, source: str, field: str, ids: list[str]) -> np.ndarray:
    if mode == "softmax":
        shifted = np.exp(vectors - vectors.max(1, keepdims=True))
        return shifted / shifted.sum(1, keepdims=True)
    if (vectors < 0).any():
        bad = ids[int(np.nonzero((vectors < 0).any(1))[0][0])]
        raise ValueError(
            f"{source}: field {field!r} of id {bad!r} has negative entries; use normalize='softmax' for logits"
        )
    total = vectors.sum(1, keepdims=True)
    if mode == "sum":
        if (total <= 0).any():
            bad = ids[int(np.nonzero(total[:, 0] <= 0)[0][0])]
            raise ValueError(f"{source}: field {field!r} of id {bad!r} sums to 0 (no votes)")
        return vectors / total
    if not np.allclose(total, 1.0, atol=1e-3):
        bad = ids[int(np.nonzero(~np.isclose(total[:, 0], 1.0, atol=1e-3))[0][0])]
        raise ValueError(
            f"{source}: field {field!r} of id {bad!r} does not sum to 1; use normalize='sum' (votes) or 'softmax' (logits)"
        )
    return vectors


def _read_vectors(path: Path, field: str, id_field: str) -> tuple[dict[str, list], list[str] | None]:
    """{id: vector} from a file, with class names when the file stores them (npz ``classes``)."""
    if not path.is_file():
        raise FileNotFoundError(f"precomputed sentiment file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        data = np.load(path, allow_pickle=False)
        for key in ("ids", field):
            if key not in data:
                raise KeyError(f"{path}: array {key!r} missing (found {sorted(data.files)})")
        if len(data["ids"]) != len(data[field]):
            raise ValueError(f"{path}: {len(data['ids'])} ids but {len(data[field])} rows in {field!r}")
        pairs = zip((str(i) for i in data["ids"]), data[field], strict=True)
        classes = [str(c) for c in data["classes"]] if "classes" in data else None
        return _unique(pairs, path), classes
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = []
            for line_no, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{line_no}: malformed JSON ({err.msg})") from err
    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        records = (pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)).to_dict("records")
    else:
        raise ValueError(
            f"{path}: unsupported sentiment file type {suffix!r} (use .jsonl, .json, .csv, .parquet, .npz)"
        )
    pairs = []
    for row_no, record in enumerate(records, 1):
        if id_field not in record or field not in record:
            raise KeyError(f"{path} record {row_no}: needs fields {id_field!r} and {field!r}")
        vector = record[field]
        if isinstance(vector, str):
            try:
                vector = json.loads(vector)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} record {row_no}: field {field!r} is not a JSON list") from err
        pairs.append((str(record[id_field]), vector))
    return _unique(pairs, path), None


def _unique(pairs, path: Path) -> dict[str, list]:
    table: dict[str, list] = {}
    for sample_id, vector in pairs:
        if sample_id in table:
            raise ValueError(f"{path}: sample id {sample_id!r} appears more than once")
        table[sample_id] = vector
    return table


SCORERS = {
    "vader": VaderScorer,
    "hf_local": HFClassifierScorer,
    "precomputed": PrecomputedScorer,
    "label_distribution": LabelDistributionScorer,
}


def get_scorer(name: str, **kwargs) -> SentimentScorer:
    """Build a sentiment scorer by registry name (``vader``, ``hf_local``, ``precomputed``, ``label_distribution``)."""
    if name not in SCORERS:
        raise ValueError(f"unknown sentiment scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return SCORERS[name](**kwargs)
