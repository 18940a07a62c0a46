"""Error types the command line turns into one-line messages (no traceback).

They live in their own module so that `python -m affectclip.cli` (where cli.py runs as __main__) and code that
imports `affectclip.cli` raise and catch the very same classes.
"""


class UserError(Exception):
    """Bad user input (arguments, files, configs): one clear line, exit code 2."""


class RunError(RuntimeError):
    """A job that started but cannot go on (e.g. NaN loss): one clear line, exit code 1."""
