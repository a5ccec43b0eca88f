"""Edge-list files (CSV, TSV, SNAP-style whitespace) <-> PyG graphs.

:func:`read_edge_list` turns an edge-list file, and optionally a node-feature
file and a node-label file, into a :class:`torch_geometric.data.Data`;
:func:`write_edge_list` writes a graph back with its original node ids.

File format
-----------
The rules below hold for every file this module reads (edges, node features,
node labels).

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
  if it reads exactly like the header :func:`write_edge_list` writes
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

Reading is vectorised: pandas' C parser reads the whole file when it can
vouch that its result is the one the rules above give (integer or string ids,
no blank or comment lines after the first data row, no byte pandas treats
specially), and a careful line-by-line pass with the same rules reads
anything else, so both give the same graph and only the careful pass raises,
with the file, line and value of the first malformed row.

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

import csv
import gzip
import io
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from graphformer._checks import check_edge_index, check_node_range

__all__ = ["read_edge_list", "write_edge_list"]

Column = Union[int, str]
PathLike = Union[str, "os.PathLike[str]"]

WHITESPACE = " "  # the delimiter value that means "runs of spaces and tabs"
_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WHITESPACE_FIELD = re.compile(r"[^ \t]+")
_SHOWN = 80  # longest value quoted in an error message
_PANDAS_SPECIAL = (b"\x00", b"\x0b", b"\x0c")  # bytes pandas' C parser treats unlike ours


# --------------------------------------------------------------------------- #
# Lines and fields                                                            #
# --------------------------------------------------------------------------- #

def _show(value: str) -> str:
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
            raise ValueError(f"{os.fspath(path)}: not a valid gzip file ({err})") from err
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def _decode(raw: bytes, name: str, first_line: int) -> str:
    """UTF-8 text of ``raw``, whose first line is line ``first_line`` of the file."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start)
        bad = raw[err.start:err.end]
        raise ValueError(f"{name}, line {line}: not valid UTF-8 "
                         f"(byte {bad!r}: {err.reason})") from err


def _suffix(name: str) -> str:
    """Lower-case extension of ``name``, ignoring a trailing ``.gz``."""
    base = name.lower()
    base = base[:-3] if base.endswith(".gz") else base
    return os.path.splitext(base)[1]


def _check_delimiter(delimiter: str) -> str:
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
        return _check_delimiter(delimiter)
    suffix = _suffix(name)
    if suffix == ".csv":
        return ","
    if suffix == ".tsv":
        return "\t"
    return "," if "," in first_line else WHITESPACE


def _split(line: str, delimiter: str) -> List[str]:
    """The fields of one line (without its line ending)."""
    if delimiter == WHITESPACE:
        return _WHITESPACE_FIELD.findall(line)
    return [f.strip(" \t") for f in line.split(delimiter)]


def _is_skipped(line: str, comment: Optional[str]) -> bool:
    """Whether ``line`` is blank or a comment line."""
    text = line.strip(" \t")
    return not text or (comment is not None and text.startswith(comment))


def _header_names(weight: bool, num_features: int) -> List[str]:
    """The column names :func:`write_edge_list` writes."""
    return (["source", "target"] + (["weight"] if weight else [])
            + [f"feature_{k}" for k in range(num_features)])


def _is_written_header(fields: List[str]) -> bool:
    weight = len(fields) > 2 and fields[2] == "weight"
    return fields == _header_names(weight, len(fields) - 2 - weight)


def _is_header(first: List[str], second: Optional[List[str]]) -> bool:
    """Header auto-detection (``header=None``) on the first two rows."""
    if _is_written_header(first):
        return True
    if second is None or any(_NUMBER.fullmatch(f) for f in first):
        return False
    return any(_NUMBER.fullmatch(f) for f in second[:len(first)])


# --------------------------------------------------------------------------- #
# The head of a file: delimiter, header, column count                          #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class _Head:
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
        text = _decode(raw[pos:end], name, line).removesuffix("\r")
        if not _is_skipped(text, comment):
            found.append((line, pos, text))
        pos = end + 1
    return found


def _read_head(path: PathLike, *, delimiter: Optional[str], header: Optional[bool],
               comment: Optional[str]) -> _Head:
    name = os.fspath(path)
    raw = _read_bytes(path)
    found = _first_rows(raw, name, comment)
    delim = _choose_delimiter(name, found[0][2] if found else "", delimiter)
    rows = [_split(text, delim) for _, _, text in found]
    if header is None:
        header = bool(rows) and _is_header(rows[0], rows[1] if len(rows) > 1 else None)
    header = header and bool(found)
    data = found[1:] if header else found
    ref = found[0] if found else (0, 0, "")
    return _Head(name=name, raw=raw, delimiter=delim, comment=comment,
                 names=rows[0] if header else None, header_line=ref[0] if header else 0,
                 ncols=len(rows[0]) if rows else 0, ref_line=ref[0], ref_text=ref[2],
                 first_row=rows[len(rows) - len(data)] if data else [],
                 body_offset=data[0][1] if data else len(raw),
                 body_line=data[0][0] if data else 0)


def _column(head: _Head, column: Column, role: str) -> int:
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
                             f"{column!r} (the {role}) in the header {_show(head.ref_text)}")
        return hits[0]
    if column < 0:
        raise ValueError(f"the {role} column index must be >= 0, got {column}")
    if head.ncols and column >= head.ncols:
        raise ValueError(f"{head.name}, line {head.ref_line}: column {column} ({role}) is "
                         f"missing: the row has {head.ncols} field(s): {_show(head.ref_text)}")
    return column


# --------------------------------------------------------------------------- #
# The body: rows -> columns                                                    #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class _Layout:
    """Which columns to read, as ``(index, role)`` pairs; the role names the
    column in error messages."""

    ids: Tuple[Tuple[int, str], ...]      # node ids
    nums: Tuple[Tuple[int, str], ...] = ()  # numbers -> float
    texts: Tuple[Tuple[int, str], ...] = ()  # non-empty strings (labels)

    def all(self) -> Tuple[Tuple[int, str], ...]:
        return self.ids + self.nums + self.texts


@dataclass(frozen=True)
class _Table:
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


def _read_body(head: _Head, layout: _Layout, *, dtype: torch.dtype,
               ids_as_text: bool) -> _Table:
    """The rows of the file: the vectorised parser when it can vouch for the
    whole file, else the careful line-by-line pass (same result, precise errors)."""
    table = _parse_fast(head, layout, dtype, ids_as_text)
    return table if table is not None else _parse_slow(head, layout, dtype, ids_as_text)


def _fast_parsable(head: _Head, body: bytes, rows: int) -> bool:
    """Whether pandas splits ``body`` into exactly the rows and fields of the
    careful pass (no blank or comment lines inside, one field count)."""
    if len(head.first_row) != head.ncols:
        return False  # the first data row is already malformed
    if not body or body.startswith(b"\xef\xbb\xbf") or any(c in body for c in _PANDAS_SPECIAL):
        return False  # pandas drops a leading BOM, ends lines at NUL, skips \v \f around numbers
    if body.count(b"\r") != body.count(b"\r\n"):
        return False  # pandas ends lines at a lone CR
    if head.comment is not None:
        mark = head.comment.encode("utf-8")
        if b"\n" + mark in body or ((b"\n " in body or b"\n\t" in body) and re.search(
                b"\n[ \t]+" + re.escape(mark), body)):
            return False  # comment lines between data rows
    if head.delimiter == WHITESPACE:
        return True  # short rows show up as empty fields, checked on the frame
    return body.count(head.delimiter.encode("utf-8")) == rows * (head.ncols - 1)


def _unpadded(body: bytes, delimiter: str) -> bool:
    """No field has spaces or tabs around it (pandas keeps them in text fields,
    the careful pass strips them); always true for the whitespace format."""
    if delimiter == WHITESPACE:
        return True
    d = delimiter.encode("utf-8")
    for pad in (b" ", b"\t"):
        if pad != d and (body.startswith(pad) or body.endswith(pad) or any(
                piece in body for piece in (pad + d, d + pad, b"\n" + pad, pad + b"\n",
                                            pad + b"\r"))):
            return False
    return True


def _pandas_rows(head: _Head, body: bytes, layout: _Layout, rows: int, text: bool):
    """pandas' C parser on ``body``: numbers as float64, ids and texts as int64
    when ``text`` is False (other dtypes are refused by the caller) or as str
    objects; None if pandas complains or the frame is not ``rows x ncols``."""
    import pandas as pd

    token = object if text else None  # None: inferred
    wanted = [(c, token) for c, _ in layout.ids + layout.texts]
    wanted += [(c, np.float64) for c, _ in layout.nums]
    if len({c for c, _ in wanted}) != len(set(wanted)):
        return None  # a column used both for ids and for numbers
    dtypes: dict = {c: object for c in range(head.ncols)}  # unused columns: any text
    dtypes.update(wanted)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = pd.read_csv(io.BytesIO(body), header=None, engine="c", encoding="utf-8",
                             sep=r"\s+" if head.delimiter == WHITESPACE else head.delimiter,
                             dtype={c: dt for c, dt in dtypes.items() if dt is not None},
                             na_filter=False, quoting=csv.QUOTE_NONE, skip_blank_lines=False,
                             low_memory=False)
    except Exception:  # any complaint: the careful pass will name the line
        return None
    if df.shape != (rows, head.ncols):
        return None
    if head.delimiter == WHITESPACE and any(
            df[c].dtype == object and (df[c].to_numpy() == "").any() for c in range(head.ncols)):
        return None  # a short row, padded by pandas with empty fields
    return df


def _parse_fast(head: _Head, layout: _Layout, dtype: torch.dtype,
                ids_as_text: bool) -> Optional[_Table]:
    """pandas' C parser on the data rows, or None when the file has anything the
    careful pass must look at (which then gives the same result, or the error)."""
    body = head.raw[head.body_offset:]
    rows = body.count(b"\n") + (not body.endswith(b"\n"))
    if not _fast_parsable(head, body, rows):
        return None
    tokens = [c for c, _ in layout.ids + layout.texts]
    if any(not _INT.fullmatch(head.first_row[c]) for c, _ in layout.ids):
        ids_as_text = True  # known from the first row: spare pandas the integer attempt
    df = None if ids_as_text else _pandas_rows(head, body, layout, rows, text=False)
    if df is None and not ids_as_text:
        return None
    text_ids = ids_as_text or any(df[c].dtype != np.int64 for c, _ in layout.ids)
    text_texts = ids_as_text or any(df[c].dtype != np.int64 for c, _ in layout.texts)
    as_text = df
    if text_ids or text_texts:
        if not _unpadded(body, head.delimiter):
            return None
        as_text = _pandas_rows(head, body, layout, rows, text=True)
        if as_text is None or any((as_text[c].to_numpy() == "").any() for c in tokens):
            return None  # empty ids and labels are errors, named by the careful pass
        df = as_text if df is None else df
    ids = [(as_text if text_ids else df)[c].to_numpy(object if text_ids else np.int64)
           for c, _ in layout.ids]
    if text_ids and not ids_as_text and all(_INT.fullmatch(t) for col in ids for t in col):
        return None  # integers pandas cannot hold (beyond int64, "1.0" is not one)
    nums = _cast(np.stack([df[c].to_numpy(np.float64) for c, _ in layout.nums], axis=1)
                 if layout.nums else np.zeros((rows, 0)), dtype)
    if not bool(torch.isfinite(nums).all()):
        return None
    return _Table(name=head.name, ids=ids, text_ids=text_ids, nums=nums,
                  texts=[(as_text if text_texts else df)[c].to_numpy(
                      object if text_texts else np.int64) for c, _ in layout.texts],
                  first_line=head.body_line)


def _cast(values: np.ndarray, dtype: torch.dtype) -> Tensor:
    """float64 numbers -> a tensor of ``dtype`` (overflow gives inf)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(dtype)


def _row_error(head: _Head, layout: _Layout, line: int, text: str, found: int) -> ValueError:
    """The error for a row with ``found`` fields instead of ``head.ncols``."""
    missing = [(c, role) for c, role in layout.all() if c >= found]
    where = (f"{head.name}, line {line}: expected {head.ncols} field(s) (as on line "
             f"{head.ref_line}), found {found}")
    if missing:
        c, role = min(missing)
        return ValueError(f"{where}: column {c} ({role}) is missing in {_show(text)}")
    return ValueError(f"{where}: inconsistent column count in {_show(text)}")


def _number(field: str, name: str, line: int, column: int, role: str) -> float:
    if not field:
        raise ValueError(f"{name}, line {line}: empty {role} in column {column}")
    if not _NUMBER.fullmatch(field):
        raise ValueError(f"{name}, line {line}: non-numeric {role} {_show(field)} in column "
                         f"{column} (numbers must be finite decimals such as 1, -0.5, 2e-3)")
    return float(field)


def _parse_slow(head: _Head, layout: _Layout, dtype: torch.dtype,
                ids_as_text: bool) -> _Table:
    """Line by line; raises a ValueError naming the file, line and value of the
    first malformed row."""
    name, delimiter, comment = head.name, head.delimiter, head.comment
    lines = _decode(head.raw[head.body_offset:], name, head.body_line).split("\n")
    ids: List[List[str]] = [[] for _ in layout.ids]
    texts: List[List[str]] = [[] for _ in layout.texts]
    nums: List[List[float]] = []
    line_numbers: List[int] = []
    for k, text in enumerate(lines):
        text = text.removesuffix("\r")
        if _is_skipped(text, comment):
            continue
        line = head.body_line + k
        fields = _split(text, delimiter)
        if len(fields) != head.ncols:
            raise _row_error(head, layout, line, text, len(fields))
        for (c, role), out in zip(layout.ids + layout.texts, ids + texts):
            if not fields[c]:
                raise ValueError(f"{name}, line {line}: empty {role} in column {c}: {_show(text)}")
            out.append(fields[c])
        nums.append([_number(fields[c], name, line, c, role) for c, role in layout.nums])
        line_numbers.append(line)
    values = _cast(np.array(nums, dtype=np.float64).reshape(len(nums), len(layout.nums)), dtype)
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        row, j = bad[0].tolist()
        c, role = layout.nums[j]
        field = _split(lines[line_numbers[row] - head.body_line].removesuffix("\r"), delimiter)[c]
        raise ValueError(f"{name}, line {line_numbers[row]}: {role} {_show(field)} in column "
                         f"{c} overflows {dtype}")
    text_ids = ids_as_text or not all(_INT.fullmatch(v) for col in ids for v in col)
    return _Table(name=name,
                  ids=[np.array(col, dtype=object) if text_ids else _int_array(col) for col in ids],
                  text_ids=text_ids, nums=values,
                  texts=[np.array(col, dtype=object) for col in texts],
                  first_line=head.body_line, line_numbers=np.array(line_numbers, dtype=np.int64))


def _int_array(tokens: List[str]) -> np.ndarray:
    """Integer tokens -> int64, or an object array of Python ints if one overflows."""
    values = [int(t) for t in tokens]
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return np.array(values, dtype=object)


# --------------------------------------------------------------------------- #
# Graph assembly                                                              #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class _Source:
    """A file to read: where, and which columns."""

    head: _Head
    layout: _Layout


def _read_tables(sources: List[_Source], dtype: torch.dtype) -> List[_Table]:
    """Read every file; if some have string ids, read the others' ids as strings
    too (ids are integers only when all of them are)."""
    tables = [_read_body(s.head, s.layout, dtype=dtype, ids_as_text=False) for s in sources]
    if any(t.text_ids for t in tables):
        tables = [t if t.text_ids else _read_body(s.head, s.layout, dtype=dtype, ids_as_text=True)
                  for s, t in zip(sources, tables)]
    return tables


def _factorize(tables: List[_Table]) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Index the nodes by first appearance: edge rows in file order (source
    before target), then the node files' rows. Returns the unique ids and, per
    table, the node index of each row ([rows, 2] for the edges, [rows] else)."""
    import pandas as pd

    edges, others = tables[0], tables[1:]
    parts = [np.stack(edges.ids, axis=1).reshape(-1)] + [t.ids[0] for t in others]
    if any(p.dtype == object for p in parts):
        parts = [p.astype(object) for p in parts]
    codes, uniques = pd.factorize(np.concatenate(parts), sort=False)
    codes = codes.astype(np.int64, copy=False)
    bounds = np.cumsum([0] + [len(p) for p in parts])
    per_table = [codes[bounds[0]:bounds[1]].reshape(-1, 2)]
    per_table += [codes[a:b] for a, b in zip(bounds[1:-1], bounds[2:])]
    return np.asarray(uniques), per_table


def _node_ids(uniques: np.ndarray) -> Union[Tensor, List[int], List[str]]:
    """Original ids in node order: a long tensor for int64 ids, else a list."""
    if uniques.dtype == object:
        return uniques.tolist()
    return torch.from_numpy(uniques.astype(np.int64))


class _Origins:
    """Where each node is first mentioned, for error messages."""

    def __init__(self, uniques: np.ndarray, tables: List[_Table], codes: List[np.ndarray]):
        self.uniques, self.tables, self.codes = uniques, tables, codes

    def id(self, node: int) -> str:
        value = self.uniques[node]
        return repr(value if isinstance(value, str) else int(value))

    def where(self, node: int) -> str:
        for table, codes in zip(self.tables, self.codes):
            rows = np.flatnonzero((codes == node).reshape(len(codes), -1).any(axis=1))
            if rows.size:
                return f"line {table.line(rows[0])} of {table.name}"
        raise AssertionError(f"node {node} comes from no row")


def _check_node_rows(table: _Table, codes: np.ndarray, num_nodes: int, num_edge_nodes: int,
                     what: str, extra_nodes: str, origins: _Origins) -> None:
    """Each node has exactly one row in a node file; with ``extra_nodes='error'``
    no row names a node without edges."""
    if extra_nodes == "error" and codes.size and codes.max() >= num_edge_nodes:
        row = int(np.argmax(codes >= num_edge_nodes))
        raise ValueError(f"{table.name}, line {table.line(row)}: node id "
                         f"{origins.id(codes[row])} appears in no edge of "
                         f"{origins.tables[0].name} (extra_nodes='error')")
    order = np.argsort(codes, kind="stable")
    repeat = np.flatnonzero(codes[order][1:] == codes[order][:-1])
    if repeat.size:
        k = repeat[np.argmin(order[repeat + 1])]
        first, second = int(order[k]), int(order[k + 1])
        raise ValueError(f"{table.name}, lines {table.line(first)} and {table.line(second)}: "
                         f"duplicate {what} rows for node {origins.id(codes[first])}")
    present = np.zeros(num_nodes, dtype=bool)
    present[codes] = True
    missing = np.flatnonzero(~present)
    if missing.size:
        node = int(missing[0])
        more = f" (and {missing.size - 1} more nodes)" if missing.size > 1 else ""
        raise ValueError(f"{table.name}: node {origins.id(node)} has no {what} row; it "
                         f"appears on {origins.where(node)}{more}")


def _labels(table: _Table) -> Tuple[Tensor, Optional[List[str]]]:
    """Label column -> (long labels, class names or None for integer labels)."""
    column = table.texts[0]
    if column.dtype == np.int64:
        return torch.tensor(column, dtype=torch.long), None
    tokens = column.tolist()
    if all(_INT.fullmatch(t) for t in tokens):
        values = _int_array(tokens)
        if values.dtype == object:
            row = next(r for r, v in enumerate(tokens) if not -2**63 <= int(v) < 2**63)
            raise ValueError(f"{table.name}, line {table.line(row)}: label {_show(tokens[row])} "
                             f"does not fit in int64")
        return torch.from_numpy(values), None
    names = sorted(set(tokens))
    index = {n: k for k, n in enumerate(names)}
    return torch.tensor([index[t] for t in tokens], dtype=torch.long), names


def _undirected(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For each edge, in order: its index, followed by ``-1 - index`` when its
    reverse must be added (not a self-loop, reverse not listed)."""
    n = int(max(src.max(), dst.max())) + 1 if src.size else 1
    listed = src * n + dst
    mirror = (src != dst) & ~np.isin(dst * n + src, listed)
    edges = np.arange(src.size, dtype=np.int64)
    take = np.repeat(edges, 1 + mirror)
    slots = np.cumsum(1 + mirror) - 1  # last slot of each edge's group
    take[slots[mirror]] = -1 - edges[mirror]
    return take


def _feature_columns(features: Optional[Sequence[Column]]) -> List[Column]:
    """``features`` as a list (a lone str would otherwise be read as characters)."""
    if features is None:
        return []
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise TypeError(f"features must be a list of columns, got {type(features).__name__}")
    return list(features)


def _edge_layout(head: _Head, source: Column, target: Column, weight: Optional[Column],
                 features: List[Column]) -> _Layout:
    nums = [] if weight is None else [(_column(head, weight, "weight"), "weight")]
    nums += [(_column(head, f, "feature"), "feature") for f in features]
    return _Layout(ids=((_column(head, source, "source"), "source"),
                        (_column(head, target, "target"), "target")), nums=tuple(nums))


def _node_source(path: PathLike, kind: str, *, delimiter: Optional[str],
                 header: Optional[bool], comment: Optional[str]) -> _Source:
    """A node feature (``kind='feature'``) or label file: id in column 0, then
    the features / the label."""
    head = _read_head(path, delimiter=delimiter, header=header, comment=comment)
    if kind == "feature" and head.ncols == 1:
        raise ValueError(f"{head.name}, line {head.ref_line}: a node feature file needs a node "
                         f"id and at least one feature column, found 1 field")
    if kind == "label" and head.ncols not in (0, 2):
        raise ValueError(f"{head.name}, line {head.ref_line}: a node label file has 2 columns "
                         f"(node id, label), found {head.ncols}: {_show(head.ref_text)}")
    role = "node feature" if kind == "feature" else "label"
    rest = tuple((c, role) for c in range(1, max(head.ncols, 2)))
    ids = ((0, "node id"),)
    return _Source(head, _Layout(ids=ids, nums=rest) if kind == "feature"
                   else _Layout(ids=ids, texts=rest))


def _check_options(comment: Optional[str], extra_nodes: str, dtype: torch.dtype,
                   header: Optional[bool], node_header: Optional[bool]) -> None:
    if comment is not None and (not isinstance(comment, str) or not comment
                                or "\n" in comment or "\r" in comment):
        raise ValueError(f"comment must be a non-empty one-line string or None, got {comment!r}")
    if extra_nodes not in ("add", "error"):
        raise ValueError(f"extra_nodes must be 'add' or 'error', got {extra_nodes!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    for flag, name in ((header, "header"), (node_header, "node_header")):
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be True, False or None, got {flag!r}")


DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "space": " ", "whitespace": " ", "comma": ","}


def delimiter_from_name(text: str) -> str:
    """A delimiter as a user types it on a command line: one character, or
    ``tab`` / ``space`` (whitespace, SNAP style) / ``comma`` (also ``\\t``)."""
    value = DELIMITER_NAMES.get(text.lower(), text)
    if len(value) != 1:
        raise ValueError(f"a delimiter is one character or one of {sorted(DELIMITER_NAMES)}, "
                         f"got {text!r}")
    return value


def read_edge_list(path: PathLike, *, delimiter: Optional[str] = None,
                   header: Optional[bool] = None, source: Column = 0, target: Column = 1,
                   weight: Optional[Column] = None,
                   features: Optional[Sequence[Column]] = None, directed: bool = True,
                   comment: Optional[str] = "#",
                   node_features: Optional[PathLike] = None,
                   node_labels: Optional[PathLike] = None,
                   node_header: Optional[bool] = None, extra_nodes: str = "add",
                   dtype: torch.dtype = torch.float32) -> Data:
    """Read an edge-list file (CSV, TSV or whitespace) into a PyG ``Data``.

    The file rules (delimiters, comments, header detection, id and number
    syntax) are in the module docstring of :mod:`graphformer.data.edge_list`.
    Each data row is one edge; nothing is skipped but blank and comment lines,
    and any malformed row raises a ``ValueError`` naming the file, the line
    and the offending value.

    Parameters
    ----------
    path : str or os.PathLike
        The edge file (``.gz`` is gunzipped).
    delimiter : str, optional
        ``","``, ``"\\t"``, ``" "`` (runs of spaces and tabs, SNAP style) or
        another single character. ``None`` detects it from the extension
        (``.csv``, ``.tsv``) or from the first data line. Applies to the node
        files too (each auto-detected on its own when ``None``).
    header : bool, optional
        Whether the first non-comment line is a header. ``None`` detects it
        (see the module docstring); it is ``True`` when a column is selected
        by name.
    source, target : int or str
        Column of the source (row 0 of ``edge_index``) and target (row 1)
        node ids: a 0-based index or a header name.
    weight : int or str, optional
        Column of the edge weight, read into ``data.edge_weight`` ([E]).
    features : list of int or str, optional
        Columns of the edge features, read into ``data.edge_attr`` ([E, F]).
    directed : bool
        ``True`` keeps the edges as listed, in file order. ``False`` makes the
        graph undirected: every listed edge ``(u, v)`` keeps its place and is
        followed by its reverse ``(v, u)``, which gets the same weight and
        features, unless ``u == v`` (self-loop) or ``(v, u)`` is itself
        listed somewhere in the file, in which case that line supplies the
        reverse direction with its own weight and features. Nothing is
        deduplicated: a line listed twice gives two copies of each direction.
    comment : str, optional
        Lines starting with it (after spaces/tabs) are ignored; ``None``: no
        comments.
    node_features : str or os.PathLike, optional
        A file ``node_id, f_1, ..., f_F`` (same format rules, header
        optional): ``data.x`` [N, F]. Every node needs exactly one row.
    node_labels : str or os.PathLike, optional
        A file ``node_id, label``: ``data.y`` (long [N]). Integer labels are
        kept as they are; otherwise every label is a class name, classes are
        numbered in sorted (Python string) order and ``data.label_names[c]``
        is the name of class ``c``. Every node needs exactly one row.
    node_header : bool, optional
        ``header`` for the node files; ``None`` detects it in each file.
    extra_nodes : {"add", "error"}
        What a node-file row whose id is in no edge means. ``"add"``: an
        isolated node, numbered after the edge nodes in order of first
        appearance in ``node_features`` then ``node_labels``. ``"error"``: a
        ValueError naming the file, line and id.
    dtype : torch.dtype
        Floating dtype of ``edge_weight``, ``edge_attr`` and ``x``.

    Returns
    -------
    torch_geometric.data.Data
        ``edge_index`` (long [2, E]), ``num_nodes``, ``node_ids`` and, as
        requested, ``edge_weight``, ``edge_attr``, ``x``, ``y``,
        ``label_names``. Nodes are numbered 0..N-1 in order of first
        appearance: edge rows in file order, source before target, then the
        node files' extra nodes. ``node_ids[k]`` is the original id of node
        ``k``: a long tensor when all ids are integers that fit in int64, a
        list of Python ints for larger integers, a list of str otherwise.

    Raises
    ------
    ValueError
        For malformed content, naming file, line and value: a row with a
        missing column or another field count than the first row, an empty
        node id or label, a non-numeric or non-finite weight or feature, a
        duplicate node row (both lines named), a node without a feature or
        label row (its id named), a header name that does not exist.
    FileNotFoundError
        If a file does not exist.

    Examples
    --------
    >>> data = read_edge_list("web-Google.txt")       # SNAP: '#' comments, tabs
    >>> data = read_edge_list("edges.csv", weight="weight", directed=False)
    >>> data = read_edge_list("edges.tsv", source=0, target=1, features=[2, 3],
    ...                       node_features="x.tsv", node_labels="y.tsv")
    >>> data.node_ids[0]                              # original id of node 0
    """
    _check_options(comment, extra_nodes, dtype, header, node_header)
    feature_columns = _feature_columns(features)
    if header is None and any(isinstance(c, str)
                              for c in [source, target, weight, *feature_columns]):
        header = True
    head = _read_head(path, delimiter=delimiter, header=header, comment=comment)
    sources = [_Source(head, _edge_layout(head, source, target, weight, feature_columns))]
    kinds = [kind for kind, node_path in (("feature", node_features), ("label", node_labels))
             if node_path is not None]
    for kind in kinds:
        sources.append(_node_source(node_features if kind == "feature" else node_labels, kind,
                                    delimiter=delimiter, header=node_header, comment=comment))
    tables = _read_tables(sources, dtype)
    uniques, codes = _factorize(tables)
    num_nodes = len(uniques)
    edge_codes = codes[0]
    num_edge_nodes = int(edge_codes.max()) + 1 if edge_codes.size else 0
    origins = _Origins(uniques, tables, codes)

    data = Data(num_nodes=num_nodes)
    data.node_ids = _node_ids(uniques)
    src, dst = edge_codes[:, 0], edge_codes[:, 1]
    edge_values = tables[0].nums
    if not directed:
        take = _undirected(src, dst)
        reverse = take < 0
        take = np.where(reverse, -1 - take, take)
        src, dst = np.where(reverse, dst[take], src[take]), np.where(reverse, src[take], dst[take])
        edge_values = edge_values[torch.from_numpy(take)]
    data.edge_index = torch.from_numpy(np.stack([src, dst])).long()
    if weight is not None:
        data.edge_weight = edge_values[:, 0].contiguous()
    if features is not None:
        data.edge_attr = edge_values[:, int(weight is not None):].contiguous()

    for kind, table, table_codes in zip(kinds, tables[1:], codes[1:]):
        _check_node_rows(table, table_codes, num_nodes, num_edge_nodes, kind, extra_nodes, origins)
        index = torch.from_numpy(table_codes)
        if kind == "feature":
            data.x = torch.zeros(num_nodes, table.nums.size(1), dtype=dtype)
            data.x[index] = table.nums
        else:
            labels, names = _labels(table)
            data.y = torch.zeros(num_nodes, dtype=torch.long)
            data.y[index] = labels
            if names is not None:
                data.label_names = names
    return data


# --------------------------------------------------------------------------- #
# Writing                                                                     #
# --------------------------------------------------------------------------- #

def _format_floats(values: Tensor) -> np.ndarray:
    """Decimal strings that read back to exactly ``values``: the shortest
    round-tripping repr for float32/float64, the exact float64 repr else."""
    values = values.detach().cpu()
    if not values.dtype.is_floating_point:
        return values.numpy().astype(str)
    if values.dtype in (torch.float32, torch.float64):
        array = values.numpy()
        text = array.astype(str)
        wrong = text.astype(np.float64).astype(array.dtype) != array
        if wrong.any():
            text = text.astype(object)
            text[wrong] = [repr(float(v)) for v in array[wrong]]
        return text.astype(str)
    return np.array([repr(v) for v in values.double().tolist()], dtype=str).reshape(values.shape)


def _writer_delimiter(name: str, delimiter: Optional[str]) -> str:
    if delimiter is not None:
        return _check_delimiter(delimiter)
    return {".csv": ",", ".tsv": "\t"}.get(_suffix(name), WHITESPACE)


def _id_texts(data: Data, num_nodes: int, delimiter: str, comment: Optional[str]) -> np.ndarray:
    """The id of each node as written; refuses ids that would not read back."""
    ids = getattr(data, "node_ids", None)
    if ids is None:
        return np.arange(num_nodes).astype(str)
    if isinstance(ids, Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1:
            raise ValueError(f"data.node_ids must be a 1-D integer tensor or a list of ints/str, "
                             f"got a {ids.dtype} tensor of shape {list(ids.shape)}")
        ids = ids.tolist()
    ids = list(ids)
    if len(ids) != num_nodes:
        raise ValueError(f"data.node_ids has {len(ids)} entries but the graph has "
                         f"{num_nodes} nodes")
    texts = [_id_text(value, k, delimiter, comment) for k, value in enumerate(ids)]
    keys = [int(t) for t in texts] if all(_INT.fullmatch(t) for t in texts) else texts
    first: dict = {}
    for k, key in enumerate(keys):
        if first.setdefault(key, k) != k:
            raise ValueError(f"data.node_ids[{first[key]}] and data.node_ids[{k}] would read "
                             f"back as the same node ({texts[first[key]]!r}, {texts[k]!r})")
    return np.array(texts, dtype=str)


def _id_text(value: object, k: int, delimiter: str, comment: Optional[str]) -> str:
    """``str(value)``, checked to read back as the same id."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"data.node_ids[{k}] must be an int or a str, got {value!r}")
    text = str(value)
    separators = " \t" if delimiter == WHITESPACE else delimiter
    if (not text or text != text.strip(" \t") or "\n" in text or "\r" in text
            or any(s in text for s in separators)
            or (comment is not None and text.startswith(comment))):
        raise ValueError(f"data.node_ids[{k}] = {_show(text)} cannot be written: ids must be "
                         f"non-empty, one line, without the delimiter {delimiter!r}, without "
                         f"surrounding spaces and not start with the comment {comment!r}")
    return text


def _edge_values(data: Data, key: str, wanted: Optional[bool], num_edges: int) -> Optional[Tensor]:
    """``data[key]`` as [E, K] for writing, or None when not written."""
    value = getattr(data, key, None)
    if wanted is False or (wanted is None and value is None):
        return None
    if value is None:
        raise ValueError(f"data.{key} is missing (asked to write it)")
    if not isinstance(value, Tensor) or value.size(0) != num_edges or value.dim() > 2 or (
            key == "edge_weight" and value.dim() != 1):
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        expected = "[E]" if key == "edge_weight" else "[E] or [E, F]"
        raise ValueError(f"data.{key} must be a tensor of shape {expected} with E = "
                         f"{num_edges}, got {shape}")
    value = value.reshape(num_edges, -1)
    if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
        edge = int((~torch.isfinite(value)).any(dim=1).nonzero()[0])
        raise ValueError(f"data.{key} of edge {edge} is not finite: {value[edge].tolist()}")
    return value


def _written_edges(edge_index: Tensor, values: Tensor) -> Tensor:
    """Mask of the edges an undirected write keeps: an edge that is the exact
    reverse (same values) of the edge just before it, when that one is kept,
    is left out (read_edge_list(directed=False) adds it back in place)."""
    src, dst = edge_index
    mirror = torch.zeros(src.numel(), dtype=torch.bool)
    if src.numel() > 1:
        mirror[1:] = ((src[1:] == dst[:-1]) & (dst[1:] == src[:-1]) & (src[1:] != dst[1:])
                      & (values[1:] == values[:-1]).all(dim=1))
    position = torch.arange(src.numel())
    last_kept = torch.cummax(torch.where(mirror, -1, position), dim=0).values
    return ~(mirror & ((position - last_kept) % 2 == 1))


def write_edge_list(data: Data, path: PathLike, *, delimiter: Optional[str] = None,
                    header: bool = True, weight: Optional[bool] = None,
                    features: Optional[bool] = None, directed: bool = True,
                    comment: Optional[str] = "#", allow_isolated: bool = False) -> None:
    """Write ``data``'s edges as an edge-list file, with the original node ids.

    ``read_edge_list(path)`` of the written file gives back the same
    ``edge_index``, ``node_ids``, ``edge_weight`` and ``edge_attr`` (read
    with the same ``dtype``) when the nodes are numbered in order of first
    appearance, as :func:`read_edge_list` numbers them.

    Parameters
    ----------
    data : torch_geometric.data.Data
        ``edge_index`` and optionally ``node_ids`` (int tensor, or list of
        int/str; without it node ``k`` is written as ``k``), ``edge_weight``
        ([E]) and ``edge_attr`` ([E] or [E, F]).
    path : str or os.PathLike
        The file to write (``.gz``: gzipped).
    delimiter : str, optional
        ``","``, ``"\\t"``, ``" "`` (one space, read back as whitespace
        format) or another single character. ``None``: ``","`` for ``.csv``,
        ``"\\t"`` for ``.tsv``, ``" "`` otherwise.
    header : bool
        Write a header line ``source target [weight] [feature_0 ...]``, which
        :func:`read_edge_list` recognises with ``header=None``.
    weight, features : bool, optional
        Write ``edge_weight`` / ``edge_attr`` as columns. ``None``: when the
        graph has them; ``True``: they must exist.
    directed : bool
        ``False`` writes an undirected graph as read by
        ``read_edge_list(directed=False)``: an edge that is the exact reverse
        (same weight and features) of the edge just before it is left out,
        since reading adds it back there. The round trip is identical when
        the original file lists no pair in both directions.
    comment : str, optional
        The comment prefix the file will be read with; ids starting with it
        are refused.
    allow_isolated : bool
        An edge list cannot hold nodes without edges, so by default they are
        an error; ``True`` writes the edges anyway, leaving those nodes out.

    Raises
    ------
    ValueError
        For nodes without edges (unless ``allow_isolated``), ids that would
        not read back (empty, containing the delimiter or a line break,
        with surrounding spaces, starting with ``comment``, or two ids that
        read back as one), non-finite weights or features, wrong shapes.

    Examples
    --------
    >>> write_edge_list(data, "edges.csv")                # source,target[,weight]...
    >>> write_edge_list(data, "edges.tsv", header=False)  # tab-separated
    >>> write_edge_list(data, "edges.txt.gz")             # whitespace, gzipped
    """
    name = os.fspath(path)
    delim = _writer_delimiter(name, delimiter)
    edge_index = data.edge_index
    check_edge_index(edge_index)
    num_nodes = int(data.num_nodes)
    check_node_range(edge_index, num_nodes, num_nodes)
    edge_index = edge_index.long().cpu()
    ids = _id_texts(data, num_nodes, delim, comment)
    if not allow_isolated:
        has_edge = torch.zeros(num_nodes, dtype=torch.bool)
        has_edge[edge_index.reshape(-1)] = True
        if not bool(has_edge.all()):
            node = int((~has_edge).nonzero()[0])
            raise ValueError(f"node {node} (id {str(ids[node])!r}) has no edge, so an edge "
                             f"list cannot hold it; pass allow_isolated=True to write the "
                             f"edges anyway")
    num_edges = edge_index.size(1)
    weights = _edge_values(data, "edge_weight", weight, num_edges)
    attrs = _edge_values(data, "edge_attr", features, num_edges)
    values = torch.cat([v.double() for v in (weights, attrs) if v is not None]
                       + [torch.zeros(num_edges, 0, dtype=torch.float64)], dim=1)
    if not directed:
        keep = _written_edges(edge_index, values)
        edge_index = edge_index[:, keep]
        weights = None if weights is None else weights[keep]
        attrs = None if attrs is None else attrs[keep]
    columns = [ids[edge_index[0].numpy()], ids[edge_index[1].numpy()]]
    columns += [] if weights is None else [_format_floats(weights[:, 0])]
    columns += [] if attrs is None else list(_format_floats(attrs).T)
    sep = " " if delim == WHITESPACE else delim
    rows = [sep.join(_header_names(weights is not None,
                                   0 if attrs is None else attrs.size(1)))] if header else []
    rows += map(sep.join, zip(*(c.tolist() for c in columns)))
    text = "".join(row + "\n" for row in rows).encode("utf-8")
    opener = gzip.open if name.lower().endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(text)
