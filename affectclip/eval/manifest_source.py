"""Any labelled affectclip manifest as a benchmark: `affectclip eval run --manifest M[:split] --task ...`.

The evaluated split is `--split` (or `M:split`); without one, the first of `EVAL_SPLITS` the manifest has, or every
row when its rows carry no split at all. Probes train on the `train` rows of the same manifest (or of
`--train-manifest`) and choose their C on a part carved from those rows (eval/probe.py), never on the reported split.

Classes are `--classes` (in the order the user reports them) or else the sorted distinct label names of every row,
so a class absent from the evaluated split still counts. A row that cannot be scored (a label that is not one of the
classes, no caption for retrieval, no targets for regression) is left out and counted as a failure naming its row:
one bad row never ends the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from affectclip.data.manifest import Manifest, read_manifest

EVAL_SPLITS = ("test", "valid", "val", "validation")
ALL = "all"  # the split name recorded when every row is evaluated


def parse_spec(spec: str, option: str = "--manifest") -> tuple[Path, str | None]:
    """`M` or `M:split` -> (manifest path, split or None); a file that exists under the whole name wins, so a
    file name holding ':' still works."""
    if Path(spec).is_file():
        return Path(spec), None
    head, sep, split = spec.rpartition(":")
    if sep and head and split and Path(head).is_file():
        return Path(head), split
    raise FileNotFoundError(f"{option} {spec}: manifest file not found (give a manifest path, optionally "
                            "followed by :SPLIT)")


def load(spec: str, option: str = "--manifest", allow_outside: bool = False) -> tuple[Manifest, str | None]:
    """Read the manifest that `spec` names (schema errors are one line naming the row and field); its rows stay
    inside its folder unless `allow_outside`."""
    path, split = parse_spec(spec, option)
    return read_manifest(path, check_files=False, allow_outside=allow_outside), split


def splits_of(manifest: Manifest) -> list[str]:
    return sorted({r["split"] for r in manifest.records if "split" in r})


def select_split(manifest: Manifest, split: str | None, defaults: Sequence[str] = EVAL_SPLITS) -> tuple[Manifest, str]:
    """The rows of `split` and its name; with no split, the first of `defaults` present, or every row (`all`) when
    no row has a split."""
    names = splits_of(manifest)
    if split is None:
        if not names:
            return manifest, ALL
        split = next((s for s in defaults if s in names), None)
        if split is None:
            raise ValueError(f"{manifest.source}: none of the splits {list(defaults)} among its splits {names}; "
                             f"choose one with --split or {manifest.source}:SPLIT")
    if split == ALL:
        return manifest, ALL
    rows = manifest.split(split)
    if not rows.records:
        raise ValueError(f"{manifest.source} has no rows with split '{split}'; its splits: {names or 'none'}")
    return rows, split


def manifest_classes(manifests: Sequence[Manifest], given: Sequence[str] | None) -> list[str]:
    """`given` (from --classes) or the sorted distinct label names of every row of `manifests`."""
    if given:
        given = [c.strip() for c in given]
        if any(not c for c in given) or len(set(given)) != len(given):
            raise ValueError(f"--classes must be distinct, non-empty names; got {list(given)}")
        return list(given)
    labels = [r["label"] for m in manifests for r in m.records if "label" in r]
    if any(isinstance(x, int) for x in labels):
        raise ValueError(f"{manifests[0].source}: labels are class indices; name the classes in index order with "
                         "--classes a,b,c")
    if not labels:
        raise ValueError(f"{manifests[0].source} has no `label` column; classification needs one per row "
                         "(retrieval needs captions only)")
    return sorted(set(labels))


def _problem(rec: dict[str, Any], classes: Sequence[str], need: str) -> str | None:
    """Why `rec` cannot be scored for `need` ("label", "caption" or "targets"), or None."""
    if need != "label":
        return None if need in rec else f"the row has no {need}"
    label = rec.get("label")
    if label is None:
        return "the row has no label"
    if isinstance(label, int):
        return None if 0 <= label < len(classes) else f"label index {label} is outside [0, {len(classes)})"
    return None if label in classes else f"label {label!r} is not one of the classes {list(classes)}"


def scorable(manifest: Manifest, classes: Sequence[str], need: str) -> tuple[Manifest, list[dict[str, Any]]]:
    """The rows that can be scored, and a failure entry (`row`, `path`, `error`) for each row left out."""
    keep, skipped = [], []
    for rec in manifest.records:
        problem = _problem(rec, classes, need)
        if problem is None:
            keep.append(rec)
        else:
            skipped.append({"index": None, "row": rec.get("_row"), "path": rec["path"], "error": problem})
    if not keep:
        first = skipped[0]
        raise ValueError(f"{manifest.source}: no row can be scored; row {first['row']}: {first['error']}")
    return replace(manifest, records=keep), skipped


def aligned_targets(manifests: dict[str, Manifest]) -> tuple[dict[str, Manifest], tuple[str, ...], list[dict]]:
    """For regression: every row's `targets` in one order (each dataset reads them in its first row's order, so the
    train and evaluated rows must agree); a row missing one of the names is left out and counted."""
    names = tuple(dict.fromkeys(k for m in manifests.values() for r in m.records for k in r["targets"]))
    out, skipped = {}, []
    for key, m in manifests.items():
        keep = []
        for rec in m.records:
            missing = [n for n in names if n not in rec["targets"]]
            if missing:
                skipped.append({"index": None, "row": rec.get("_row"), "path": rec["path"],
                                "error": f"the row has no target {missing[0]!r}"})
            else:
                keep.append({**rec, "targets": {n: rec["targets"][n] for n in names}})
        if not keep:
            raise ValueError(f"{m.source}: no row has every target {list(names)}")
        out[key] = replace(m, records=keep)
    return out, names, skipped
