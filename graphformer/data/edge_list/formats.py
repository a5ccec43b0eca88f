"""The edge-list file format: its rules, and what the first rows of a file say.

Every module of :mod:`graphformer.data.edge_list` reads files by these rules;
this module holds the line and field rules, delimiter and header detection
(:class:`Head`, :func:`read_head`), column selection, the shared types of a
parse (:class:`Layout`, :class:`Table`) and the number conversions both
parsers share.

File format
-----------
The rules below hold for every file :mod:`graphformer.data.edge_list` reads
(edges, node features, node labels).

* **Lines** end with ``"\\n"`` (``"\\r\\n"`` is accepted too); the text is
  UTF-8 (a leading byte-order mark is ignored). Any other character, a lone
  ``"\\r"`` or other control characters included, is ordinary text. A file
  whose name ends in ``.gz`` is gunzipped first. Line numbers in error
  messages are 1-based and count every physical line (comments, blank lines
  and the header included).
* **Blank lines** (empty, or spaces and tabs only) are ignored.
* **Comment lines** start, after optional spaces and tabs, with ``comment``
  (``"#"`` by default); they are ignored. There are no end-of-line comments:
  ``1 2 # note`` is a row of four fields.
* **Fields.** With a one-character delimiter such as ``","`` (CSV) or ``"\\t"``
  (TSV) a line is split at every delimiter and spaces and tabs around each
  field are dropped; there is no quoting, so a field cannot contain the
  delimiter. With the whitespace format (``delimiter=" "``, SNAP style) fields
  are separated by runs of spaces and tabs. ``delimiter=None`` picks ``","``
  for ``.csv`` files, ``"\\t"`` for ``.tsv`` files (``.gz`` aside), and
  otherwise ``","`` if the first non-comment line contains a comma, else the
  whitespace format.
* **Every row has the same number of fields** as the first row (the header,
  if there is one); a row with another count is an error.
* **Header.** ``header=True``: the first non-comment, non-blank line names
  the columns; ``header=False``: there is none. ``header=None`` (the default)
  decides so: the first row is a header if a column is selected by name, or
  if it reads exactly like the header
  :func:`~graphformer.data.edge_list.write_edge_list` writes
  (``source target [weight] [feature_0 ...]``), or if none of its fields is a
  number while the next row has a number in one of the same columns
  (``src dst`` above ``1 2``, or ``u v w`` above ``a b 0.5``). A file whose
  first two rows are both all text (string ids, no weights) cannot be told
  apart from a headed one: pass ``header=True`` for it. Mixed ids whose first
  edge is textual above a numeric one (``a b`` over ``1 2``) look like a
  header: pass ``header=False``.
* **Node ids** are integers (``[+-]?[0-9]+``, compared by value, so ``007``
  and ``7`` are the same node) when every node id of the edge file and the
  node files is one; otherwise every id is a string compared by its exact
  text. An empty id is an error.
* **Numbers** (weights, features) are finite decimal numbers, such as
  ``3``, ``-0.25``, ``.5`` or ``1e-3``; ``nan``, ``inf`` and values that
  overflow the requested ``dtype`` are errors.

Examples of the three formats (each file is one edge list)::

    # edges.txt (whitespace, SNAP style)
    # FromNodeId ToNodeId
    0   1
    0   2

    edges.csv               edges.tsv
    source,target,weight    src<TAB>dst
    alice,bob,0.5           7<TAB>-3
    bob,carol,1.5           -3<TAB>100000000000
"""
from __future__ import annotations

import gzip
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ...errors import DataError

Column = Union[int, str]
PathLike = Union[str, "os.PathLike[str]"]

WHITESPACE = " "  # the delimiter value that means "runs of spaces and tabs"
INT = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WHITESPACE_FIELD = re.compile(r"[^ \t]+")
_SHOWN = 80  # longest value quoted in an error message


# --------------------------------------------------------------------------- #
# Lines and fields                                                            #
# --------------------------------------------------------------------------- #

def show(value: str) -> str:
    """``repr(value)``, shortened for error messages."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 5] + "...'" + f" ({len(value)} chars)"


def _read_bytes(path: PathLike) -> bytes:
    """The file's bytes, gunzipped for ``.gz`` names, without a UTF-8 BOM."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if os.fspath(path).lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{os.fspath(path)}: not a valid gzip file ({err})") from err
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def decode(raw: bytes, name: str, first_line: int) -> str:
    """UTF-8 text of ``raw``, whose first line is line ``first_line`` of the file."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start)
        bad = raw[err.start:err.end]
        raise DataError(f"{name}, line {line}: not valid UTF-8 "
                        f"(byte {bad!r}: {err.reason})") from err


def file_suffix(name: str) -> str:
    """Lower-case extension of ``name``, ignoring a trailing ``.gz``."""
    base = name.lower()
    base = base[:-3] if base.endswith(".gz") else base
    return os.path.splitext(base)[1]


def check_delimiter(delimiter: str) -> str:
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be one character (or None to auto-detect), "
                         f"got {delimiter!r}")
    if delimiter in "\r\n+-." or delimiter.isalnum():
        raise ValueError(f"delimiter {delimiter!r} would be ambiguous: use a separator that "
                         f"cannot occur in ids and numbers, such as ',', '\\t' or ' '")
    return delimiter


def _choose_delimiter(name: str, first_line: str, delimiter: Optional[str]) -> str:
    """The delimiter to read ``name`` with (see the module docstring)."""
    if delimiter is not None:
        return check_delimiter(delimiter)
    suffix = file_suffix(name)
    if suffix == ".csv":
        return ","
    if suffix == ".tsv":
        return "\t"
    return "," if "," in first_line else WHITESPACE


DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "space": " ", "whitespace": " ", "comma": ","}


def delimiter_from_name(text: str) -> str:
    """A delimiter as a user types it on a command line: one character, or
    ``tab`` / ``space`` (whitespace, SNAP style) / ``comma`` (also ``\\t``)."""
    value = DELIMITER_NAMES.get(text.lower(), text)
    if len(value) != 1:
        raise ValueError(f"a delimiter is one character or one of {sorted(DELIMITER_NAMES)}, "
                         f"got {text!r}")
    return value


def split(line: str, delimiter: str) -> List[str]:
    """The fields of one line (without its line ending)."""
    if delimiter == WHITESPACE:
        return _WHITESPACE_FIELD.findall(line)
    return [f.strip(" \t") for f in line.split(delimiter)]


def is_skipped(line: str, comment: Optional[str]) -> bool:
    """Whether ``line`` is blank or a comment line."""
    text = line.strip(" \t")
    return not text or (comment is not None and text.startswith(comment))


def header_names(weight: bool, num_features: int) -> List[str]:
    """The column names :func:`write_edge_list` writes."""
    return (["source", "target"] + (["weight"] if weight else [])
            + [f"feature_{k}" for k in range(num_features)])


def is_written_header(fields: List[str]) -> bool:
    """Whether ``fields`` are the header :func:`write_edge_list` writes."""
    weight = len(fields) > 2 and fields[2] == "weight"
    return fields == header_names(weight, len(fields) - 2 - weight)


def _is_header(first: List[str], second: Optional[List[str]]) -> bool:
    """Header auto-detection (``header=None``) on the first two rows."""
    if is_written_header(first):
        return True
    if second is None or any(NUMBER.fullmatch(f) for f in first):
        return False
    return any(NUMBER.fullmatch(f) for f in second[:len(first)])


# --------------------------------------------------------------------------- #
# The head of a file: delimiter, header, column count                          #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Head:
    """What the first rows of a file say about the rest."""

    name: str                   # the path as given, for messages
    raw: bytes                  # the whole file
    delimiter: str              # one character; WHITESPACE means runs of spaces/tabs
    comment: Optional[str]
    names: Optional[List[str]]  # header fields, None without a header
    header_line: int            # 0 without a header
    ncols: int                  # fields per row (0: the file has no row)
    ref_line: int               # the line that fixed ncols
    ref_text: str
    first_row: List[str]        # fields of the first data row ([] if none)
    body_offset: int            # byte offset of the first data row (len(raw) if none)
    body_line: int              # line number at body_offset


def _first_rows(raw: bytes, name: str,
                comment: Optional[str]) -> List[Tuple[int, int, str]]:
    """``(line number, byte offset, text)`` of the first two non-comment,
    non-blank lines."""
    found: List[Tuple[int, int, str]] = []
    pos, line = 0, 0
    while pos < len(raw) and len(found) < 2:
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line += 1
        text = decode(raw[pos:end], name, line).removesuffix("\r")
        if not is_skipped(text, comment):
            found.append((line, pos, text))
        pos = end + 1
    return found


def read_head(path: PathLike, *, delimiter: Optional[str], header: Optional[bool],
               comment: Optional[str]) -> Head:
    return head_of_bytes(os.fspath(path), _read_bytes(path), delimiter=delimiter,
                         header=header, comment=comment)


def head_of_bytes(name: str, raw: bytes, *, delimiter: Optional[str], header: Optional[bool],
                  comment: Optional[str]) -> Head:
    """:func:`read_head` on bytes already read (gunzipped, without a BOM): the
    whole file, or its first complete lines (a streaming reader's prefix)."""
    found = _first_rows(raw, name, comment)
    delim = _choose_delimiter(name, found[0][2] if found else "", delimiter)
    rows = [split(text, delim) for _, _, text in found]
    if header is None:
        header = bool(rows) and _is_header(rows[0], rows[1] if len(rows) > 1 else None)
    header = header and bool(found)
    data = found[1:] if header else found
    ref = found[0] if found else (0, 0, "")
    return Head(name=name, raw=raw, delimiter=delim, comment=comment,
                 names=rows[0] if header else None, header_line=ref[0] if header else 0,
                 ncols=len(rows[0]) if rows else 0, ref_line=ref[0], ref_text=ref[2],
                 first_row=rows[len(rows) - len(data)] if data else [],
                 body_offset=data[0][1] if data else len(raw),
                 body_line=data[0][0] if data else 0)


def column_index(head: Head, column: Column, role: str) -> int:
    """0-based index of ``column`` (an index, or a header name)."""
    if isinstance(column, bool) or not isinstance(column, (int, str)):
        raise TypeError(f"the {role} column must be an int index or a str header name, "
                        f"got {type(column).__name__}")
    if isinstance(column, str):
        if head.names is None:
            raise ValueError(f"{head.name}: the {role} column is selected by name "
                             f"({column!r}) but the file has no header line")
        hits = [k for k, n in enumerate(head.names) if n == column]
        if len(hits) != 1:
            problem = "no column" if not hits else f"{len(hits)} columns"
            raise ValueError(f"{head.name}, line {head.header_line}: {problem} named "
                             f"{column!r} (the {role}) in the header {show(head.ref_text)}")
        return hits[0]
    if column < 0:
        raise ValueError(f"the {role} column index must be >= 0, got {column}")
    if head.ncols and column >= head.ncols:
        raise ValueError(f"{head.name}, line {head.ref_line}: column {column} ({role}) is "
                         f"missing: the row has {head.ncols} field(s): {show(head.ref_text)}")
    return column


# --------------------------------------------------------------------------- #
# What a parse fills: the columns to read, the columns read                  #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Layout:
    """Which columns to read, as ``(index, role)`` pairs; the role names the
    column in error messages."""

    ids: Tuple[Tuple[int, str], ...]      # node ids
    nums: Tuple[Tuple[int, str], ...] = ()  # numbers -> float
    texts: Tuple[Tuple[int, str], ...] = ()  # non-empty strings (labels)

    def all(self) -> Tuple[Tuple[int, str], ...]:
        return self.ids + self.nums + self.texts


@dataclass(frozen=True)
class Table:
    """The selected columns of a file, one entry per data row."""

    name: str
    ids: List[np.ndarray]      # per id column: int64, or object (str, or ints beyond int64)
    text_ids: bool             # ids are strings
    nums: Tensor               # [rows, len(layout.nums)] in the requested dtype
    texts: List[np.ndarray]    # per text column: int64 (fast path) or object str
    first_line: int
    line_numbers: Optional[np.ndarray] = None  # None: row k is on line first_line + k

    def line(self, row: int) -> int:
        """Line number of data row ``row``."""
        if self.line_numbers is None:
            return self.first_line + int(row)
        return int(self.line_numbers[row])


def cast(values: np.ndarray, dtype: torch.dtype) -> Tensor:
    """float64 numbers -> a tensor of ``dtype`` (overflow gives inf)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(dtype)


def int_array(tokens: List[str]) -> np.ndarray:
    """Integer tokens -> int64, or an object array of Python ints if one overflows."""
    values = [int(t) for t in tokens]
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return np.array(values, dtype=object)
