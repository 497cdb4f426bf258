"""The ``nas`` command line.

Each sub-command lives in ``nas/commands/<name>.py`` with ``register(subparsers)``; the handler it sets
returns an exit status. Bad input (``UsageError``, an invalid arch, an unknown space) ends with one line
on stderr and exit status 2, never a traceback; so does a damaged file of ours (``DamagedFileError``) or a
path that cannot be written (``nas.io`` raises ``UsageError`` naming it). A command line argparse refuses (a
missing or malformed option) is one line too, naming the command's ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from . import hwnas_version
from .errors import RetryableError, UsageError

# Sub-command modules, in the order ``nas --help`` lists them.
COMMAND_MODULES = ("spaces", "arch", "train", "eval", "latency", "devices", "search", "run", "query", "fronts",
                   "plot", "import_ofa", "quantize")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from latency_predictors import LatencyError
    from search_spaces import ArchError, DamagedFileError, RayAddressError, UnknownSpaceError
    from supernets.training import CheckpointError, DeviceError

    # ``DamagedFileError``: every reader of a file the project wrote (tables, predictors, device records,
    # front stores) raises it with the file's path and what to do; ``CheckpointError`` the same for
    # checkpoints (damaged, or of another run). ``RayAddressError``: ``RAY_ADDRESS`` malformed, or no cluster there.
    return (UsageError, ArchError, UnknownSpaceError, LatencyError, DamagedFileError, CheckpointError, DeviceError,
            RayAddressError)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a one-line usage error: ``nas query: error: MESSAGE (see nas query --help)``, exit
    status 2. Sub-commands' parsers are of this class too (``add_subparsers`` makes its parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nas",
        description="hwnas: hardware-aware neural architecture search (once-for-all supernets, "
                    "per-device latency, Optuna Pareto fronts).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {hwnas_version()}")
    _add_global_flags(parser, False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"nas.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nas.commands.{name}":
                continue  # not built yet
            raise
        module.register(subparsers)
    for leaf in _leaf_parsers(parser):
        _add_global_flags(leaf, argparse.SUPPRESS)  # also after the command: `nas train CONFIG -v`
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress bars or progress lines: results and errors only")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="show Ray's own output on the console (default: in the run folder's logs/ray.log)")


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser that ends a command line (``nas train``, ``nas latency build``...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    if not subs:
        return [parser]
    seen: dict[int, argparse.ArgumentParser] = {}
    for action in subs:
        for child in action.choices.values():
            for leaf in _leaf_parsers(child):
                seen[id(leaf)] = leaf
    return list(seen.values())


def _cause(exc: BaseException) -> BaseException:
    """The error a Ray task or actor raised, for one wrapped in Ray's (whose text is the remote traceback)."""
    exceptions = sys.modules.get("ray.exceptions")  # only a command that used Ray can get one of its errors
    while exceptions is not None and isinstance(exc, exceptions.RayError) and \
            isinstance(getattr(exc, "cause", None), BaseException) and exc.cause is not exc:
        exc = exc.cause
    return exc


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"nas: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if args.quiet and args.verbose:  # one before the command, one after it (each parser refuses both itself)
        print("nas: error: -q/--quiet and -v/--verbose cannot be given together; give one", file=sys.stderr)
        return 2
    # ``args.stdout`` is where a command prints its result. With ``--json`` it is the only thing on stdout:
    # everything else printed meanwhile (training lines, Ray's forwarded logs) goes to stderr.
    args.stdout = sys.stdout
    # ``args.progress``: whether a command shows progress (bars, per-batch lines); -q and --no-progress turn it off.
    args.progress = not (args.quiet or getattr(args, "no_progress", False))
    # The command's warnings one line each, no source line; put back afterwards (main runs in tests' processes too).
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        if getattr(args, "json", False):
            with contextlib.redirect_stdout(sys.stderr):
                return int(args.handler(args) or 0)
        return int(args.handler(args) or 0)
    except _user_error_types() as exc:  # also Ray's error for one raised in a task (a subclass of both)
        print(f"nas: error: {_cause(exc)}", file=sys.stderr)
        return 2
    except RetryableError as exc:
        print(f"nas: error: {_cause(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a reader that stopped early (`nas spaces --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # Ray's error for one of ours that it could not re-raise as a subclass
        cause = _cause(exc)
        if cause is exc or not isinstance(cause, (*_user_error_types(), RetryableError)):
            raise
        print(f"nas: error: {cause}", file=sys.stderr)
        return 1 if isinstance(cause, RetryableError) else 2
    except KeyboardInterrupt:
        print("nas: interrupted; finished work is saved, run the same command again to continue",
              file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
