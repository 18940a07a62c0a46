"""Shared fixtures: offline environment, one torch thread per test process, paths to the shared real data."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def torchrun():
    """`torchrun(args)` runs `affectclip ARGS` as 2 CPU processes (torchrun, gloo, one thread each) and returns the
    finished process; a failure or a hang (120 s) fails the test with both ranks' output."""
    def run(args: list[str]) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "affectclip.cli", *args]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res

    return run
