"""Errors the command line turns into a one-line message: exit status 2 for bad input, 1 for a retryable stop."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: the message names what was wrong and what is allowed."""


class BusyError(UsageError):
    """Another process holds what this one needs (a run's search): the message names it (pid, host)."""


class ExportCheckError(UsageError):
    """A file was not written because its check failed: the exported or quantised model's outputs are not
    the ones it stands for (the message says which check and by how much); nothing was written."""


class RetryableError(Exception):
    """Work stopped for a reason that may pass (a training worker died); what is done is saved and running the
    same command again continues. The command line prints the message in one line, exit status 1."""
