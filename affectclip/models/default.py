"""Where the shipped default model lives, for every command that takes `--model default` (or no `--model`).

`models/` owns checkpoints, so the path lives here: `eval/` (below `infer/`) and `infer/` both find the default
model without an upward import.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_FILE = Path(__file__).resolve().parents[1] / "assets" / "default_model.safetensors"
DEFAULT_MODEL_NAME = "default"  # what users type: `--model default`


def default_model_path() -> Path:
    """The shipped default model (`affectclip/assets/default_model.safetensors`); a clear error when absent."""
    if not DEFAULT_MODEL_FILE.is_file():
        raise FileNotFoundError(
            f"no default model is installed (looked for {DEFAULT_MODEL_FILE}); pass a checkpoint path: "
            "affectclip.load('model.safetensors') in Python or --model model.safetensors on the command line"
        )
    return DEFAULT_MODEL_FILE
