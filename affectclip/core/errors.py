"""Error types the command line turns into one-line messages (no traceback).

They live on the floor (`affectclip.core`) so that every package raises the very same classes and the command
line, which sits on top, catches them without any package importing `cli.py`.
"""


class UserError(Exception):
    """Bad user input (arguments, files, configs): one clear line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A config value or key that cannot be used: names the key path and what is allowed (exit code 2)."""


class RunError(RuntimeError):
    """A job that started but cannot go on (e.g. NaN loss): one clear line, exit code 1."""
