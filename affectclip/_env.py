"""Process-wide defaults that keep affectclip offline and predictable.

Imported first by the package: our machines (and many of our users') have no route to model hubs, and a hub
request that is not told so retries for about a minute before failing. Users can still override each variable.
"""

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}


def apply_offline_defaults() -> None:
    """Set the offline environment variables unless the user already chose a value."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
