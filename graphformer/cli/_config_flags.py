"""Command-line flags built from config dataclasses' fields
(:func:`graphformer._settings.setting`): one field, one flag.

The flag of field ``batch_size`` is ``--batch-size``; its value type,
``nargs`` and choices come from the field's type hint (``int``, ``float``,
``str``, a ``Literal`` of choices, ``Optional[...]``, ``List[...]`` /
``Tuple[..., ...]`` as one or more values, ``bool`` as ``--x/--no-x``), its
help, explicit choices and metavar from the field's metadata. Every flag
defaults to ``None`` ("not given"), so the config's own default, or a config
file's value, applies unless the flag is given; the config's checks then
name the flag of a bad value (:func:`graphformer.cli.train.config_from_args`).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Iterable, List, Tuple

from .._settings import CHOICES, HELP, METAVAR, is_setting

#: flag (its ``argparse`` dest) -> (config section, key)
FlagTable = Dict[str, Tuple[str, str]]


def settings(cls: type, leave_out: Iterable[str] = ()) -> List[dataclasses.Field]:
    """The fields of the config dataclass ``cls`` that have flags, in order."""
    skip = set(leave_out)
    unknown = skip - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return [f for f in dataclasses.fields(cls) if is_setting(f) and f.name not in skip]


def config_flags(cls: type, section: str, leave_out: Iterable[str] = ()) -> FlagTable:
    """The flag table of ``cls``'s settings, as config ``section``."""
    return {f.name: (section, f.name) for f in settings(cls, leave_out)}


def add_config_flags(group: Any, cls: type, section: str,
                     leave_out: Iterable[str] = ()) -> FlagTable:
    """Add a flag to ``group`` (a parser or argument group) for every setting
    of ``cls`` but ``leave_out``; returns their flag table."""
    hints = typing.get_type_hints(cls)
    for f in settings(cls, leave_out):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name,
                           **_argument(hints[f.name], f.metadata))
    return config_flags(cls, section, leave_out)


def _argument(hint: Any, metadata: Any) -> Dict[str, Any]:
    """``add_argument``'s keywords for a field of type ``hint``."""
    kwargs: Dict[str, Any] = {"help": metadata[HELP], "default": None}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:                        # Optional[X]
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    if origin in (list, tuple):                       # List[X], Tuple[X, ...]
        kwargs["nargs"] = "+"
        hint = args[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        kwargs["choices"] = args
        hint = type(args[0])
    if hint not in (int, float, str):
        raise TypeError(f"no flag rule for a setting of type {hint}")
    if hint is not str:
        kwargs["type"] = hint
    if CHOICES in metadata:
        kwargs["choices"] = metadata[CHOICES]
    if METAVAR in metadata:
        kwargs["metavar"] = metadata[METAVAR]
    return kwargs
