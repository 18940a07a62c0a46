"""affectclip: learning and using emotion representations from natural language.

Public API (imported lazily so that `import affectclip` stays fast):
`create_model`, `get_tokenizer`, `create_transforms`, `list_models`, `save_checkpoint`, `load`.
"""

from affectclip._env import apply_offline_defaults

apply_offline_defaults()

__version__ = "0.1.0"

_LAZY = {
    "create_model": "affectclip.models.factory",
    "get_tokenizer": "affectclip.models.factory",
    "create_transforms": "affectclip.data.transforms",
    "list_models": "affectclip.models.factory",
    "save_checkpoint": "affectclip.models.checkpoint",
    "DualEncoder": "affectclip.models.dual_encoder",
    "load": "affectclip.infer.predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'affectclip' has no attribute '{name}'")
