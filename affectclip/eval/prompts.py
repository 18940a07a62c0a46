"""Class-text builders for zero-shot classification (evaluation.md §2.3, §3.1).

Templates and descriptions are protocol, not tuning knobs, so they live as data files in `eval/assets/` and every
result records the exact texts. Class names go through one canonical vocabulary (noun forms) with an adjective
form per class, because Exp-CLIP prompts use nouns ("an expression of happiness.") while CLIP_benchmark uses
adjectives ("a face that looks happy.").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import yaml

ASSETS = Path(__file__).resolve().parent / "assets"

CANONICAL = (
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger",
    "contempt", "anxiety", "helplessness", "disappointment",
)
ADJECTIVE = {
    "neutral": "neutral", "happiness": "happy", "sadness": "sad", "surprise": "surprised", "fear": "fearful",
    "disgust": "disgusted", "anger": "angry", "contempt": "contemptuous", "anxiety": "anxious",
    "helplessness": "helpless", "disappointment": "disappointed",
}
# Native spellings (dataset folders, file codes, adverbs of compound names) -> canonical noun.
ALIASES = {
    **{a: n for n, a in ADJECTIVE.items()},
    "happy": "happiness", "joy": "happiness", "ha": "happiness", "hap": "happiness", "happily": "happiness",
    "sad": "sadness", "sa": "sadness", "sadly": "sadness",
    "surprised": "surprise", "su": "surprise", "sur": "surprise", "surprisedly": "surprise",
    "fearful": "fear", "fe": "fear", "fea": "fear", "fearfully": "fear", "scared": "fear",
    "disgusted": "disgust", "di": "disgust", "dis": "disgust", "disgustedly": "disgust",
    "angry": "anger", "an": "anger", "ang": "anger", "angrily": "anger",
    "ne": "neutral", "neu": "neutral",
}


def to_canonical(name: str) -> str:
    """Map a native class name or code to the canonical noun; names outside the vocabulary are kept (lower-cased)."""
    key = name.strip().lower()
    return key if key in CANONICAL else ALIASES.get(key, key)


def compound_components(name: str) -> list[str]:
    """Canonical components of a compound class: 'happily surprised' (RAF-DB), 'anger_disgust' (MAFW)."""
    parts = [p for p in name.replace("_", " ").split() if p]
    comps = [to_canonical(p) for p in parts]
    unknown = [p for p, c in zip(parts, comps, strict=True) if c not in CANONICAL]
    if len(comps) < 2 or unknown:
        raise ValueError(f"'{name}' is not a compound of known classes (unknown parts: {unknown or parts})")
    return comps


@lru_cache(maxsize=1)
def template_sets() -> dict[str, dict]:
    """The named template sets of `assets/templates.json` (form = noun | adjective, templates, source)."""
    with open(ASSETS / "templates.json", encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=1)
def class_descriptions() -> dict[str, str]:
    """EmoCLIP's one visual description per class (Apache-2.0, see assets/ATTRIBUTION.md)."""
    with open(ASSETS / "class_descriptions.yml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def prompt_set_names() -> list[str]:
    return [*template_sets(), "descriptions"]


def build_prompts(class_names: Sequence[str], prompt_set: str = "expression") -> dict[str, list[str]]:
    """Class name -> list of prompt texts for `prompt_set` (a template set name or 'descriptions').

    Names are first mapped to the canonical vocabulary; the set's `form` picks the noun or adjective; '{adjective}'
    inside a noun template always gets the adjective. A name outside the vocabulary is used verbatim in both forms.
    """
    if prompt_set == "descriptions":
        desc = class_descriptions()
        missing = [n for n in class_names if to_canonical(n) not in desc]
        if missing:
            raise ValueError(
                f"no EmoCLIP description for classes {missing}; descriptions exist for {sorted(desc)} — "
                "use a template prompt set for these classes"
            )
        return {n: [desc[to_canonical(n)]] for n in class_names}
    sets = template_sets()
    if prompt_set not in sets:
        raise ValueError(f"unknown prompt set '{prompt_set}'; available: {', '.join(prompt_set_names())}")
    spec = sets[prompt_set]
    out = {}
    for name in class_names:
        noun = to_canonical(name)
        adjective = ADJECTIVE.get(noun, noun)
        c = adjective if spec["form"] == "adjective" else noun
        out[name] = [t.format(c=c, adjective=adjective) for t in spec["templates"]]
    return out


def free_text(texts: Sequence[str]) -> dict[str, list[str]]:
    """Open-vocabulary classes: each user string is its own class and its only prompt."""
    if not texts or any(not t.strip() for t in texts):
        raise ValueError("free-text classes must be non-empty strings")
    return {t: [t] for t in texts}
