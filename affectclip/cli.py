"""The `affectclip` command.

Each package contributes its sub-commands through a `commands.py` module exposing
`register(subparsers) -> None`; handlers import heavy modules lazily so `affectclip --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from affectclip._env import apply_offline_defaults
from affectclip.core.errors import RunError, UserError

__all__ = ["RunError", "UserError", "build_parser", "main"]

COMMAND_MODULES = [
    "affectclip.train.commands",
    "affectclip.data.commands",
    "affectclip.eval.commands",
    "affectclip.infer.commands",
    "affectclip.models.commands",
    "affectclip.serve.commands",
]


def build_parser() -> argparse.ArgumentParser:
    from affectclip import __version__

    parser = argparse.ArgumentParser(prog="affectclip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"affectclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no commands yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_offline_defaults()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after an option (`train demo --output run run.epochs=3`) belong to the rest
        unknown = [e for e in extra if e.startswith("-") or "=" not in e] if hasattr(args, "overrides") else extra
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*args.overrides, *extra]
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"affectclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"affectclip {args.command}: stopped: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"affectclip {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
