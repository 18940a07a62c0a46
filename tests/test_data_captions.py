"""Caption utilities: sentence splitting, §4.6.1 structured parsing, distribution captions, sentiment rows."""

from __future__ import annotations

import json

import pytest

from affectclip.cli import main
from affectclip.data.captions import (
    caption_from_distribution,
    flatten_caption,
    parse_structured,
    split_sentences,
    structured_from_attributes,
)
from affectclip.data.synthetic import make_face


def test_split_sentences_keeps_abbreviations():
    text = "She smiles, e.g. at a friend. Her brows rise! Is she surprised? Dr. Who laughs."
    assert split_sentences(text) == ["She smiles, e.g. at a friend.", "Her brows rise!", "Is she surprised?",
                                     "Dr. Who laughs."]
    assert split_sentences("  ") == []


def test_parse_structured_picks_marker_summary_and_caps_local():
    text = "A man frowns. His brows are lowered. In summary, he is angry. His lips are pressed. He glares."
    out = parse_structured(text, max_local=2)
    assert out == {"global": "A man frowns.", "summary": "In summary, he is angry.",
                   "local": ["His brows are lowered.", "His lips are pressed."]}
    assert parse_structured("One. Two. Three.")["summary"] == "Three."
    assert parse_structured("Only one.") == {"global": "Only one.", "local": [], "summary": "Only one."}


def test_flatten_then_parse_recovers_a_synthetic_caption():
    cap = make_face(5, label=4)["caption"]
    back = parse_structured(flatten_caption(cap))
    assert len(back["local"]) == len(cap["local"]) and back["summary"].startswith("Overall")
    assert back["global"].lower().rstrip(".") == cap["global"]


def test_caption_from_distribution_words_and_errors():
    classes = ["neutral", "happiness", "surprise"]
    assert caption_from_distribution([0, 7, 3], classes) == "mostly happiness, some surprise"
    assert caption_from_distribution([0.05, 0.35, 0.6], classes) == "mostly surprise, some happiness"
    assert caption_from_distribution([1, 1, 8], classes) == "mostly surprise, a little neutral, a little happiness"
    with pytest.raises(ValueError, match="3 classes"):
        caption_from_distribution([1, 2], classes)
    with pytest.raises(ValueError, match="all zeros"):
        caption_from_distribution([0, 0, 0], classes)


def test_structured_from_attributes_uses_top_class_prototype():
    classes = ["neutral", "happiness", "surprise"]
    cap = structured_from_attributes([0, 9, 1], classes)
    assert cap["global"] == "a strong expression of happiness"
    assert any("lip corner puller" in s for s in cap["local"])
    assert "hint of surprise" in cap["summary"]


def test_sentiment_command_adds_scores(tmp_path):
    rows = [{"path": "a.png", "caption": "a wonderful happy smile"},
            {"path": "b.png", "caption": {"global": "a terrible, angry scowl", "local": [], "summary": ""}}]
    src = tmp_path / "m.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "sentiment", str(src), str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    pos, neg = out[0]["sentiment"], out[1]["sentiment"]  # vader: [negative, neutral, positive]
    assert pos[2] > pos[0] and neg[0] > neg[2] and abs(sum(pos) - 1) < 1e-4
