"""Caption text: sentence splitting, structured captions (methods.md §4.6.1), captions from label/vote
distributions (§4.6.8), and sentiment scores of captions for manifests.

Why here: the trainer encodes global/local/summary sentences separately, so every caption source (manifest fields,
raw paragraphs, crowd votes) must end up in the same `{"global", "local": [...], "summary"}` shape.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

from affectclip.data.synthetic import PROTOTYPES, intensity_word, local_sentences

SUMMARY_MARKERS = ("Ultimately", "Overall", "In summary", "In conclusion")
# Words for a class's share of a distribution, checked in order; shares below the last threshold are not named.
SHARE_WORDS = ((0.5, "mostly"), (0.25, "some"), (0.1, "a little"))
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "Mr.", "Mrs.", "Ms.", "Dr.", "St.")
_SPLIT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at . ! ? followed by whitespace, not after common abbreviations (e.g., Dr.)."""
    if not isinstance(text, str):
        raise TypeError(f"caption text must be a string, got {type(text).__name__}")
    pieces, current = [], ""
    for part in _SPLIT_RE.split(text.strip()):
        current = f"{current} {part}" if current else part
        if not current.endswith(_ABBREVIATIONS):
            pieces.append(current.strip())
            current = ""
    if current.strip():
        pieces.append(current.strip())
    return [p for p in pieces if p]


def parse_structured(text: str, summary_markers: Sequence[str] = SUMMARY_MARKERS, max_local: int = 8,
                     ) -> dict[str, Any]:
    """Raw caption -> {"global", "local", "summary"} (methods.md §4.6.1 heuristic parser).

    First sentence -> global; the first later sentence starting with a summary marker, else the last sentence ->
    summary; the sentences in between -> local (first `max_local` kept). A one-sentence caption is both global and
    summary (the summary embedding must not be of empty text); an empty caption gives empty fields.
    """
    if max_local < 0:
        raise ValueError(f"max_local must be >= 0, got {max_local}")
    sentences = split_sentences(text)
    if not sentences:
        return {"global": "", "local": [], "summary": ""}
    rest = sentences[1:]
    summary_idx = next((i for i, s in enumerate(rest) if s.startswith(tuple(summary_markers))), len(rest) - 1)
    if not rest:
        return {"global": sentences[0], "local": [], "summary": sentences[0]}
    local = rest[:summary_idx] + rest[summary_idx + 1:]
    return {"global": sentences[0], "local": local[:max_local], "summary": rest[summary_idx]}


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def flatten_caption(caption: str | dict[str, Any]) -> str:
    """A caption as one paragraph: structured parts become capitalised sentences global, local..., summary, so
    `parse_structured(flatten_caption(c))` recovers the parts when the summary starts with a marker."""
    if isinstance(caption, str):
        return caption
    if not isinstance(caption, dict):
        raise TypeError(f"caption must be a string or a {{global, local, summary}} dict, got {type(caption).__name__}")
    parts = [caption.get("global", ""), *caption.get("local", []), caption.get("summary", "")]
    return " ".join(s for s in (_sentence(p) for p in parts) if s)


def _distribution(probs: Sequence[float], classes: Sequence[str]) -> list[float]:
    values = [float(p) for p in probs]
    if len(values) != len(classes):
        raise ValueError(f"got {len(values)} probabilities for {len(classes)} classes {list(classes)}")
    if any(not math.isfinite(p) or p < 0 for p in values):
        raise ValueError(f"probabilities/votes must be finite and >= 0, got {values}")
    total = sum(values)
    if total <= 0:
        raise ValueError("the distribution is all zeros; there is nothing to describe")
    return [p / total for p in values]


def caption_from_distribution(probs: Sequence[float], classes: Sequence[str]) -> str:
    """Describe a label distribution (probabilities or raw votes) in words, e.g. "mostly happiness, some surprise".

    Classes are listed by decreasing share with the first matching word of SHARE_WORDS (>= 0.5 "mostly",
    >= 0.25 "some", >= 0.1 "a little"); shares under 0.1 are left out; ties keep the class order.
    """
    shares = _distribution(probs, classes)
    order = sorted(range(len(classes)), key=lambda i: -shares[i])
    terms = []
    for i in order:
        word = next((w for t, w in SHARE_WORDS if shares[i] >= t), None)
        if word is None:
            break
        terms.append(f"{word} {classes[i]}")
    return ", ".join(terms)


# Phrasings for `varied_caption_from_distribution`: {nouns} = "mostly happiness, some surprise", {adjectives} =
# "mostly happy, some surprised". Several sentence frames keep a text tower from learning one template instead of
# the emotion words; none of them is an evaluation prompt template.
DISTRIBUTION_TEMPLATES = (
    "a face showing {nouns}",
    "a person who looks {adjectives}",
    "a close-up of a face with {nouns}",
    "someone looking {adjectives}",
    "the facial expression shows {nouns}",
    "a portrait of a {adjectives} person",
)


def varied_caption_from_distribution(probs: Sequence[float], classes: Sequence[str], key: str,
                                     adjectives: dict[str, str | Sequence[str]] | None = None) -> str:
    """A distribution described in one of DISTRIBUTION_TEMPLATES, chosen by a stable hash of `key` (e.g. the row
    id) so a manifest is reproducible while its captions vary across rows. `adjectives` maps class -> adjective
    form, or a list of interchangeable adjectives of which each row uses one (also chosen by the hash), so the
    text side sees a neighbourhood of words per emotion rather than one point; missing classes keep their name."""
    adjectives = adjectives or {}
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    pick, word_pick = int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")

    def adjective(c: str) -> str:
        words = adjectives.get(c, c)
        return words if isinstance(words, str) else words[word_pick % len(words)]

    nouns = caption_from_distribution(probs, classes)
    adjs = caption_from_distribution(probs, [adjective(c) for c in classes])
    return DISTRIBUTION_TEMPLATES[pick % len(DISTRIBUTION_TEMPLATES)].format(nouns=nouns, adjectives=adjs)


def structured_from_attributes(probs: Sequence[float], classes: Sequence[str]) -> dict[str, Any]:
    """A label-derived structured caption (methods.md §4.6.8): global = top class + intensity word from its share,
    local = region sentences of the top class's action-unit prototype, summary = top-2 classes.

    For classes without a prototype (not in the synthetic vocabulary) local is empty. Captions made this way
    carry no information beyond the labels: mark runs that use them `synthetic_captions=true`.
    """
    shares = _distribution(probs, classes)
    order = sorted(range(len(classes)), key=lambda i: -shares[i])
    top = classes[order[0]]
    local, _ = local_sentences(list(PROTOTYPES.get(top, {})))
    if top == "neutral":
        head = "a neutral expression"
    else:
        head = f"a {intensity_word(shares[order[0]])} expression of {top}"
    second = order[1] if len(order) > 1 and shares[order[1]] > 0 else None
    summary = f"Overall, the face shows {top}" + (f" with a hint of {classes[second]}" if second is not None else "")
    return {"global": head, "local": local, "summary": summary}


def add_sentiment(records: list[dict[str, Any]], scorer: str = "vader", **scorer_kwargs) -> list[dict[str, Any]]:
    """Copies of `records` with a `sentiment` list (the scorer's class probabilities) computed from each caption.

    Every row needs a caption: a row without one would get a meaningless score, so it is an error naming the row.
    """
    from affectclip.data.sentiment import get_scorer

    missing = [r.get("_row", i + 1) for i, r in enumerate(records) if not r.get("caption")]
    if missing:
        raise ValueError(f"rows {missing[:10]} have no caption to score; add captions or drop those rows")
    scores = get_scorer(scorer, **scorer_kwargs)([flatten_caption(r["caption"]) for r in records])
    return [{**r, "sentiment": [round(float(x), 6) for x in row]} for r, row in zip(records, scores, strict=True)]
