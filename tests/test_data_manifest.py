"""Manifest schema: the three formats read alike, problems name (row, field), fuzzed rows never crash the reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from affectclip.cli import main
from affectclip.data.manifest import (
    ManifestError,
    normalize_row,
    read_manifest,
    validate,
    write_manifest,
)

ROWS = [
    {
        "id": "a",
        "path": "img/a.png",
        "caption": "a happy face",
        "label": "happiness",
        "split": "train",
        "votes": [8, 2],
        "targets": {"valence": 0.5},
    },
    {
        "id": "b",
        "path": "img/b.png",
        "caption": {"global": "g", "local": ["l1", "l2"], "summary": "s"},
        "label": 3,
        "split": "test",
        "boxes": [[0, 0, 4, 4]],
        "sentiment": [0.1, -0.2],
        "mask": "img/b_mask.png",
    },
    {
        "id": "c",
        "path": "clip.mp4",
        "label": "anger",
        "split": "train",
        "start": 1.0,
        "end": 2.5,
        "labels": ["anger", "disgust"],
        "fold": 2,
    },
]


def _images(root, size=(8, 8), mask_size=(8, 8)):
    (root / "img").mkdir(exist_ok=True)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((*size[::-1], 3), np.uint8)).save(root / "img" / f"{name}.png")
    Image.fromarray(np.zeros(mask_size[::-1], np.uint8)).save(root / "img" / "b_mask.png")
    (root / "clip.mp4").write_bytes(b"")


@pytest.mark.parametrize("fmt", [".jsonl", ".csv", ".parquet"])
def test_formats_round_trip_to_the_same_records(tmp_path, fmt):
    _images(tmp_path)
    m = read_manifest(write_manifest(ROWS, tmp_path / f"m{fmt}"))
    assert m.problems == []
    recs = [{k: v for k, v in r.items() if k != "_row"} for r in m.records]
    expected = [normalize_row(r, i) for i, r in enumerate(ROWS, 1)]
    assert recs == expected
    assert m.resolve(recs[0]["path"]) == tmp_path / "img" / "a.png"
    assert recs[1]["caption"]["local"] == ["l1", "l2"] and recs[2]["start"] == 1.0


def test_methods_461_layout_is_converted():
    rec = normalize_row({"image": "x.png", "global": "g", "local": ["l"], "summary": "s", "label": "fear"}, 1)
    assert rec["path"] == "x.png" and rec["caption"] == {"global": "g", "local": ["l"], "summary": "s"}


def test_validate_reports_each_problem_with_row_and_field(tmp_path):
    _images(tmp_path, mask_size=(4, 4))
    lines = [
        json.dumps(ROWS[0]),
        "{not json",
        json.dumps({"path": "img/a.png", "label": True}),
        json.dumps({"id": "a", "path": "img/a.png", "label": "x"}),
        json.dumps({"path": "missing.png", "label": "x"}),
        json.dumps({"label": "x"}),
        json.dumps({"path": "img/a.png", "label": "x", "soft_label": [0.5, float("nan")]}),
        json.dumps(ROWS[1]),
        json.dumps({"path": "img/a.png", "label": "x", "start": 3, "end": 1}),
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    found = {(p.row, p.field) for p in validate(path)}
    assert found == {
        (2, None),
        (3, "label"),
        (4, "id"),
        (5, "path"),
        (6, "path"),
        (7, "soft_label"),
        (8, "mask"),
        (9, "end"),
    }
    with pytest.raises(ManifestError, match=r"row 2.*invalid JSON.*and 5 more"):
        read_manifest(path)


def test_data_check_command_exit_codes(tmp_path, capsys):
    _images(tmp_path)
    good = write_manifest(ROWS, tmp_path / "good.csv")
    assert main(["data", "check", str(good)]) == 0
    assert "3 records" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"path": "nope.png", "label": "x"}) + "\n")
    assert main(["data", "check", str(bad)]) == 1
    assert "row 1, path: file not found" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "absent.jsonl")]) == 2
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(json.dumps({"path": "corrupt.png", "label": "x"}) + "\n")
    assert main(["data", "check", str(corrupt)]) == 1
    assert "row 1, path: cannot read this image" in capsys.readouterr().out


def test_unsupported_format_is_a_clear_error(tmp_path):
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="unsupported manifest format"):
        read_manifest(tmp_path / "m.txt")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "path",
        "caption",
        "label",
        "split",
        "id",
        "start",
        "end",
        "labels",
        "soft_label",
        "votes",
        "targets",
        "boxes",
        "mask",
        "sentiment",
        "fold",
        "meta",
        "image",
        "global",
        "local",
        "summary",
        "other",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(field_names, json_values, max_size=8) | json_values)
def test_fuzzed_rows_raise_only_manifest_errors_naming_the_row(raw):
    try:
        normalize_row(raw, 7)
    except ManifestError as exc:
        assert exc.row == 7 and "row 7" in str(exc)
        assert exc.field is None or exc.field in {
            "path",
            "caption",
            "label",
            "split",
            "id",
            "start",
            "end",
            "labels",
            "soft_label",
            "votes",
            "targets",
            "boxes",
            "mask",
            "sentiment",
            "fold",
            "meta",
        }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(field_names, st.text(max_size=6) | st.integers(), max_size=5), max_size=4))
def test_fuzzed_csv_files_never_crash(tmp_path, rows):
    path = tmp_path / "fuzz.csv"
    cols = sorted({k for r in rows for k in r}) or ["path"]
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    m = read_manifest(path, check_files=False, strict=False)
    assert all(p.row is None or 1 <= p.row <= len(rows) for p in m.problems)
