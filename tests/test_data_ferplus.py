"""FER+ manifest: both label rules reproduce the published counts and the labels shipped in labels.csv."""

from __future__ import annotations

import csv
import re
from collections import Counter

from affectclip.cli import main
from affectclip.data.ferplus import FERPLUS_CLASSES, VOTE_COLUMNS, majority_label, plurality8_label
from affectclip.data.manifest import read_manifest


def _readme_counts(ferplus_dir):
    """The README's "Counts under `label`" table: split -> {class: count, "blank": count}."""
    text = (ferplus_dir / "README.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| split | neutral"))
    names = [c.strip() for c in header.strip("|").split("|")][1:]
    counts = {}
    for line in text.splitlines():
        m = re.match(r"\| (train|valid) \|", line)
        if m:
            cells = [int(c.replace(",", "")) for c in line.strip("|").split("|")[1:]]
            counts[m.group(1)] = dict(zip(names, cells, strict=True))
    return counts


def test_rules_on_hand_made_votes():
    assert majority_label([6, 0, 1, 1, 0, 0, 0, 0, 2, 0]) == 0  # singles dropped: 6 of 8 remaining
    assert majority_label([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]) is None  # 4 of 9: no majority
    assert majority_label([0, 0, 0, 0, 0, 0, 0, 0, 8, 2]) is None  # winner is "unknown"
    assert plurality8_label([3, 3, 0, 0, 0, 0, 0, 0, 4, 0]) is None  # tie between emotions
    assert plurality8_label([1, 0, 0, 0, 0, 0, 0, 2, 7, 0]) == 7


def test_majority_counts_match_readme_and_csv(ferplus_dir, tmp_path):
    out = tmp_path / "sub" / "ferplus.jsonl"
    assert main(["data", "ferplus", str(ferplus_dir), str(out), "--splits", "train,valid"]) == 0
    manifest = read_manifest(out, check_files=False, allow_outside=True)  # images stay in the FER+ folder
    expected = _readme_counts(ferplus_dir)
    for split in ("train", "valid"):
        got = Counter(r["label"] for r in manifest.records if r["split"] == split)
        assert dict(got) == {c: expected[split][c] for c in FERPLUS_CLASSES}
    first = manifest.records[0]
    assert manifest.resolve(first["path"]).is_file()  # relative to the manifest's folder
    assert abs(sum(first["soft_label"]) - 1) < 1e-4 and len(first["votes"]) == 8
    assert first["caption"].startswith("a face showing mostly")

    with open(ferplus_dir / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            votes = [int(row[c]) for c in VOTE_COLUMNS]
            m, p = majority_label(votes), plurality8_label(votes)
            assert (FERPLUS_CLASSES[m] if m is not None else "") == row["label"]
            assert (FERPLUS_CLASSES[p] if p is not None else "") == row["label_plurality8"]


def test_unknown_split_is_a_user_error(ferplus_dir, tmp_path, capsys):
    assert main(["data", "ferplus", str(ferplus_dir), str(tmp_path / "m.jsonl"), "--splits", "test"]) == 2
    assert "available: ['train', 'valid']" in capsys.readouterr().err


def test_the_ferplus_recipe_names_the_classes_in_native_order():
    """A recipe cannot import FERPLUS_CLASSES, so its copy is checked against the one constant."""
    from affectclip.train.config import load_config

    assert load_config("ferplus").data.classes == list(FERPLUS_CLASSES)
