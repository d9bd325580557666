"""Exceptions a user can act on.

Every error that comes from bad input (a malformed config, a missing file, NaN data, a wrong shape, a
negative ε) is a :class:`SparringError`. The CLI turns it into one line on stderr (line breaks folded) and exit
status 2; library callers can catch it. The CLI's boundary (``sparring.cli.main``) treats an ``OSError`` the same
way (the user's disk: the path, the reason, what to do); any other exception is a bug in sparring: its traceback,
then a request to report it, and exit status 1.
"""

from __future__ import annotations


class SparringError(Exception):
    """Base class: the message says what was wrong and what to do."""


class ConfigError(SparringError, ValueError):
    """A configuration value (YAML or keyword argument) is invalid."""


class DataError(SparringError, ValueError):
    """Input data is missing, malformed, non-finite or inconsistent."""


class ThreatModelError(SparringError, ValueError):
    """A threat model is inconsistent with itself or with a batch (ε < 0, wrong shape, ...)."""


class RunFolderError(SparringError):
    """A run folder exists and would be overwritten, or is not a run folder."""
