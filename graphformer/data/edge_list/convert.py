"""Streaming conversion: an edge-list file (and node feature and label files)
into an on-disk graph that is memory-mapped, not loaded.

:func:`convert_edge_list` reads the files in chunks of ``chunk_rows`` lines,
by the rules of :mod:`graphformer.data.edge_list.formats` and with the same
two parsers as :func:`~graphformer.data.edge_list.read_edge_list` (pandas'
C parser on a chunk when it can vouch for it, else the careful line-by-line
pass, whose errors name the file, the line of the file and the value), and
writes the graph that ``read_edge_list`` would build, as ``.npy`` files:

===================  ============================================================
``colptr.npy``       int64 [N+1]: CSC pointers; the edges into node ``v`` are the
                     slots ``colptr[v]:colptr[v+1]``
``row.npy``          int64 [E]: the source of each CSC slot (grouped by target,
                     in file order within a target)
``perm.npy``         int64 [E]: the edge id of each CSC slot: its column in
                     ``read_edge_list(...).edge_index`` (the file order; with
                     ``directed=False``, each row's edge then its added reverse)
``x.npy``            [N, F] node features (``dtype``), with ``node_features``
``y.npy``            int64 [N] class labels, with ``node_labels``; with
                     ``label_type="value"`` float [N] values (``dtype``)
``label_names.json`` class names, for text labels (class ``c`` is ``names[c]``)
``node_ids.npy``     int64 [N]: the original id of each node, when the ids are
                     int64 and not already ``0..N-1`` (else absent)
``node_ids.txt``     the original ids one a line, for text ids or integers beyond
                     int64 (ids never contain a newline)
``meta.json``        format, version, N, E, F, the files (shape, dtype, bytes) and
                     the source files (path, size, mtime); written last
===================  ============================================================

Nodes are numbered as ``read_edge_list`` numbers them: by first appearance,
edge rows in file order (source before target), then the node files' extra
nodes; ids are integers compared by value only when every id of every file is
one (a conversion that meets a text id after integer ones starts again with
text ids, as ``read_edge_list`` re-reads its files).

Memory: one chunk (its bytes, the parsed columns, the sort of one chunk) plus
O(N) for the per-node arrays (the id hash table, in-degrees and cursors,
first-appearance lines, labels); never O(E). The edges go through a temporary
binary file of (source, target) pairs and into the CSC by a counting sort with
per-target cursors, written into memory-mapped files (whose pages the kernel
writes back and drops as it needs). ``directed=False`` checks for each row
whether its reverse is listed by a binary search in a sorted key file built
from the directed CSC, one target range at a time.

Everything is written into a temporary folder beside ``out_dir``
(``.<name>.<random>.tmp``), ``meta.json`` last and atomically, and the folder
is renamed to ``out_dir`` at the end; an error or an interrupt removes the
folder, so a failed conversion leaves no graph and no temporary file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import os
import secrets
import shutil
import time
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from ...errors import DataError
from ..._files import atomic_write
from . import careful, fast
from .formats import (
    INT,
    Column,
    Head,
    Layout,
    PathLike,
    Table,
    column_index,
    head_of_bytes,
    int_array,
    is_skipped,
    show,
    split,
)
from ..graph_store import FORMAT, VERSION, OnDiskGraph
from .read import check_options, node_layout

_BLOCK = 1 << 16  # fewest bytes read at a time (more: as many as a chunk's lines need)
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

Progress = Union[None, bool, Callable[[int, int, Optional[int]], None]]


# --------------------------------------------------------------------------- #
# Reading a file as chunks of whole lines                                     #
# --------------------------------------------------------------------------- #

class _Lines:
    """A file (gunzipped for ``.gz``) as its head and then chunks of whole lines."""

    def __init__(self, path: PathLike, delimiter: Optional[str], header: Optional[bool],
                 comment: Optional[str]):
        self.name = os.fspath(path)
        self.size = os.path.getsize(path)
        self.rows_read = 0
        raw = open(path, "rb")
        self._raw: BinaryIO = raw
        self._stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") \
            if self.name.lower().endswith(".gz") else raw
        self._eof = False
        buf = self._prefix(comment)
        if buf.startswith(b"\xef\xbb\xbf"):
            buf = buf[3:]
        cut = len(buf) if self._eof else buf.rfind(b"\n") + 1
        self.head = head_of_bytes(self.name, buf[:cut], delimiter=delimiter, header=header,
                                  comment=comment)
        self._pending = buf[self.head.body_offset:] if self.head.body_line else b""
        self._line = self.head.body_line

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def _read(self, size: int) -> bytes:
        try:
            block = self._stream.read(size)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{self.name}: not a valid gzip file ({err})") from err
        if not block:
            self._eof = True
        return block

    def _prefix(self, comment: Optional[str]) -> bytes:
        """The first bytes, up to two complete non-comment, non-blank lines."""
        buf = b""
        while not self._eof:
            buf += self._read(1 << 16)
            lines = buf[:buf.rfind(b"\n") + 1].split(b"\n")[:-1]
            found = sum(not is_skipped(line.decode("utf-8", "replace").removesuffix("\r"),
                                       comment) for line in lines)
            if found >= 2:
                break
        return buf

    def bytes_read(self) -> int:
        return self._raw.tell()

    def chunks(self, chunk_rows: int) -> Iterator[Tuple[Head, int]]:
        """Per chunk of ``chunk_rows`` lines: a :class:`Head` whose ``raw`` is the
        chunk and whose ``body_line`` is the chunk's first line in the file, and
        the number of lines."""
        pending = self._pending
        self._pending = b""
        while pending or not self._eof:
            while not self._eof and pending.count(b"\n") < chunk_rows:
                have = max(pending.count(b"\n"), 1)
                want = int(len(pending) / have * (chunk_rows - have) * 1.1) if pending else 0
                pending += self._read(min(max(_BLOCK, want), 1 << 26))
            if not pending:
                return
            if pending.count(b"\n") > chunk_rows:
                ends = np.flatnonzero(np.frombuffer(pending, dtype=np.uint8) == 10)
                cut = int(ends[chunk_rows - 1]) + 1
                chunk, pending = pending[:cut], pending[cut:]
            else:
                chunk, pending = pending, b""
            lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
            yield self._chunk_head(chunk), lines
            self._line += lines
            self.rows_read += lines

    def _chunk_head(self, chunk: bytes) -> Head:
        end = chunk.find(b"\n")
        first = chunk[:end if end >= 0 else len(chunk)].decode("utf-8", "replace")
        first = first.removesuffix("\r")
        row = [] if is_skipped(first, self.head.comment) else split(first, self.head.delimiter)
        return dataclasses.replace(self.head, raw=chunk, body_offset=0, body_line=self._line,
                                   first_row=row)


def _parse(head: Head, layout: Layout, dtype: torch.dtype, ids_as_text: bool) -> Table:
    """One chunk, as ``read_edge_list`` reads a whole file: fast when it can
    vouch for the chunk, else careful (same table, or the error)."""
    table = fast.parse_fast(head, layout, dtype, ids_as_text)
    return table if table is not None else careful.parse_careful(head, layout, dtype, ids_as_text)


def _lines_of(table: Table, rows: np.ndarray) -> np.ndarray:
    """File line numbers of ``rows`` of a chunk's table."""
    if table.line_numbers is None:
        return table.first_line + rows.astype(np.int64)
    return table.line_numbers[rows]


# --------------------------------------------------------------------------- #
# Node numbering by first appearance, and growing per-node arrays             #
# --------------------------------------------------------------------------- #

class _TextIds(Exception):
    """Raised to start again with string ids (a text id after integer ones)."""


class _Numbering:
    """Ids -> node numbers in order of first appearance, across chunks
    (pandas' incremental factorizer: O(N) memory)."""

    def __init__(self, text: bool):
        from pandas._libs.hashtable import Int64Factorizer, ObjectFactorizer

        self._object = ObjectFactorizer
        self.mode = "str" if text else "int64"
        self._f = ObjectFactorizer(1024) if text else Int64Factorizer(1024)

    @property
    def count(self) -> int:
        return int(self._f.count)

    def codes(self, table: Table, column: np.ndarray) -> np.ndarray:
        if table.text_ids and self.mode != "str":
            raise _TextIds
        if self.mode == "int64" and column.dtype == object:  # integers beyond int64
            old = self._f.uniques.to_array().astype(object)
            self._f, self.mode = self._object(max(1024, 2 * len(old))), "int"
            if len(old):
                self._f.factorize(old)
        if self.mode != "int64" and column.dtype != object:
            column = column.astype(object)
        return np.asarray(self._f.factorize(column), dtype=np.int64)

    def uniques(self) -> np.ndarray:
        return self._f.uniques.to_array()

    def show(self, node: int) -> str:
        value = self._f.uniques.to_array()[node]
        return repr(value if isinstance(value, str) else int(value))


class _Grow:
    """A 1-D array that grows by doubling."""

    def __init__(self, dtype, fill=0):
        self.a = np.full(1024, fill, dtype=dtype)
        self.fill = fill

    def ensure(self, n: int) -> np.ndarray:
        if n > len(self.a):
            new = np.full(max(n, 2 * len(self.a)), self.fill, dtype=self.a.dtype)
            new[:len(self.a)] = self.a
            self.a = new
        return self.a


class _Origins:
    """Where each node is first mentioned (file index, line), for messages."""

    def __init__(self):
        self.line, self.file = _Grow(np.int64), _Grow(np.int8)

    def add(self, prior: int, flat_codes: np.ndarray, flat_lines: np.ndarray, file: int) -> None:
        new = np.flatnonzero(flat_codes >= prior)
        if not new.size:
            return
        codes = flat_codes[new]
        # new nodes are numbered in order of appearance: a first appearance
        # is a code above every code before it
        first = np.ones(codes.size, dtype=bool)
        first[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
        codes, new = codes[first], new[first]
        line, where = self.line.ensure(codes[-1] + 1), self.file.ensure(codes[-1] + 1)
        line[codes] = flat_lines[new]
        where[codes] = file


# --------------------------------------------------------------------------- #
# The counting sort into the CSC                                              #
# --------------------------------------------------------------------------- #

def _pairs(path: Path, chunk: int) -> Iterator[np.ndarray]:
    """The (source, target) rows of a pair file, ``chunk`` at a time."""
    with open(path, "rb") as fh:
        while True:
            block = np.fromfile(fh, dtype=np.int64, count=2 * chunk)
            if not block.size:
                return
            yield block.reshape(-1, 2)


def _save_empty_or_map(path: Path, dtype, shape) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape) \
        if int(np.prod(shape)) else np.zeros(shape, dtype=dtype)


def _finish_array(path: Path, array: np.ndarray) -> None:
    """Flush a memmap (or save an empty array) at ``path``."""
    if isinstance(array, np.memmap):
        array.flush()
    else:
        np.save(path, array)


def _counting_sort(chunks: Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                   degree: np.ndarray, folder: Path, prefix: str,
                   keep_perm: bool = True) -> np.ndarray:
    """Fill ``<prefix>row.npy`` (and ``<prefix>perm.npy``) from chunks of
    (source, target, edge id) by target, stable; returns colptr."""
    num_edges = int(degree.sum())
    colptr = np.zeros(len(degree) + 1, dtype=np.int64)
    np.cumsum(degree, out=colptr[1:])
    cursor = colptr[:-1].copy()
    row = _save_empty_or_map(folder / f"{prefix}row.npy", np.int64, (num_edges,))
    perm = _save_empty_or_map(folder / f"{prefix}perm.npy", np.int64, (num_edges,)) \
        if keep_perm else None
    for src, dst, eid in chunks:
        order = np.argsort(dst, kind="stable")
        d = dst[order]
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]]) if d.size else d
        counts = np.diff(np.r_[starts, d.size])
        rank = np.arange(d.size, dtype=np.int64) - np.repeat(starts, counts)
        pos = cursor[d] + rank
        row[pos] = src[order]
        if perm is not None:
            perm[pos] = eid[order]
        cursor[d[starts]] += counts
    _finish_array(folder / f"{prefix}row.npy", row)
    if perm is not None:
        _finish_array(folder / f"{prefix}perm.npy", perm)
    del row, perm
    return colptr


def _sorted_keys(folder: Path, colptr: np.ndarray, num_nodes: int, chunk: int) -> np.ndarray:
    """``target * N + source`` of every directed edge, sorted, as a memmap
    (one target range of about ``chunk`` edges sorted at a time)."""
    row = np.load(folder / "dir_row.npy", mmap_mode="r") if colptr[-1] else np.zeros(0, np.int64)
    keys = _save_empty_or_map(folder / "keys.npy", np.int64, (int(colptr[-1]),))
    degree = np.diff(colptr)
    v = 0
    while v < num_nodes:
        w = max(int(np.searchsorted(colptr, colptr[v] + chunk, side="right")) - 1, v + 1)
        w = min(w, num_nodes)
        a, b = int(colptr[v]), int(colptr[w])
        if b > a:
            targets = np.repeat(np.arange(v, w, dtype=np.int64), degree[v:w])
            keys[a:b] = np.sort(targets * num_nodes + row[a:b])
        v = w
    _finish_array(folder / "keys.npy", keys)
    return keys


def _expanded(src: np.ndarray, dst: np.ndarray,
              mirror: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Each edge, followed by its reverse where ``mirror`` (read_edge_list's order)."""
    take = np.repeat(np.arange(src.size, dtype=np.int64), 1 + mirror)
    reverse = np.zeros(take.size, dtype=bool)
    reverse[(np.cumsum(1 + mirror) - 1)[mirror]] = True
    s, d = src[take], dst[take]
    return np.where(reverse, d, s), np.where(reverse, s, d)


# --------------------------------------------------------------------------- #
# Node files                                                                  #
# --------------------------------------------------------------------------- #

@dataclasses.dataclass
class _NodeFile:
    """What a node file's checks need after every file is read."""

    kind: str
    name: str
    seen: _Grow = dataclasses.field(default_factory=lambda: _Grow(np.int64))
    extra: Optional[Tuple[int, int]] = None           # (line, node)
    duplicate: Optional[Tuple[int, int, int]] = None  # (first line, line, node)

    def record(self, codes: np.ndarray, lines: np.ndarray, num_edge_nodes: int,
               extra_nodes: str) -> None:
        if extra_nodes == "error" and self.extra is None and codes.size \
                and codes.max() >= num_edge_nodes:
            k = int(np.argmax(codes >= num_edge_nodes))
            self.extra = (int(lines[k]), int(codes[k]))
        seen = self.seen.ensure(int(codes.max()) + 1 if codes.size else 0)
        if self.duplicate is None and codes.size:
            order = np.argsort(codes, kind="stable")
            same = np.flatnonzero(codes[order][1:] == codes[order][:-1])
            earlier = seen[codes] != 0
            best = None
            if same.size:
                k = same[np.argmin(order[same + 1])]
                best = (int(order[k + 1]), int(lines[order[k]]))
            if earlier.any():
                r = int(np.argmax(earlier))
                if best is None or r < best[0]:
                    best = (r, int(seen[codes[r]]))
            if best is not None:
                r, first = best
                self.duplicate = (first, int(lines[r]), int(codes[r]))
        seen[codes] = lines

    def check(self, num_nodes: int, numbering: _Numbering, origins: _Origins,
              names: List[str], edge_name: str) -> None:
        """read_edge_list's checks, in its order, with its messages."""
        if self.extra is not None:
            line, node = self.extra
            raise DataError(f"{self.name}, line {line}: node id {numbering.show(node)} "
                            f"appears in no edge of {edge_name} (extra_nodes='error')")
        if self.duplicate is not None:
            first, second, node = self.duplicate
            raise DataError(f"{self.name}, lines {first} and {second}: duplicate {self.kind} "
                            f"rows for node {numbering.show(node)}")
        missing = np.flatnonzero(self.seen.ensure(num_nodes)[:num_nodes] == 0)
        if missing.size:
            node = int(missing[0])
            more = f" (and {missing.size - 1} more nodes)" if missing.size > 1 else ""
            where = f"line {origins.line.a[node]} of {names[origins.file.a[node]]}"
            raise DataError(f"{self.name}: node {numbering.show(node)} has no {self.kind} "
                            f"row; it appears on {where}{more}")


# --------------------------------------------------------------------------- #
# The conversion                                                              #
# --------------------------------------------------------------------------- #

class _Run:
    """One attempt at a conversion, into ``folder``."""

    def __init__(self, folder: Path, options: dict, text_ids: bool, report):
        self.folder, self.o, self.report = folder, options, report
        self.numbering = _Numbering(text_ids)
        self.origins = _Origins()
        self.degree = _Grow(np.int64)
        self.names: List[str] = []
        self.rows = 0

    def _open(self, path: PathLike, header: Optional[bool]) -> _Lines:
        lines = _Lines(path, self.o["delimiter"], header, self.o["comment"])
        self.names.append(lines.name)
        return lines

    def _chunks(self, lines: _Lines) -> Iterator[Head]:
        for head, count in lines.chunks(self.o["chunk_rows"]):
            yield head
            self.rows += count
            self.report(self.rows, lines)

    def _tables(self, lines: _Lines, layout: Layout) -> Iterator[Tuple[Head, Table, int, int]]:
        """Per chunk with data rows: its head, its table, its rows, and the
        number of nodes before it."""
        for chunk in self._chunks(lines):
            table = _parse(chunk, layout, self.o["dtype"], self.numbering.mode == "str")
            if len(table.ids[0]):
                yield chunk, table, len(table.ids[0]), self.numbering.count

    def edges(self) -> Tuple[int, int]:
        """Pass 1: the edge file into ``pairs.bin``; returns (rows, edge nodes)."""
        o = self.o
        lines = self._open(o["edges"], o["header"])
        try:
            head = lines.head
            layout = Layout(ids=((column_index(head, o["source"], "source"), "source"),
                                 (column_index(head, o["target"], "target"), "target")))
            rows = 0
            with open(self.folder / "pairs.bin", "wb") as out:
                for chunk, table, n, prior in self._tables(lines, layout):
                    kind = object if any(c.dtype == object for c in table.ids) else np.int64
                    flat = np.empty(2 * n, dtype=kind)
                    flat[0::2], flat[1::2] = table.ids
                    codes = self.numbering.codes(table, flat)
                    line = _lines_of(table, np.arange(n))
                    self.origins.add(prior, codes, np.repeat(line, 2), 0)
                    codes.tofile(out)
                    dst = codes[1::2]
                    degree = self.degree.ensure(self.numbering.count)
                    u, c = np.unique(dst, return_counts=True)
                    degree[u] += c
                    rows += n
        finally:
            lines.close()
        return rows, self.numbering.count

    def node_file(self, kind: str, num_edge_nodes: int, text_labels: bool = False) -> _NodeFile:
        """A node file: its ids numbered, features into ``x_codes.bin`` /
        ``x_values.bin``, labels into ``self.labels`` (with ``text_labels``,
        first-appearance codes of ``self.label_factorizer``'s class names)."""
        o = self.o
        path = o["node_features" if kind == "feature" else "node_labels"]
        lines = self._open(path, o["node_header"])
        file = len(self.names) - 1
        state = _NodeFile(kind, lines.name)
        again = False
        try:
            layout = node_layout(lines.head, kind, o["label_type"])
            if kind == "feature":
                self.num_features = len(layout.nums)
                codes_out = open(self.folder / "x_codes.bin", "wb")
                values_out = open(self.folder / "x_values.bin", "wb")
            else:
                from pandas._libs.hashtable import ObjectFactorizer

                self.label_text = text_labels
                self.label_factorizer = ObjectFactorizer(1024)
                self.labels = _Grow(np.int64) if o["label_type"] == "class" else \
                    _Grow(_NUMPY_DTYPES[o["dtype"]])
                self.label_overflow: Optional[str] = None
            try:
                for chunk, table, n, prior in self._tables(lines, layout):
                    codes = self.numbering.codes(table, table.ids[0])
                    line = _lines_of(table, np.arange(n))
                    self.origins.add(prior, codes, line, file)
                    state.record(codes, line, num_edge_nodes, o["extra_nodes"])
                    if kind == "feature":
                        codes.tofile(codes_out)
                        table.nums.numpy().astype(_NUMPY_DTYPES[o["dtype"]]).tofile(values_out)
                    elif self._labels(chunk, layout, table, codes):
                        again = True  # a text label: read the file again, keeping the text
                        break
            finally:
                if kind == "feature":
                    codes_out.close()
                    values_out.close()
        finally:
            lines.close()
        if again:
            self.names.pop()
            return self.node_file(kind, num_edge_nodes, text_labels=True)
        if kind == "label" and self.label_overflow is not None:
            raise DataError(self.label_overflow)
        return state

    def _labels(self, chunk: Head, layout: Layout, table: Table, codes: np.ndarray) -> bool:
        """Store a chunk's labels; True when a text label means starting the
        label file again with class names."""
        if self.o["label_type"] == "value":
            self.labels.ensure(int(codes.max()) + 1)[codes] = table.nums[:, 0].numpy()
            return False
        column = table.texts[0]
        if self.label_text:
            if column.dtype != object:  # pandas read integers: the text is needed
                column = careful.parse_careful(chunk, layout, self.o["dtype"],
                                               self.numbering.mode == "str").texts[0]
            names = self.label_factorizer.factorize(column.astype(object))
            self.labels.ensure(int(codes.max()) + 1)[codes] = names
            return False
        if column.dtype == object:
            tokens = column.tolist()
            if not all(INT.fullmatch(t) for t in tokens):
                return True
            values = int_array(tokens)
            if values.dtype == object:
                if self.label_overflow is None:
                    row = next(r for r, v in enumerate(tokens) if not -2**63 <= int(v) < 2**63)
                    self.label_overflow = (f"{table.name}, line {table.line(row)}: label "
                                           f"{show(tokens[row])} does not fit in int64")
                return False
            column = values
        self.labels.ensure(int(codes.max()) + 1)[codes] = column
        return False


def _convert(folder: Path, o: dict, text_ids: bool, report) -> dict:
    """One attempt; raises :class:`_TextIds` to start again with text ids."""
    run = _Run(folder, o, text_ids, report)
    num_rows, num_edge_nodes = run.edges()
    files = []
    kinds = [k for k, p in (("feature", o["node_features"]), ("label", o["node_labels"]))
             if p is not None]
    states = [run.node_file(kind, num_edge_nodes) for kind in kinds]
    num_nodes = run.numbering.count
    for state in states:
        state.check(num_nodes, run.numbering, run.origins, run.names, run.names[0])
    chunk = o["chunk_rows"]
    degree = run.degree.ensure(num_nodes)[:num_nodes].copy()
    run.degree = None
    pairs = folder / "pairs.bin"

    def directed_chunks():
        offset = 0
        for block in _pairs(pairs, chunk):
            yield block[:, 0], block[:, 1], np.arange(offset, offset + len(block))
            offset += len(block)

    if o["directed"]:
        colptr = _counting_sort(directed_chunks(), degree, folder, "")
    else:
        if num_nodes and num_nodes > (2**63 - 1) // num_nodes:
            raise ValueError(f"{num_nodes} nodes are too many for directed=False")
        dir_colptr = _counting_sort(directed_chunks(), degree, folder, "dir_", keep_perm=False)
        keys = _sorted_keys(folder, dir_colptr, num_nodes, chunk)
        with open(folder / "mirror.bin", "wb") as out:
            for block in _pairs(pairs, chunk):
                u, v = block[:, 0], block[:, 1]
                q = u * num_nodes + v
                at = np.searchsorted(keys, q)
                found = keys[np.minimum(at, len(keys) - 1)] == q if len(keys) else \
                    np.zeros(len(q), dtype=bool)
                mirror = (u != v) & ~(found & (at < len(keys)))
                mirror.tofile(out)
                w, c = np.unique(u[mirror], return_counts=True)
                degree[w] += c
        del keys
        for name in ("dir_row.npy", "keys.npy"):
            (folder / name).unlink()

        def undirected_chunks():
            offset = 0
            with open(folder / "mirror.bin", "rb") as flags:
                for block in _pairs(pairs, chunk):
                    mirror = np.fromfile(flags, dtype=bool, count=len(block))
                    s, d = _expanded(block[:, 0], block[:, 1], mirror)
                    yield s, d, np.arange(offset, offset + len(s))
                    offset += len(s)

        colptr = _counting_sort(undirected_chunks(), degree, folder, "")
        (folder / "mirror.bin").unlink()
    pairs.unlink()
    np.save(folder / "colptr.npy", colptr)
    files += ["colptr.npy", "row.npy", "perm.npy"]
    meta: dict = {"num_nodes": num_nodes, "num_edges": int(colptr[-1]), "num_rows": num_rows,
                  "num_features": None, "directed": o["directed"],
                  "node_id_type": run.numbering.mode, "label_names": False,
                  "label_type": o["label_type"] if o["node_labels"] is not None else None}

    if "feature" in kinds:
        f = run.num_features
        dt = _NUMPY_DTYPES[o["dtype"]]
        x = _save_empty_or_map(folder / "x.npy", dt, (num_nodes, f))
        with open(folder / "x_codes.bin", "rb") as cf, open(folder / "x_values.bin", "rb") as vf:
            while True:
                codes = np.fromfile(cf, dtype=np.int64, count=chunk)
                if not codes.size:
                    break
                x[codes] = np.fromfile(vf, dtype=dt, count=codes.size * f).reshape(-1, f)
        _finish_array(folder / "x.npy", x)
        del x
        (folder / "x_codes.bin").unlink()
        (folder / "x_values.bin").unlink()
        files.append("x.npy")
        meta["num_features"] = f
    if "label" in kinds:
        y = run.labels.ensure(num_nodes)[:num_nodes]
        if run.label_text:
            found = run.label_factorizer.uniques.to_array()
            names = sorted(found.tolist())
            rank = _ranks(found, names)
            y = rank[y]
            with atomic_write(folder / "label_names.json") as fh:
                json.dump(names, fh)
            meta["label_names"] = True
        np.save(folder / "y.npy", np.ascontiguousarray(y, dtype=y.dtype if o["label_type"] ==
                                                        "value" else np.int64))
        files.append("y.npy")
    uniques = run.numbering.uniques()
    if run.numbering.mode == "int64":
        if not np.array_equal(uniques, np.arange(num_nodes)):
            np.save(folder / "node_ids.npy", uniques.astype(np.int64))
            files.append("node_ids.npy")
        else:
            meta["node_id_type"] = "range"
    else:
        with atomic_write(folder / "node_ids.txt", newline="\n") as fh:
            for a in range(0, num_nodes, chunk):
                fh.write("".join(f"{v}\n" for v in uniques[a:a + chunk].tolist()))
    meta["files"] = {}
    for name in files:
        arr = np.load(folder / name, mmap_mode="r")
        meta["files"][name] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                               "bytes": os.path.getsize(folder / name)}
        del arr
    return meta


def _ranks(found: np.ndarray, names: List[str]) -> np.ndarray:
    index = {n: k for k, n in enumerate(names)}
    return np.array([index[n] for n in found.tolist()], dtype=np.int64)


def _reporter(progress: Progress, total: int) -> Tuple[Callable, Callable]:
    """(report(rows, lines), close()) for ``progress``."""
    if progress is None or progress is False:
        return (lambda rows, lines: None), (lambda: None)
    if callable(progress):
        return (lambda rows, lines: progress(rows, lines.bytes_read(), total)), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(unit=" rows", unit_scale=True, desc="converting", mininterval=1.0)
    state = {"rows": 0}

    def report(rows, lines):
        bar.update(rows - state["rows"])
        state["rows"] = rows

    return report, bar.close


def convert_edge_list(edges: PathLike, out_dir: PathLike, *,
                      node_features: Optional[PathLike] = None,
                      node_labels: Optional[PathLike] = None,
                      delimiter: Optional[str] = None, header: Optional[bool] = None,
                      node_header: Optional[bool] = None, comment: Optional[str] = "#",
                      source: Column = 0, target: Column = 1, directed: bool = True,
                      extra_nodes: str = "add", label_type: str = "class",
                      chunk_rows: int = 1_000_000,
                      dtype: torch.dtype = torch.float32, progress: Progress = None,
                      overwrite: bool = False):
    """Convert an edge-list file, streaming, into an on-disk graph in ``out_dir``.

    The files, options, node numbering and errors are those of
    :func:`~graphformer.data.edge_list.read_edge_list` (same keyword names;
    edge weights and edge features are not converted); the result is the
    graph it would read, kept on disk (layout: this module's docstring) and
    opened memory-mapped.

    Parameters
    ----------
    edges, node_features, node_labels, delimiter, header, node_header, comment,
    source, target, directed, extra_nodes, label_type, dtype
        As for ``read_edge_list`` (``dtype``: float16, float32 or float64, of
        ``x.npy`` and of value labels).
    out_dir : str or os.PathLike
        The graph's folder: created; it must not exist, be an empty folder, or
        (with ``overwrite=True``) hold an earlier conversion.
    chunk_rows : int
        Lines read and parsed at a time: peak memory is about one chunk plus
        O(N) per-node arrays, whatever the file's size.
    progress : bool or callable, optional
        ``True``: a tqdm bar of rows (rows/s); a callable is called after each
        chunk with ``(rows read, bytes read of the current file, its size)``.
    overwrite : bool
        Replace an earlier conversion in ``out_dir``.

    Returns
    -------
    graphformer.data.graph_store.OnDiskGraph

    Raises
    ------
    ValueError
        Malformed content, naming file, line and value, as ``read_edge_list``
        does (the line is the file's, whichever chunk it is in).
    """
    check_options(comment, extra_nodes, dtype, header, node_header, label_type)
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"dtype must be torch.float16, float32 or float64 for an on-disk "
                         f"graph, got {dtype!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    if header is None and any(isinstance(c, str) for c in (source, target)):
        header = True
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not (overwrite and (out / "meta.json").exists()):
            raise ValueError(f"{out}: the folder is not empty" + (
                "" if not (out / "meta.json").exists() else
                " (it holds a converted graph: pass overwrite=True to replace it)"))
    sources = [p for p in (edges, node_features, node_labels) if p is not None]
    for p in sources:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{os.fspath(p)}: no such file")
    options = dict(edges=edges, node_features=node_features, node_labels=node_labels,
                   delimiter=delimiter, header=header, node_header=node_header,
                   comment=comment, source=source, target=target, directed=bool(directed),
                   extra_nodes=extra_nodes, label_type=label_type, chunk_rows=chunk_rows,
                   dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    report, close = _reporter(progress, os.path.getsize(edges))
    started = time.time()
    try:
        folder.mkdir()
        try:
            meta = _convert(folder, options, False, report)
        except _TextIds:
            shutil.rmtree(folder)
            folder.mkdir()
            meta = _convert(folder, options, True, report)
        meta = {"format": FORMAT, "version": VERSION, **meta,
                "dtype": str(dtype).removeprefix("torch."),
                "sources": [{"path": os.path.abspath(p), "size": os.path.getsize(p),
                             "mtime": os.path.getmtime(p)} for p in sources],
                "seconds": round(time.time() - started, 3)}
        with atomic_write(folder / "meta.json") as fh:
            json.dump(meta, fh, indent=1)
        if out.exists():
            with contextlib.suppress(FileNotFoundError):
                (out / "meta.json").unlink()  # no longer a graph, from here on
            shutil.rmtree(out)
        os.replace(folder, out)
    finally:
        close()
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
    return OnDiskGraph(out)
