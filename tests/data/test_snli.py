"""SNLI 1.0 as distributed (.jsonl and .txt), its vocabulary and GloVe vectors."""
import collections
import json
import os
import re

import pytest
import torch

from graphformer.data import (
    SNLI_LABELS,
    load_snli,
    load_word_vectors,
    read_snli,
    snli_vocab,
)
from tests.data.snli_files import RECORDS, write_glove, write_snli


def d2l_read_snli(file_name):
    """D2L's ``read_snli`` (section 16.4), verbatim but for the file name."""
    def extract_text(s):
        s = re.sub('\\(', '', s)
        s = re.sub('\\)', '', s)
        s = re.sub('\\s{2,}', ' ', s)
        return s.strip()
    label_set = {'entailment': 0, 'contradiction': 1, 'neutral': 2}
    with open(file_name, 'r') as f:
        rows = [row.split('\t') for row in f.readlines()[1:]]
    premises = [extract_text(row[1]) for row in rows if row[0] in label_set]
    hypotheses = [extract_text(row[2]) for row in rows if row[0] in label_set]
    labels = [label_set[row[0]] for row in rows if row[0] in label_set]
    return premises, hypotheses, labels


def test_jsonl_and_txt_read_the_same_as_d2l(tmp_path):
    split_j = read_snli(write_snli(tmp_path, "train", "jsonl"))
    split_t = read_snli(write_snli(tmp_path, "train", "txt"))
    premises, hypotheses, labels = d2l_read_snli(tmp_path / "snli_1.0_train.txt")
    for split in (split_j, split_t):
        assert len(split) == 9 and split.dropped_no_gold == 1 and split.dropped_empty == 0
        assert split.premises == [p.split() for p in premises]       # D2L's word tokenizer
        assert split.hypotheses == [h.split() for h in hypotheses]
        assert split.labels.tolist() == labels == [2, 1, 0, 2, 0, 1, 1, 0, 2]
        assert split.label_counts == {"entailment": 3, "contradiction": 3, "neutral": 3}
    assert split_j.premises[0] == ["A", "person", "on", "a", "horse", "jumps", "over", "a",
                                   "broken", "down", "airplane", "."]
    assert split_j.hypotheses[1] == ["A", "person", "is", "at", "a", "diner", ",", "ordering",
                                     "an", "omelette", "."]
    assert split_t.summary() == ("snli_1.0_train.txt: 9 pairs (entailment 3, contradiction 3, "
                                 "neutral 3); dropped 1 with gold label '-' and 0 with an "
                                 "empty sentence")
    lower = read_snli(tmp_path / "snli_1.0_train.jsonl", lowercase=True)
    assert lower.premises[0][0] == "a" and lower.hypotheses[5] == ["the", "kids", "are",
                                                                   "frowning"]
    assert SNLI_LABELS == {"entailment": 0, "contradiction": 1, "neutral": 2}


def test_load_finds_the_unzipped_folder_and_says_what_is_missing(tmp_path):
    write_snli(tmp_path / "snli_1.0", "dev", "txt")
    assert load_snli(tmp_path, "dev").path == tmp_path / "snli_1.0" / "snli_1.0_dev.txt"
    write_snli(tmp_path / "snli_1.0", "dev", "jsonl")     # both present: JSON lines win
    assert load_snli(tmp_path, "dev").path.suffix == ".jsonl"
    with pytest.raises(FileNotFoundError) as err:
        load_snli(tmp_path, "test")
    msg = str(err.value)
    assert f"put snli_1.0_test.jsonl (or snli_1.0_test.txt) in {tmp_path} or " in msg
    assert "https://nlp.stanford.edu/projects/snli/snli_1.0.zip" in msg
    with pytest.raises(ValueError, match="unknown SNLI split 'valid'"):
        load_snli(tmp_path, "valid")


def test_empty_sentences_are_dropped_and_counted(tmp_path):
    gold, annot, prem, (s2, _, p2), cap, pair = RECORDS[0]
    records = RECORDS[:2] + [(gold, annot, prem, (s2, "( )", p2), cap, pair)]
    for fmt in ("jsonl", "txt"):
        split = read_snli(write_snli(tmp_path / fmt, "dev", fmt, records))
        assert len(split) == 2 and split.dropped_empty == 1 and split.dropped_no_gold == 0


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.mark.parametrize("fmt, edit, match", [
    ("jsonl", lambda lines: lines[:2] + ['{"gold_label": "neutral", \n'] + lines[3:],
     r"snli_1.0_train.jsonl, line 3: not valid JSON"),
    ("jsonl", lambda lines: lines[:4] + [json.dumps({"gold_label": "neutral",
                                                     "sentence1_binary_parse": "( a b )"}) + "\n"],
     r"snli_1.0_train.jsonl, line 5: key 'sentence2_binary_parse' is missing"),
    ("jsonl", lambda lines: lines[:1] + ["[1, 2]\n"],
     r"snli_1.0_train.jsonl, line 2: expected a JSON object, got list"),
    ("jsonl", lambda lines: lines[:3] + [lines[3].replace('"gold_label": "neutral"',
                                                          '"gold_label": "neutrall"')],
     r"snli_1.0_train.jsonl, line 4: unknown gold_label 'neutrall'"),
    ("txt", lambda lines: lines[:6] + ["neutral\t( a b )\n"],
     r"snli_1.0_train.txt, line 7: 2 tab-separated fields, the header has 14"),
    ("txt", lambda lines: ["label\tsentence1_binary_parse\tsentence2_binary_parse\n"] + lines[1:],
     r"snli_1.0_train.txt, line 1: the header lacks column\(s\) \['gold_label'\]"),
])
def test_malformed_files_name_file_and_line(tmp_path, fmt, edit, match):
    path = write_snli(tmp_path, "train", fmt)
    path.write_text("".join(edit(_lines(path))), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        read_snli(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_snli(tmp_path / "nope.jsonl")


def test_vocabulary_with_minimum_frequency_is_d2ls(tmp_path):
    split = read_snli(write_snli(tmp_path, "train", "txt"))
    premises, hypotheses, _ = d2l_read_snli(tmp_path / "snli_1.0_train.txt")
    counter = collections.Counter(t for line in premises + hypotheses for t in line.split())
    for min_freq in (1, 2, 5):
        vocab = snli_vocab(split, min_freq=min_freq)
        # D2L's Vocab: '<unk>', the reserved '<pad>', then tokens with freq >= min_freq.
        d2l_tokens = {"<unk>", "<pad>"} | {t for t, c in counter.items() if c >= min_freq}
        assert set(vocab) == d2l_tokens
        assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1
        assert sorted(vocab.values()) == list(range(len(vocab)))
    # min_freq 5 (D2L's), counted by hand over the 9 kept pairs (a premise
    # counts once per pair; the '-' pair is not counted): 'on' 3 + 1 + 3,
    # 'horse' 3 + 2, 'at' 3 + 2; 'The' only 4 ('The men' is the '-' pair).
    vocab5 = snli_vocab(split)
    assert set(vocab5) == {"<pad>", "<unk>", "a", ".", "A", "on", "is", "person", "boy",
                           "horse", "at"}


def test_word_vectors_glove_format(tmp_path):
    vocab = {"<pad>": 0, "<unk>": 1, "the": 2, "horse": 3, "zyzzyva": 4}
    path = tmp_path / "glove.6B.100d.txt"
    written = write_glove(path, ["the", ",", "horse", "."], dim=100)
    vectors, found = load_word_vectors(path, vocab)
    assert vectors.shape == (5, 100) and found == 2
    torch.testing.assert_close(vectors[2], written["the"], atol=0, rtol=0)
    torch.testing.assert_close(vectors[3], written["horse"], atol=0, rtol=0)
    assert torch.all(vectors[[0, 1, 4]] == 0)          # not in the file: zeros, as D2L
    with pytest.raises(ValueError, match=r"glove.6B.100d.txt, line 1: the word 'the' has 100 "
                                         r"values, expected 50"):
        load_word_vectors(path, vocab, dim=50)


@pytest.mark.parametrize("text, match", [
    ("the 0.1 0.2 0.3\nhorse 0.1 0.2\n", r"bad.txt, line 2: the word 'horse' has 2 values, "
                                          r"expected 3"),
    ("the 0.1 0.2 0.3\n\nhorse 0.1 abc 0.3\n", r"bad.txt, line 3: value 'abc' of the word "
                                                r"'horse' is not a number"),
    ("the\n", r"bad.txt, line 1: the word 'the' has no vector values"),
    ("\n\n", r"bad.txt: no word vectors in the file"),
])
def test_word_vector_errors_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_word_vectors(path, {"the": 0, "horse": 1})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_word_vectors(tmp_path / "glove.6B.100d.txt", {"the": 0})
    assert not os.path.exists(tmp_path / "glove.6B.100d.txt")
