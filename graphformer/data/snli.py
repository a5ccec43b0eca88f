"""The Stanford Natural Language Inference corpus (SNLI 1.0) as distributed,
its vocabulary and GloVe-format word vectors, read as Dive into Deep Learning
(section 16.4) reads them.

**Files.** ``snli_1.0.zip`` (https://nlp.stanford.edu/projects/snli/) unpacks
to ``snli_1.0/`` with ``snli_1.0_{train,dev,test}.jsonl`` (one JSON object
per line: ``gold_label``, ``sentence1``, ``sentence1_binary_parse``,
``sentence1_parse``, ``sentence2``, ...) and the same data as
``snli_1.0_{train,dev,test}.txt`` (tab-separated, a header line naming the
columns ``gold_label  sentence1_binary_parse  sentence2_binary_parse
sentence1_parse  sentence2_parse  sentence1  sentence2  captionID  pairID
label1 .. label5``). Both are read; the JSON lines are preferred when both are
present.

**Tokens.** As D2L's ``read_snli``: the *binary parse* (already tokenised in
Penn Treebank style, so "airplane." is "airplane" and ".") with its
parentheses removed, split on whitespace. Case is kept (D2L does not
lowercase; GloVe 6B is lower-case, so sentence-initial words such as "A" are
then not found in it); ``lowercase=True`` lowercases.

**Labels.** D2L's ids: entailment 0, contradiction 1, neutral 2. Pairs whose
``gold_label`` is ``-`` (the annotators did not agree) are dropped and
counted (:attr:`SNLISplit.dropped_no_gold`); a pair with an empty sentence is
dropped and counted too (:attr:`SNLISplit.dropped_empty`); any other label is
an error naming the file and line.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Hashable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .tokens import build_vocab

PathLike = Union[str, Path]

SNLI_LABELS: Dict[str, int] = {"entailment": 0, "contradiction": 1, "neutral": 2}
SNLI_SPLITS = ("train", "dev", "test")
SNLI_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"
GLOVE_URL = "https://nlp.stanford.edu/data/glove.6B.zip"
_TXT_COLUMNS = ("gold_label", "sentence1_binary_parse", "sentence2_binary_parse")
_PARENS = re.compile(r"[()]")


@dataclass
class SNLISplit:
    """One split of SNLI: token lists, D2L label ids and what was dropped.

    Attributes:
        path: the file read.
        premises, hypotheses: one token list per kept pair.
        labels: ``LongTensor [n]`` of :data:`SNLI_LABELS` ids.
        dropped_no_gold: pairs with gold label ``-``, dropped.
        dropped_empty: pairs with an empty sentence, dropped.
    """
    path: Path
    premises: List[List[str]]
    hypotheses: List[List[str]]
    labels: Tensor
    dropped_no_gold: int = 0
    dropped_empty: int = 0
    label_counts: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.premises)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.label_counts.items())
        return (f"{self.path.name}: {len(self)} pairs ({counts}); dropped "
                f"{self.dropped_no_gold} with gold label '-' and {self.dropped_empty} "
                f"with an empty sentence")


def parse_tokens(binary_parse: str, lowercase: bool = False) -> List[str]:
    """Tokens of a binary parse: parentheses removed, split on whitespace
    (D2L's ``extract_text`` followed by its word tokenizer)."""
    text = _PARENS.sub("", binary_parse)
    return (text.lower() if lowercase else text).split()


def _jsonl_rows(path: Path) -> Iterator[Tuple[int, str, str, str]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_no}: not valid JSON ({err.msg} at column "
                                 f"{err.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {line_no}: expected a JSON object, got "
                                 f"{type(row).__name__}")
            for key in _TXT_COLUMNS:
                if not isinstance(row.get(key), str):
                    problem = "is missing" if key not in row else "is not a string"
                    raise ValueError(f"{path}, line {line_no}: key {key!r} {problem}")
            yield (line_no, row["gold_label"], row["sentence1_binary_parse"],
                   row["sentence2_binary_parse"])


def _txt_rows(path: Path) -> Iterator[Tuple[int, str, str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        missing = [c for c in _TXT_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}, line 1: the header lacks column(s) {missing}; an SNLI "
                             f".txt file starts with 'gold_label<TAB>sentence1_binary_parse"
                             f"<TAB>sentence2_binary_parse<TAB>...'")
        cols = [header.index(c) for c in _TXT_COLUMNS]
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                raise ValueError(f"{path}, line {line_no}: {len(fields)} tab-separated fields, "
                                 f"the header has {len(header)}")
            yield (line_no,) + tuple(fields[c] for c in cols)  # type: ignore[misc]


def read_snli(path: PathLike, lowercase: bool = False) -> SNLISplit:
    """One SNLI file, ``.jsonl`` or ``.txt`` (by suffix), as an :class:`SNLISplit`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming
    the file and line for malformed input or an unknown gold label."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SNLI file {path} does not exist")
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".txt":
        rows = _txt_rows(path)
    else:
        raise ValueError(f"{path}: expected an SNLI .jsonl or .txt file")
    premises: List[List[str]] = []
    hypotheses: List[List[str]] = []
    labels: List[int] = []
    counts = {name: 0 for name in SNLI_LABELS}
    no_gold = empty = 0
    for line_no, gold, parse1, parse2 in rows:
        if gold == "-":
            no_gold += 1
            continue
        if gold not in SNLI_LABELS:
            raise ValueError(f"{path}, line {line_no}: unknown gold_label {gold!r} (expected "
                             f"one of {sorted(SNLI_LABELS)} or '-')")
        p, h = parse_tokens(parse1, lowercase), parse_tokens(parse2, lowercase)
        if not p or not h:
            empty += 1
            continue
        premises.append(p)
        hypotheses.append(h)
        labels.append(SNLI_LABELS[gold])
        counts[gold] += 1
    return SNLISplit(path, premises, hypotheses, torch.tensor(labels, dtype=torch.long),
                     no_gold, empty, counts)


def snli_file(root: PathLike, split: str) -> Path:
    """The file of ``split`` under ``root`` (or ``root/snli_1.0``):
    ``snli_1.0_<split>.jsonl``, else ``.txt``; a ``FileNotFoundError`` that
    says which files to put where when neither is there."""
    if split not in SNLI_SPLITS:
        raise ValueError(f"unknown SNLI split {split!r}; choose one of {SNLI_SPLITS}")
    root = Path(root)
    for folder in (root, root / "snli_1.0"):
        for suffix in (".jsonl", ".txt"):
            candidate = folder / f"snli_1.0_{split}{suffix}"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"SNLI 1.0 {split} split not found: put snli_1.0_{split}.jsonl (or "
        f"snli_1.0_{split}.txt) in {root} or {root / 'snli_1.0'}. They come from "
        f"{SNLI_URL} (unzip it in {root}: it creates snli_1.0/ with "
        f"snli_1.0_{{train,dev,test}}.{{jsonl,txt}}); it cannot be downloaded from this "
        f"machine.")


def load_snli(root: PathLike, split: str, lowercase: bool = False) -> SNLISplit:
    """:func:`read_snli` of :func:`snli_file` ``(root, split)``."""
    return read_snli(snli_file(root, split), lowercase=lowercase)


def snli_vocab(split: SNLISplit, min_freq: int = 5,
               specials: Sequence[str] = ("<pad>", "<unk>")) -> Dict[Hashable, int]:
    """The vocabulary of D2L's ``SNLIDataset``: the tokens of the premises and
    hypotheses of ``split`` (the training set) seen at least ``min_freq``
    times (D2L: 5), plus ``<pad>`` and ``<unk>``. D2L orders its ids
    differently (``<unk>`` first, then by frequency); the set of tokens is
    the same."""
    return build_vocab(split.premises + split.hypotheses, specials=specials, min_freq=min_freq)


def load_word_vectors(path: PathLike, vocab: Dict[Hashable, int],
                      dim: Optional[int] = None) -> Tuple[Tensor, int]:
    """Pretrained vectors for ``vocab`` from a GloVe-format text file (one
    ``word v1 v2 ... vd`` per line, single spaces, e.g. ``glove.6B.100d.txt``).

    Returns ``(vectors [len(vocab), d], found)``: row ``vocab[w]`` holds the
    vector of ``w`` when the file has it, else zeros (as D2L's
    ``TokenEmbedding`` gives unknown words); ``found`` counts the vocabulary
    words found. Words not in ``vocab`` are skipped without being stored
    (their values are counted, not parsed); a word listed twice keeps its
    first vector. Every line must have the same number of values (``dim``
    when given) and a vocabulary word's values must be numbers: a
    ``ValueError`` names the file, line and problem otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word vector file {path} does not exist")
    rows: Dict[int, List[float]] = {}
    width = dim
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            word, _, rest = line.partition(" ")
            values = rest.split(" ") if rest else []
            if width is None:
                width = len(values)
                if width == 0:
                    raise ValueError(f"{path}, line {line_no}: the word {word!r} has no vector "
                                     f"values; expected 'word v1 v2 ... vd'")
            if len(values) != width:
                raise ValueError(f"{path}, line {line_no}: the word {word!r} has {len(values)} "
                                 f"values, expected {width}")
            idx = vocab.get(word)
            if idx is None or idx in rows:
                continue
            try:
                rows[idx] = [float(v) for v in values]
            except ValueError:
                bad = next(v for v in values if not _is_float(v))
                raise ValueError(f"{path}, line {line_no}: value {bad!r} of the word {word!r} is "
                                 f"not a number") from None
    if width is None:
        raise ValueError(f"{path}: no word vectors in the file")
    out = torch.zeros(max(vocab.values(), default=-1) + 1, width)
    if rows:
        index = torch.tensor(list(rows.keys()))
        out[index] = torch.tensor(list(rows.values()))
    return out, len(rows)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
