"""Errors the command line turns into a one-line message and exit status 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: the message names what was wrong and what is allowed."""


class BusyError(UsageError):
    """Another process holds what this one needs (a run's search): the message names it (pid, host)."""
