"""FER+ manifest builder: labels.csv (10 crowd votes per FER2013 face) -> manifest rows.

Labels are recomputed from the votes (not copied from the CSV's label columns) so both published rules are
available and documented in one place (evaluation.md §2.4):
  majority   official FER+ rule: votes of 1 set to 0; the top class must hold > 50 % of the remaining votes over
             all 10 columns; blank when none does or when the winner is unknown/NF.
  plurality8 argmax of the 8 emotion votes, blank on a tie.
Blank rows are dropped. Each row keeps the 8 emotion votes, their normalised distribution (soft_label) and a
caption describing it, so the same manifest serves hard-label, soft-label and caption training.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affectclip.data.captions import caption_from_distribution, varied_caption_from_distribution

# Vote-column order of microsoft/FERPlus fer2013new.csv (evaluation.md §2.2) = the native class order.
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
VOTE_COLUMNS = tuple(f"votes_{c}" for c in (*FERPLUS_CLASSES, "unknown", "NF"))
RULES = ("majority", "plurality8")
CAPTION_STYLES = ("fixed", "varied")
ADJECTIVES = {"neutral": "neutral", "happiness": "happy", "surprise": "surprised", "sadness": "sad", "anger": "angry",
              "disgust": "disgusted", "fear": "fearful", "contempt": "contemptuous"}
# Adjectives the varied training captions use besides the canonical one: language supervision should map a
# neighbourhood of words onto each emotion, not a single word. Chosen by hand before any run that used them;
# disjoint from EVAL_SYNONYMS and from their word stems (no shared 5-letter prefix; tested).
TRAIN_SYNONYMS = {
    "neutral": ("relaxed", "composed", "impassive", "deadpan", "unemotional", "placid", "straight-faced"),
    "happiness": ("glad", "smiling", "pleased", "grinning", "beaming", "elated", "laughing"),
    "surprise": ("startled", "stunned", "wide-eyed", "taken aback", "dumbfounded", "flabbergasted", "awestruck"),
    "sadness": ("downcast", "upset", "miserable", "tearful", "heartbroken", "dejected", "despondent"),
    "anger": ("mad", "annoyed", "livid", "seething", "fuming", "hostile", "indignant"),
    "disgust": ("nauseated", "sickened", "appalled", "queasy", "squeamish", "loathing", "offended"),
    "fear": ("afraid", "alarmed", "panicked", "petrified", "horrified", "anxious", "nervous"),
    "contempt": ("smug", "mocking", "dismissive", "condescending", "derisive", "haughty", "snide"),
}
# Held-out words for the open-vocabulary evaluation (benchmarks/ferplus_eval.py): never in training captions.
EVAL_SYNONYMS = {
    "neutral": ("calm", "expressionless", "blank"), "happiness": ("joyful", "cheerful", "delighted"),
    "surprise": ("astonished", "amazed", "shocked"), "sadness": ("unhappy", "sorrowful", "gloomy"),
    "anger": ("furious", "irritated", "enraged"), "disgust": ("repulsed", "revolted", "grossed out"),
    "fear": ("scared", "terrified", "frightened"), "contempt": ("disdainful", "scornful", "sneering"),
}
TRAIN_ADJECTIVES = {c: (ADJECTIVES[c], *TRAIN_SYNONYMS[c]) for c in FERPLUS_CLASSES}


def majority_label(votes: Sequence[int]) -> int | None:
    """Official FER+ majority rule over the 10 vote columns; index into FERPLUS_CLASSES or None (dropped)."""
    kept = [v if v > 1 else 0 for v in votes]
    total = sum(kept)
    if total == 0:
        return None
    top = max(range(len(kept)), key=lambda i: kept[i])
    if kept[top] * 2 <= total or top >= len(FERPLUS_CLASSES):
        return None
    return top


def plurality8_label(votes: Sequence[int]) -> int | None:
    """Argmax of the 8 emotion votes; None on a tie for the top (or no emotion votes at all)."""
    emo = list(votes[: len(FERPLUS_CLASSES)])
    best = max(emo)
    if best == 0 or emo.count(best) > 1:
        return None
    return emo.index(best)


def read_ferplus_votes(ferplus_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of labels.csv as {"path", "split", "votes": [10 ints]}; malformed rows raise naming the line."""
    path = Path(ferplus_dir) / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; FERPLUS_DIR must contain labels.csv and images/")
    try:
        return _read_votes(path)
    except csv.Error as exc:
        raise ValueError(f"{path}: malformed CSV ({exc}; an unterminated quote?)") from None


def _read_votes(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, strict=True)
        missing = [c for c in ("path", "split", *VOTE_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        for line, row in enumerate(reader, 2):
            try:
                votes = [int(row[c]) for c in VOTE_COLUMNS]
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: vote columns must be integers") from None
            if min(votes) < 0 or max(votes) > 10**9:
                raise ValueError(f"{path}, line {line}: vote counts must be in 0-1e9")
            if not row["path"] or Path(row["path"]).is_absolute() or ".." in Path(row["path"]).parts:
                raise ValueError(f"{path}, line {line}: image path {row['path']!r} must be relative, inside "
                                 f"{path.parent}")
            out.append({"path": row["path"], "split": row["split"], "votes": votes})
    return out


def build_ferplus_manifest(ferplus_dir: str | Path, rule: str = "majority", splits: Sequence[str] = ("train", "valid"),
                           relative_to: str | Path | None = None, captions: str = "fixed",
                           ) -> tuple[list[dict[str, Any]], int]:
    """Manifest rows for the chosen splits and label rule, and the number of dropped (blank-label) images.

    relative_to: the folder the manifest will be written to; image paths are made relative to it so the manifest
    resolves from there (None = absolute paths).
    captions: "fixed" = one sentence frame ("a face showing mostly happiness, some surprise"); "varied" = one of
    several frames with noun or adjective forms per row (captions.DISTRIBUTION_TEMPLATES), for contrastive training.
    """
    if captions not in CAPTION_STYLES:
        raise ValueError(f"unknown caption style {captions!r}; choose one of {', '.join(CAPTION_STYLES)}")
    if rule not in RULES:
        raise ValueError(f"unknown FER+ rule {rule!r}; choose one of {', '.join(RULES)}")
    ferplus_dir = Path(ferplus_dir).resolve()
    rows = read_ferplus_votes(ferplus_dir)
    known = sorted({r["split"] for r in rows})
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise ValueError(f"split(s) {unknown} not in {ferplus_dir / 'labels.csv'}; available: {known}")
    pick = majority_label if rule == "majority" else plurality8_label
    base = Path(relative_to).resolve() if relative_to is not None else None
    out, dropped = [], 0
    for r in rows:
        if r["split"] not in splits:
            continue
        label = pick(r["votes"])
        if label is None:
            dropped += 1
            continue
        emo = r["votes"][: len(FERPLUS_CLASSES)]
        total = sum(emo)
        image = ferplus_dir / r["path"]
        row_id = f"ferplus-{r['split']}-{Path(r['path']).stem}"
        caption = (varied_caption_from_distribution(emo, FERPLUS_CLASSES, row_id, TRAIN_ADJECTIVES)
                   if captions == "varied"
                   else f"a face showing {caption_from_distribution(emo, FERPLUS_CLASSES)}")
        out.append({
            "id": row_id,
            "path": os.path.relpath(image, base) if base is not None else str(image),
            "label": FERPLUS_CLASSES[label],
            "split": r["split"],
            "votes": emo,
            "soft_label": [round(v / total, 6) for v in emo],
            "caption": caption,
        })
    return out, dropped
