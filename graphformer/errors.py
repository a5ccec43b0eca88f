"""The errors graphformer reports to a user, and the exit code of each.

Both subclass :class:`ValueError`, so code (and tests) that catch
``ValueError`` keep working; the command line maps them to exit codes
(:data:`EXIT_USAGE`, :data:`EXIT_DATA`) and prints one line,
``graphformer: error: <message>``, never a traceback. Every message names what
is at fault (the file and row, the config key, the flag) and what would be
accepted. This module imports nothing from graphformer: every floor may use it.
"""
from __future__ import annotations

EXIT_DATA = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """What the user asked for cannot be done as asked: a flag or config value
    of the wrong type or range, conflicting flags, a path of the wrong kind, a
    run directory that would be overwritten. Exit code 2 (as ``argparse``)."""

    exit_code = EXIT_USAGE


class DataError(ValueError):
    """The input data cannot give the answer asked for: an unreadable or empty
    file, a bad row, an infinite target, an empty split part, no valid score,
    a checkpoint that does not fit, data changed since training. Exit code 1."""

    exit_code = EXIT_DATA


class ConfigError(UsageError):
    """A configuration value of the wrong type or range, with the section and
    key it belongs to (so the command line can name the flag or file it came
    from)."""

    def __init__(self, section: str, key: str, reason: str) -> None:
        self.section, self.key, self.reason = section, key, reason
        super().__init__(f"config key '{section}.{key}' {reason}")
