"""The vectorised parse: pandas' C parser on a whole file, when it can vouch
for the result.

It reads the file when its result is the one the format rules of
:mod:`graphformer.data.edge_list.formats` give (integer or string ids, no blank
or comment lines after the first data row, no byte pandas treats specially),
and declines (returns None) otherwise, leaving the file to the careful pass
(:mod:`graphformer.data.edge_list.careful`), which gives the same table or the
precise error.
"""
from __future__ import annotations

import csv
import io
import re
import warnings
from typing import Optional

import numpy as np
import torch

from .formats import INT, WHITESPACE, Head, Layout, Table, cast

_PANDAS_SPECIAL = (b"\x00", b"\x0b", b"\x0c")  # bytes pandas' C parser treats unlike ours
#: words pandas reads as the numbers 1 and 0 in a float column (the format has
#: decimals only: the careful pass refuses them, naming the line)
_BOOLEAN_WORD = re.compile(rb"true|false", re.IGNORECASE)


def _fast_parsable(head: Head, body: bytes, rows: int) -> bool:
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


def _pandas_rows(head: Head, body: bytes, layout: Layout, rows: int, text: bool):
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


def parse_fast(head: Head, layout: Layout, dtype: torch.dtype,
                ids_as_text: bool) -> Optional[Table]:
    """pandas' C parser on the data rows, or None when the file has anything the
    careful pass must look at (which then gives the same result, or the error)."""
    body = head.raw[head.body_offset:]
    rows = body.count(b"\n") + (not body.endswith(b"\n"))
    if not _fast_parsable(head, body, rows):
        return None
    tokens = [c for c, _ in layout.ids + layout.texts]
    if layout.nums and _BOOLEAN_WORD.search(body):
        return None
    if any(not INT.fullmatch(head.first_row[c]) for c, _ in layout.ids):
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
    if text_ids and not ids_as_text and all(INT.fullmatch(t) for col in ids for t in col):
        return None  # integers pandas cannot hold (beyond int64, "1.0" is not one)
    nums = cast(np.stack([df[c].to_numpy(np.float64) for c, _ in layout.nums], axis=1)
                 if layout.nums else np.zeros((rows, 0)), dtype)
    if not bool(torch.isfinite(nums).all()):
        return None
    return Table(name=head.name, ids=ids, text_ids=text_ids, nums=nums,
                  texts=[(as_text if text_texts else df)[c].to_numpy(
                      object if text_texts else np.int64) for c, _ in layout.texts],
                  first_line=head.body_line)
