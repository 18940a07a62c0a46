"""The model package's user-facing errors: each one line naming the file, tensor or input and what was expected.

Both are `UserError`s (exit code 2 on the command line) and `ValueError`s (what library callers already catch).
"""

from affectclip.core.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used as it is: names the file and the tensor or config key."""


class ShapeError(UserError, ValueError):
    """An input whose shape the model cannot take (too many frames, a mask of the wrong size)."""
