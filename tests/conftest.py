"""Shared fixtures: offline environment, one torch thread per test process, paths to the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTCLIP_SHARED", REPO.parent / "shared"))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set AFFECTCLIP_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def testvectors_dir() -> Path:
    return _need(SHARED / "testvectors" / "open_clip", "open_clip test vectors")


@pytest.fixture(scope="session")
def bpe_path(testvectors_dir: Path) -> Path:
    return _need(testvectors_dir / "bpe_simple_vocab_16e6.txt.gz", "CLIP BPE merges file")


@pytest.fixture(scope="session")
def ferplus_dir() -> Path:
    return _need(SHARED / "data" / "ferplus", "FER+ data")


@pytest.fixture(scope="session")
def class_descriptions_path() -> Path:
    return _need(
        SHARED / "data" / "class_descriptions" / "class_descriptions.yml", "EmoCLIP class descriptions"
    )
