"""Sub-commands of ``nas``; each module has ``register(subparsers)``."""

from __future__ import annotations

import argparse

from ..errors import UsageError


def require_subcommand(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Make ``nas <group>`` given without one of its subcommands (``sub``) a one-line error naming them, exit
    status 2, as any bad input is (``nas arch``, ``nas latency``, ``nas import``)."""

    def missing(args: argparse.Namespace) -> int:
        raise UsageError(f"'{parser.prog}' needs a subcommand: {', '.join(sub.choices)} "
                         f"(see '{parser.prog} --help')")

    parser.set_defaults(handler=missing)
