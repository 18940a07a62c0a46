"""The manifest: one record per sample, read alike from JSON Lines, CSV or Parquet, validated row by row.

Why one schema for all three formats: recipes, the trainer and the evaluator then never care where data came from,
and `affectclip data check` can point at the exact (row, field) a user must fix before a long run fails hours in.

Fields (`path` is required; a row also needs `caption` or `label` to be useful):
  path       image file, video file or frame folder; relative paths resolve against the manifest's folder
  caption    str, or {"global": str, "local": [str, ...], "summary": str}
  label      str or int (None/blank = unknown)          split   str            id    str (ints are converted)
  start/end  seconds (numbers, 0 <= start < end)       labels  [str | int]     fold  int or str
  soft_label, votes, sentiment   [finite numbers]       targets {name: finite number}
  boxes      [[x0, y0, x1, y1], ...] subject boxes (one box alone is accepted)
  mask       path of a subject mask image              meta    free-form object
The methods.md §4.6.1 layout (`image` + top-level `global`/`local`/`summary`) is accepted and converted.
Files stay inside the manifest's folder: a `path`/`mask` that is absolute, climbs out with `..` or is a symlink
leading out is a problem of its row unless the user opts in (`allow_outside`: `--allow-outside` on the data
commands, `data.allow_outside` in a training config), so a manifest from elsewhere cannot make a job read (or
`data shard` pack) `/etc/shadow`. CSV files may start with a UTF-8 byte-order mark; quoting is strict (an
unterminated quote is an error, not a caption that swallows the following rows).
In CSV (and Parquet string columns) list/object fields are JSON-encoded cells; a blank cell means "absent", and
an all-digit `label`/`fold` cell is read as an int. Row numbers are 1-based: the JSONL line number, or the
record's position for CSV/Parquet (CSV line = row + 1 for the header).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affectclip.core.errors import UserError
from affectclip.core.images import ImageDecodeError, image_size
from affectclip.core.paths import confined

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
FORMATS = (".jsonl", ".csv", ".parquet")
JSON_FIELDS = ("caption", "labels", "soft_label", "votes", "targets", "boxes", "sentiment", "meta")
_INT_RE = re.compile(r"^-?\d+$")
OUTSIDE_HINT = ("pass --allow-outside (config: data.allow_outside=true) to read files outside the manifest's folder "
                "on purpose")


class ManifestError(ValueError):
    """A malformed manifest row; names the file, the 1-based row and the field so the user can fix it."""

    def __init__(self, message: str, row: int | None = None, field: str | None = None, source: str = ""):
        self.row, self.field, self.message, self.source = row, field, message, source
        where = ", ".join(p for p in (f"row {row}" if row is not None else "",
                                       f"field {field!r}" if field else "") if p)
        prefix = ": ".join(p for p in (source, where) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


@dataclass(frozen=True)
class Problem:
    """One validation finding. `kind` is "schema" (the row is wrong) or "file" (the data it points to is)."""

    row: int | None
    field: str | None
    message: str
    kind: str = "schema"

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "file"
        return f"{where}, {self.field or '-'}: {self.message}"


@dataclass
class Manifest:
    """Normalised records (each with `_row`, its 1-based row number) + the folder paths resolve against."""

    records: list[dict[str, Any]]
    root: Path
    source: Path | None = None
    problems: list[Problem] = field(default_factory=list)
    allow_outside: bool = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]

    def resolve(self, rel: str, row: int | None = None, field: str = "path") -> Path:
        """A record's `path`/`mask` as a filesystem path; a `ManifestError` naming (row, field) when it leads
        outside the manifest's folder and the manifest was not read with `allow_outside=True`."""
        return resolve_path(self.root, rel, row, field, self.allow_outside, str(self.source or ""))

    def split(self, name: str) -> Manifest:
        """The records of one split (same root), e.g. manifest.split("train")."""
        return Manifest([r for r in self.records if r.get("split") == name], self.root, self.source,
                        [p for p in self.problems if p.row is None], self.allow_outside)

    def report(self) -> str:
        """A human-readable summary: counts per split, then every problem."""
        splits: dict[str, int] = {}
        for r in self.records:
            splits[str(r.get("split"))] = splits.get(str(r.get("split")), 0) + 1
        lines = [f"{self.source or self.root}: {len(self.records)} records"
                 + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(splits.items()))})" if self.records else "")]
        lines += [f"  {p}" for p in self.problems]
        lines.append(f"{len(self.problems)} problem(s)" if self.problems else "OK: no problems found")
        return "\n".join(lines)


def resolve_path(root: Path, rel: str, row: int | None = None, field: str = "path", allow_outside: bool = False,
                 source: str = "") -> Path:
    """`root / rel` (absolute `rel` kept, `~` expanded), confined to `root` unless `allow_outside` (symlinks are
    followed: a link inside the folder that leads out is outside)."""
    try:
        return confined(root, Path(rel).expanduser(), field, allow_outside)
    except UserError:
        raise ManifestError(f"{rel!r} is outside the manifest's folder {root}; {OUTSIDE_HINT}", row, field,
                            source) from None


def path_kind(path: Path) -> str:
    """"image", "video" or "frames" (a folder of frames), from the path alone; "unknown" otherwise."""
    if path.is_dir():
        return "frames"
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "video" if suffix in VIDEO_EXTENSIONS else "unknown"


# ---------------------------------------------------------------------------------------------- raw readers

def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ManifestError(f"unsupported manifest format {suffix!r}; use one of {', '.join(FORMATS)}",
                            source=str(path))
    return suffix


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((line_no, ManifestError(f"invalid JSON ({exc.msg} at column {exc.colno})", line_no)))
    return rows


def _decode_cell(name: str, value: Any, row: int) -> Any:
    """CSV/Parquet cells: blank -> absent, JSON for list/object fields, digit strings -> int for label/fold."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        return value
    if value.strip() == "":
        return None
    if name in JSON_FIELDS and value.lstrip()[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"cell is not valid JSON ({exc.msg})", row, name) from None
    if name in ("start", "end"):
        try:
            return float(value)
        except ValueError:
            raise ManifestError(f"expected a number of seconds, got {value!r}", row, name) from None
    if name in ("label", "fold") and _INT_RE.match(value.strip()):
        return int(value)
    return value


def _decode_table_row(raw: dict[str, Any], row: int) -> dict[str, Any] | ManifestError:
    out = {}
    for key, value in raw.items():
        try:
            decoded = _decode_cell(str(key), value, row)
        except ManifestError as exc:
            return exc
        if decoded is not None:
            out[str(key)] = decoded
    return out


def _read_csv(path: Path) -> list[tuple[int, Any]]:
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise become part of the first
    # column's name ("\ufeffpath"), making every row's path "missing". strict: an unterminated quote is an error
    # instead of a cell that silently swallows the following rows.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, strict=True)
        rows = []
        try:
            if reader.fieldnames is None:
                return []
            for i, raw in enumerate(reader, 1):
                if None in raw:  # more cells than header names
                    rows.append((i, ManifestError(f"{len(raw[None])} more cell(s) than header columns", i)))
                    continue
                rows.append((i, _decode_table_row({k: v for k, v in raw.items() if v is not None}, i)))
        except csv.Error as exc:
            raise ManifestError(f"malformed CSV at line {reader.line_num}: {exc} (an unterminated quote?)",
                                source=str(path)) from None
    return rows


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise ManifestError(f"cannot read Parquet file: {exc}", source=str(path)) from exc
    return [(i, _decode_table_row(raw, i)) for i, raw in enumerate(table.to_pylist(), 1)]


def read_rows(path: str | Path) -> list[tuple[int, Any]]:
    """(row number, raw row or ManifestError) pairs, before schema checks."""
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise ManifestError("manifest file not found", source=str(path))
    try:
        return {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}[fmt](path)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)) from None
    except csv.Error as exc:
        raise ManifestError(f"malformed CSV: {exc}", source=str(path)) from None


# ---------------------------------------------------------------------------------------------- schema

def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):  # JSON ints are unbounded; math.isfinite would overflow on huge ones
        return -1e300 < x < 1e300
    return isinstance(x, float) and math.isfinite(x)


def _str(value: Any, row: int, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"expected a non-empty string, got {value!r}", row, name)
    return value


def _numbers(value: Any, row: int, name: str, nonneg: bool = False) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ManifestError(f"expected a non-empty list of numbers, got {type(value).__name__}", row, name)
    for x in value:
        if not _is_number(x):
            raise ManifestError(f"expected finite numbers, found {x!r}", row, name)
        if nonneg and x < 0:
            raise ManifestError(f"expected numbers >= 0, found {x!r}", row, name)
    return [float(x) for x in value]


def _caption(value: Any, row: int) -> str | dict[str, Any]:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise ManifestError(f"expected a string or an object with global/local/summary, got {type(value).__name__}",
                            row, "caption")
    unknown = set(value) - {"global", "local", "summary"}
    if unknown:
        raise ManifestError(f"unknown caption key(s) {sorted(unknown)}; allowed: global, local, summary", row, "caption")
    if not any(value.get(k) for k in ("global", "local", "summary")):
        raise ManifestError("structured caption has no text", row, "caption")
    out: dict[str, Any] = {}
    for key in ("global", "summary"):
        v = value.get(key, "")
        if not isinstance(v, str):
            raise ManifestError(f"caption.{key} must be a string, got {type(v).__name__}", row, "caption")
        out[key] = v
    local = value.get("local", [])
    if not isinstance(local, list) or not all(isinstance(s, str) for s in local):
        raise ManifestError("caption.local must be a list of strings", row, "caption")
    out["local"] = list(local)
    return out


def _label(value: Any, row: int, name: str = "label") -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ManifestError(f"expected a class name or index, got {value!r}", row, name)
    if isinstance(value, int) and not -1 <= value < 2**31:  # JSON ints are unbounded; labels become int64 tensors
        raise ManifestError(f"class index {value} is out of range (-1 = unknown, else 0 <= index < 2^31)", row, name)
    if isinstance(value, str) and not value.strip():
        raise ManifestError("empty class name", row, name)
    return value


def _boxes(value: Any, row: int) -> list[list[float]]:
    if isinstance(value, list) and len(value) == 4 and all(_is_number(x) for x in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ManifestError("expected [[x0, y0, x1, y1], ...]", row, "boxes")
    out = []
    for box in value:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(x) for x in box)):
            raise ManifestError(f"each box must be 4 finite numbers [x0, y0, x1, y1], got {box!r}", row, "boxes")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ManifestError(f"box {box} has x1 <= x0 or y1 <= y0", row, "boxes")
        out.append([float(x) for x in box])
    return out


def _json_value(value: Any, row: int, name: str) -> Any:
    """A free-form value as stored: it must survive a JSON round trip (shards and written manifests store rows as
    JSON; a Parquet timestamp or bytes column would otherwise fail `data shard` after the check passed)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"value cannot be stored as JSON ({exc}); convert the column to text or numbers",
                            row, name) from None
    return value


def normalize_row(raw: Any, row: int) -> dict[str, Any]:
    """Check one raw row against the schema and return it with canonical types; raises ManifestError(row, field)."""
    if not isinstance(raw, dict):
        raise ManifestError(f"expected a JSON object, got {type(raw).__name__}", row)
    rec = dict(raw)
    if "path" not in rec and "image" in rec:  # methods.md §4.6.1 layout
        rec["path"] = rec.pop("image")
    parts = {k: rec.pop(k) for k in ("global", "local", "summary") if k in rec}
    if parts:
        if "caption" in rec:
            raise ManifestError("give either 'caption' or top-level global/local/summary, not both", row, "caption")
        rec["caption"] = parts
    if "path" not in rec:
        raise ManifestError("required field is missing", row, "path")
    out: dict[str, Any] = {"path": _str(rec.pop("path"), row, "path")}
    for name, value in rec.items():
        if value is None:
            continue
        if name == "caption":
            out[name] = _caption(value, row)
        elif name == "label":
            out[name] = _label(value, row)
        elif name in ("split", "mask"):
            out[name] = _str(value, row, name)
        elif name == "id":
            if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
                raise ManifestError(f"expected a non-empty string or integer, got {value!r}", row, name)
            out[name] = str(value)
        elif name == "fold":
            out[name] = _label(value, row, name)
        elif name in ("start", "end"):
            if not _is_number(value) or value < 0:
                raise ManifestError(f"expected seconds >= 0, got {value!r}", row, name)
            out[name] = float(value)
        elif name == "labels":
            if not isinstance(value, list) or not value:
                raise ManifestError("expected a non-empty list of class names or indices", row, name)
            out[name] = [_label(v, row, name) for v in value]
        elif name in ("soft_label", "votes"):
            out[name] = _numbers(value, row, name, nonneg=True)
        elif name == "sentiment":
            out[name] = _numbers(value, row, name)
        elif name == "targets":
            if not isinstance(value, dict) or not value:
                raise ManifestError("expected a non-empty object {name: number}", row, name)
            for k, v in value.items():
                if not _is_number(v):
                    raise ManifestError(f"target {k!r} must be a finite number, got {v!r}", row, name)
            out[name] = {str(k): float(v) for k, v in value.items()}
        elif name == "boxes":
            out[name] = _boxes(value, row)
        elif name == "meta":
            if not isinstance(value, dict):
                raise ManifestError(f"expected an object, got {type(value).__name__}", row, name)
            out[name] = _json_value(value, row, name)
        else:
            out[name] = _json_value(value, row, name)  # unknown fields pass through for user code
    if "start" in out and "end" in out and out["end"] <= out["start"]:
        raise ManifestError(f"end ({out['end']}) must be after start ({out['start']})", row, "end")
    if "caption" not in out and "label" not in out and "labels" not in out and "soft_label" not in out:
        raise ManifestError("row has neither a caption nor a label; add one", row, "caption")
    return out


# ---------------------------------------------------------------------------------------------- validation

def _image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) from the header, or why no reader accepts it (corrupt, not an image, a decompression bomb)."""
    try:
        return image_size(path)
    except ImageDecodeError as exc:
        return str(exc)


def find_file_problems(records: list[dict[str, Any]], root: Path, allow_outside: bool = False) -> list[Problem]:
    """Files outside `root` (unless allowed), missing data/mask files, image files whose header no image reader
    accepts (corrupt, not an image, or too large to decode), and masks whose size differs from their image (image
    rows only; only headers are read, videos are not probed)."""
    problems = []
    for rec in records:
        row = rec["_row"]
        try:
            p = resolve_path(root, rec["path"], row, "path", allow_outside)
            m = resolve_path(root, rec["mask"], row, "mask", allow_outside) if "mask" in rec else None
        except ManifestError as exc:
            problems.append(Problem(row, exc.field, exc.message, "file"))
            continue
        if not p.exists():
            problems.append(Problem(row, "path", f"file not found: {p}", "file"))
            continue
        size = _image_size(p) if path_kind(p) == "image" else None
        if isinstance(size, str):
            problems.append(Problem(row, "path", f"cannot read this image: {p} ({size.removeprefix(f'{p}: ')}); "
                                    "replace the file or drop the row", "file"))
            continue
        if m is not None:
            if not m.is_file():
                problems.append(Problem(row, "mask", f"mask file not found: {m}", "file"))
            elif size is not None:
                msize = _image_size(m)
                if isinstance(msize, str):
                    problems.append(Problem(row, "mask", msize, "file"))
                elif size != msize:
                    problems.append(Problem(row, "mask", f"mask size {msize} differs from image size {size}", "file"))
    return problems


def parse_rows(rows: list[tuple[int, Any]]) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Normalise raw rows; bad rows become problems (and are left out), duplicate ids are flagged."""
    records, problems, seen = [], [], {}
    for row, raw in rows:
        if isinstance(raw, ManifestError):
            problems.append(Problem(row, raw.field, raw.message))
            continue
        try:
            rec = normalize_row(raw, row)
        except ManifestError as exc:
            problems.append(Problem(row, exc.field, exc.message))
            continue
        if "id" in rec:
            if rec["id"] in seen:
                problems.append(Problem(row, "id", f"duplicate id {rec['id']!r} (first on row {seen[rec['id']]})"))
                continue
            seen[rec["id"]] = row
        rec["_row"] = row
        records.append(rec)
    return records, problems


def read_manifest(path: str | Path, check_files: bool = True, strict: bool = True,
                  allow_outside: bool = False) -> Manifest:
    """Read and validate a manifest.

    allow_outside: the user's explicit opt-in to rows whose files lie outside the manifest's folder (absolute
    paths, `..`, symlinks leading out); otherwise such rows are problems (check_files) and refused when read.
    strict=True raises a ManifestError naming the first bad (row, field) when any row breaks the schema (missing
    data files are kept as problems: the dataset reports them per sample instead of aborting a run).
    strict=False keeps going and lists every problem in `Manifest.problems` (what `affectclip data check` prints).
    """
    path = Path(path)
    records, problems = parse_rows(read_rows(path))
    if not records and not problems:
        problems.append(Problem(None, None, "manifest has no records"))
    if strict and problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more; run `affectclip data check {path}`)" if len(problems) > 1 else ""
        raise ManifestError(first.message + more, first.row, first.field, str(path))
    root = path.resolve().parent
    if check_files:
        problems += find_file_problems(records, root, allow_outside)
    return Manifest(records, root, path, problems, allow_outside)


def validate(path: str | Path, check_files: bool = True, allow_outside: bool = False) -> list[Problem]:
    """Every problem of a manifest file (schema and, optionally, files)."""
    return read_manifest(path, check_files=check_files, strict=False, allow_outside=allow_outside).problems


# ---------------------------------------------------------------------------------------------- writing

def write_manifest(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as .jsonl, .csv or .parquet (list/object fields JSON-encoded in CSV/Parquet cells), atomically
    (a full disk never leaves a truncated manifest under the final name). Internal keys starting with "_" are not
    written."""
    from affectclip.core.io import atomic_path

    path = Path(path)
    fmt = _format_of(path)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if fmt == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for r in clean:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            return path
        columns = list(dict.fromkeys(k for r in clean for k in r))
        encoded = [{k: json.dumps(r[k], ensure_ascii=False) if isinstance(r.get(k), (list, dict)) else r.get(k)
                    for k in columns} for r in clean]
        if fmt == ".csv":
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(encoded)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            # Columns of mixed types (e.g. int and str labels) are stored as strings.
            for k in columns:
                kinds = {type(r[k]) for r in encoded if r[k] is not None}
                if len(kinds) > 1 and kinds != {int, float}:
                    for r in encoded:
                        r[k] = None if r[k] is None else str(r[k])
            pq.write_table(pa.Table.from_pylist(encoded), tmp)
    return path
