"""Result records: one JSON per evaluation (evaluation.md §7), merged into tables.

A number is only comparable when its protocol is known, so each record carries the prompts verbatim, the
protocol (prompt set, aggregation, mask policy, video pooling, probe protocol and C), the weights' SHA-256, the
split-file hashes, the sample/failure counts, the package version and the git commit. The file name ends with
`record_id`, a hash of everything that changes the numbers, so two protocols never overwrite each other's record
while re-running one evaluation replaces its record; `eval table` shows each of those options as a column.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from affectclip.core.io import atomic_path, atomic_write_text

TABLE_KEYS = ("model", "weights", "benchmark", "split", "fold", "task", "prompt_set", "prompt_agg", "mask_policy",
              "video_pool", "probe_protocol", "probe_c", "n_samples", "id")
# what the record id hashes: every field that changes the numbers
ID_FIELDS = ("model", "weights", "benchmark", "data", "split", "fold", "task", "classes", "protocol")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(model: Any) -> str:
    """SHA-256 of a model's tensors (names, dtypes, shapes, values): names the weights actually evaluated, also for
    a model built from a config name (random initialisation) or converted from a foreign checkpoint."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_identity(path: str | Path | None, model: Any) -> dict[str, str | None]:
    """`{"path", "sha256", "tensors_sha256"}`: the checkpoint file (when there is one) and the evaluated tensors."""
    file = Path(path) if path is not None and Path(path).is_file() else None
    return {"path": str(file.resolve()) if file else None, "sha256": sha256_file(file) if file else None,
            "tensors_sha256": state_sha256(model)}


def git_commit(repo: str | Path | None = None) -> str | None:
    """HEAD commit of the source tree (None outside a git checkout or before the first commit)."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def make_record(
    *,
    model: str,
    benchmark: str,
    split: str,
    task: str,
    classes: Sequence[str],
    result: dict[str, Any],
    fold: int | None = None,
    weights: dict[str, str | None] | None = None,
    data: dict[str, str] | None = None,
    protocol: dict[str, Any] | None = None,
    split_files: Sequence[str | Path] = (),
    prompt_set: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the record; `result` is the output of an evaluator (metrics, prompts, failures, probe, ...).

    `weights` is `weights_identity(...)`; `data` names what was read (benchmark root, manifest paths); `protocol`
    holds every option that changes the numbers (see `ZeroShotProtocol.describe` and `eval run`)."""
    from affectclip import __version__

    record = {
        "model": model,
        "weights": weights or {"path": None, "sha256": None, "tensors_sha256": None},
        "benchmark": benchmark,
        "data": data or {},
        "split": split,
        "fold": fold,
        "task": task,
        "classes": list(classes),
        "split_file_sha256": {str(p): sha256_file(p) for p in split_files},
        "prompt_set": prompt_set,
        "n_samples": result.get("metrics", {}).get("n_samples"),
        **result,
        "protocol": protocol or result.get("protocol") or {},
        "config": config or {},
        "package_version": __version__,
        "git_commit": git_commit(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return {**record, "id": record_id(record)}


def record_id(record: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the fields that change the numbers (`ID_FIELDS`)."""
    identity = {k: record.get(k) for k in ID_FIELDS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=_json_default).encode()).hexdigest()[:12]


def fold_mean_record(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One record with the mean ± std over the per-fold records of one (model, benchmark, split, task) run.

    evaluation.md §1: DFEW/MAFW report the mean of per-fold metrics (never pooled predictions); the fold values
    stay in `per_fold`, the per-fold records stay on disk. `fold` is "mean", so the file and table row are distinct.
    """
    from affectclip.eval.metrics import aggregate_folds

    if len(records) < 2:
        raise ValueError("a fold mean needs at least two fold records")
    for key in ("model", "weights", "benchmark", "split", "task", "prompt_set", "protocol"):
        if len({json.dumps(r.get(key), sort_keys=True, default=str) for r in records}) > 1:
            raise ValueError(f"fold records differ in '{key}': {[r.get(key) for r in records]}; average one run only")
    agg = aggregate_folds([scalar_metrics(r["metrics"]) for r in records])
    n_samples = sum(int(r["metrics"].get("n_samples") or 0) for r in records)
    folds = [r.get("fold") for r in records]
    out = {k: v for k, v in records[0].items() if k not in ("probe", "timestamp")}
    out.update(
        fold="mean",
        n_samples=n_samples,
        metrics={**agg["mean"], "std": agg["std"], "n_samples": n_samples, "n_folds": len(records)},
        per_fold={"fold": folds, **agg["per_fold"], **({"probe": [r["probe"] for r in records]}
                                                       if "probe" in records[0] else {})},
        fold_convention=agg["convention"],
        failures={"count": sum((r.get("failures") or {}).get("count", 0) for r in records),
                  "examples": [e for r in records for e in (r.get("failures") or {}).get("examples", [])][:20]},
        split_file_sha256={k: v for r in records for k, v in r.get("split_file_sha256", {}).items()},
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return {**out, "id": record_id(out)}


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-") or "none"


def record_path(record: dict[str, Any], out_dir: str | Path) -> Path:
    """`{benchmark}_{split}[_fold{k}]_{model}_{task}_{id}.json` under `out_dir`: CLIP_benchmark-style names that stay
    readable, made unique per protocol by the record id."""
    fold = f"_fold{record['fold']}" if record.get("fold") is not None else ""
    model = _slug(Path(str(record["model"])).name)
    return Path(out_dir) / (f"{_slug(record['benchmark'])}_{_slug(record['split'])}{fold}_{model}_"
                            f"{_slug(record['task'])}_{record.get('id') or record_id(record)}.json")


def write_record(record: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the record atomically at `record_path` (a full disk never leaves a truncated record)."""
    path = record_path(record, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(record, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} in a result record")


def scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested scalar metrics ("4-shot.war.mean"); lists, matrices and per-class dicts stay in the JSON."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or k.startswith("n_") or k in ("per_class_recall",):
            continue
        if isinstance(v, (int, float)) and v is not None:
            out[prefix + k] = float(v)
        elif isinstance(v, dict) and k != "per_dimension":
            out.update(scalar_metrics(v, f"{prefix}{k}."))
    return out


def build_table(results_dir: str | Path) -> pd.DataFrame:
    """One row per record under `results_dir` (recursive): identity columns + every scalar metric."""
    files = sorted(Path(results_dir).rglob("*.json"))
    if not files:
        raise FileNotFoundError(f"no result JSON files under {results_dir}; run `affectclip eval run ... --output DIR` first")
    rows = []
    for f in files:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f} is not valid JSON ({exc}); delete or regenerate it") from exc
        if not isinstance(rec, dict) or "metrics" not in rec or "benchmark" not in rec:
            continue  # other JSON files (e.g. configs) living beside the results
        row = _identity_row(rec)
        row["n_failures"] = (rec.get("failures") or {}).get("count")
        row.update(scalar_metrics(rec["metrics"]))
        rows.append(row)
    if not rows:
        raise ValueError(f"no result records (JSON with 'benchmark' and 'metrics') under {results_dir}")
    table = pd.DataFrame(rows)
    table = table.drop(columns=[k for k in TABLE_KEYS if table[k].isna().all()])  # e.g. probe columns of zero-shot
    # folds are ints, "mean" (fold_mean_record) or None: sort them as text, fold-less and numbered before the mean
    return table.sort_values([k for k in ("benchmark", "model", "task", "split", "fold", "id") if k in table],
                             ignore_index=True, key=lambda col: col.map(_fold_order) if col.name == "fold" else col)


def _identity_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The table's identity columns: the record's own fields, the protocol's options, the weights' short hash."""
    protocol = rec.get("protocol") or {}
    row = {k: rec.get(k, protocol.get(k)) for k in TABLE_KEYS}
    weights = rec.get("weights") or {}
    sha = weights.get("sha256") or weights.get("tensors_sha256")
    row["weights"] = sha[:12] if sha else None
    row["prompt_set"] = rec.get("prompt_set") or protocol.get("prompts")
    row["prompt_agg"] = rec.get("prompt_agg") or protocol.get("agg")
    return row


def _fold_order(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:>4}" if isinstance(value, (int, np.integer)) else str(value)


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """Pipe table with floats at `digits` decimals (the field's reporting convention); empty cells for missing."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, path: str | Path, fmt: str = "md") -> Path:
    if fmt not in ("md", "csv"):
        raise ValueError(f"table format must be 'md' or 'csv', got '{fmt}'")
    return atomic_write_text(path, df.to_csv(index=False) if fmt == "csv" else to_markdown(df))


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per true class) as a PNG; absent classes show an empty row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(1, keepdims=True)
    size = 1.2 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in np.ndindex(cm.shape):
        ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                color="white" if np.nan_to_num(norm[i, j]) > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)
