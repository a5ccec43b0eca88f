"""The careful parse: line by line, by the same format rules as the vectorised
one (:mod:`graphformer.data.edge_list.fast`), giving the same table or a
ValueError naming the file, line and value of the first malformed row."""
from __future__ import annotations

from typing import List

import numpy as np
import torch

from ...errors import DataError
from .formats import (
    INT,
    NUMBER,
    Head,
    Layout,
    Table,
    cast,
    decode,
    int_array,
    is_skipped,
    show,
    split,
)


def _row_error(head: Head, layout: Layout, line: int, text: str, found: int) -> ValueError:
    """The error for a row with ``found`` fields instead of ``head.ncols``."""
    missing = [(c, role) for c, role in layout.all() if c >= found]
    where = (f"{head.name}, line {line}: expected {head.ncols} field(s) (as on line "
             f"{head.ref_line}), found {found}")
    if missing:
        c, role = min(missing)
        return DataError(f"{where}: column {c} ({role}) is missing in {show(text)}")
    return DataError(f"{where}: inconsistent column count in {show(text)}")


def _number(field: str, name: str, line: int, column: int, role: str) -> float:
    if not field:
        raise DataError(f"{name}, line {line}: empty {role} in column {column}")
    if not NUMBER.fullmatch(field):
        raise DataError(f"{name}, line {line}: non-numeric {role} {show(field)} in column "
                        f"{column} (numbers must be finite decimals such as 1, -0.5, 2e-3)")
    return float(field)


def parse_careful(head: Head, layout: Layout, dtype: torch.dtype,
                ids_as_text: bool) -> Table:
    """Line by line; raises a ValueError naming the file, line and value of the
    first malformed row."""
    name, delimiter, comment = head.name, head.delimiter, head.comment
    lines = decode(head.raw[head.body_offset:], name, head.body_line).split("\n")
    ids: List[List[str]] = [[] for _ in layout.ids]
    texts: List[List[str]] = [[] for _ in layout.texts]
    nums: List[List[float]] = []
    line_numbers: List[int] = []
    for k, text in enumerate(lines):
        text = text.removesuffix("\r")
        if is_skipped(text, comment):
            continue
        line = head.body_line + k
        fields = split(text, delimiter)
        if len(fields) != head.ncols:
            raise _row_error(head, layout, line, text, len(fields))
        for (c, role), out in zip(layout.ids + layout.texts, ids + texts):
            if not fields[c]:
                raise DataError(f"{name}, line {line}: empty {role} in column {c}: {show(text)}")
            out.append(fields[c])
        nums.append([_number(fields[c], name, line, c, role) for c, role in layout.nums])
        line_numbers.append(line)
    values = cast(np.array(nums, dtype=np.float64).reshape(len(nums), len(layout.nums)), dtype)
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        row, j = bad[0].tolist()
        c, role = layout.nums[j]
        field = split(lines[line_numbers[row] - head.body_line].removesuffix("\r"), delimiter)[c]
        raise DataError(f"{name}, line {line_numbers[row]}: {role} {show(field)} in column "
                        f"{c} overflows {dtype}")
    text_ids = ids_as_text or not all(INT.fullmatch(v) for col in ids for v in col)
    return Table(name=name,
                  ids=[np.array(col, dtype=object) if text_ids else int_array(col) for col in ids],
                  text_ids=text_ids, nums=values,
                  texts=[np.array(col, dtype=object) for col in texts],
                  first_line=head.body_line, line_numbers=np.array(line_numbers, dtype=np.int64))
