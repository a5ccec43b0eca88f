"""Config fields that carry their command-line flag.

A config dataclass field made with :func:`setting` holds, beside its default,
what its flag needs: the help text and, where the type does not say it, the
choices and metavar. ``graphformer.cli`` builds the flags from these fields
(name ``--batch-size`` for ``batch_size``, type, ``nargs`` and choices from
the type hint, ``--x/--no-x`` for a bool), so a new setting is one field.
A plain field (no help) has no flag: data-derived and internal settings.

Shared below every floor (like ``_checks.py``): the model configs and the
training configs both use it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

#: the metadata keys of a setting
HELP, CHOICES, METAVAR = "help", "choices", "metavar"


def setting(default: Any = dataclasses.MISSING, *, help: str,
            default_factory: Any = dataclasses.MISSING,
            choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None) -> Any:
    """A dataclass field with a command-line flag.

    Args:
        default, default_factory: as :func:`dataclasses.field`.
        help: the flag's help text (say the default where it helps: the flag
            itself defaults to "not given", so the config's default applies).
        choices: the values the flag accepts, when the type hint is not a
            ``Literal`` that says so (a ``Literal``'s values are its choices).
        metavar: the value's name in the usage line.
    """
    if not help or not help.strip():
        raise ValueError("a setting needs its help text")
    metadata = {HELP: help}
    if choices is not None:
        metadata[CHOICES] = tuple(choices)
    if metavar is not None:
        metadata[METAVAR] = metavar
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata=metadata)


def is_setting(f: dataclasses.Field) -> bool:
    """Whether the field ``f`` has a flag (was made by :func:`setting`)."""
    return HELP in f.metadata
