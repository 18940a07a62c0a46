"""`affectclip plot RUN_DIR`: loss and validation curves of a run folder, from its log.jsonl, to one PNG."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(run_dir: str | Path) -> list[dict]:
    log = Path(run_dir) / "log.jsonl"
    if not log.exists():
        raise FileNotFoundError(f"{log} not found: is {run_dir} an affectclip run folder (written by `affectclip train`)?")
    with open(log) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training loss (and every other logged loss term) against step; validation WAR/UAR on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_uar" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    terms = sorted({k for r in train for k in r if k.startswith("loss")})
    for term in terms:
        pts = [(r["step"], r[term]) for r in train if term in r]
        ax.plot(*zip(*pts, strict=True), label=term)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if val:
        ax2 = ax.twinx()
        for key, style in (("val_war", "o-"), ("val_uar", "s--")):
            ax2.plot([r["step"] for r in val], [r[key] for r in val], style, color="tab:green", label=key)
        ax2.set_ylabel("zero-shot validation (%)")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(Path(run_dir).name)
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
