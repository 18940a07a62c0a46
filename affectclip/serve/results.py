"""Result tables -> HTTP bodies: the same rows and columns as `affectclip predict` (JSON records or CSV)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from fastapi.responses import JSONResponse, Response


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON objects in column order; NaN / missing values become null."""
    return json.loads(df.to_json(orient="records", double_precision=15))


def table_response(df: pd.DataFrame, fmt: str, name: str, extra: dict | None = None) -> Response:
    """JSON `{"labels", "columns", "rows", ...extra}` or the CSV `affectclip predict --out x.csv` writes."""
    if fmt == "csv":
        stem = name.rsplit(".", 1)[0] or "result"
        disposition = f'attachment; filename="{_ascii(stem)}.csv"'
        return Response(df.to_csv(index=False), media_type="text/csv", headers={"Content-Disposition": disposition})
    body = {"labels": list(df.attrs.get("labels", [])), "columns": list(df.columns), "rows": records(df),
            **(extra or {})}
    return JSONResponse(body)


def embedding_lists(emb: np.ndarray) -> list[list[float] | None]:
    """Embeddings as lists of floats, None for rows without one (no face, error)."""
    return [row.tolist() if np.isfinite(row).all() else None for row in emb]


def _ascii(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80] or "result"
