"""A few SNLI 1.0 pairs written in the exact distributed formats (the
``.jsonl`` and the tab-separated ``.txt`` of ``snli_1.0.zip``), and a tiny
GloVe-format vector file, for the loader and script tests."""
import json
from pathlib import Path

import torch

_P1 = ("A person on a horse jumps over a broken down airplane.",
       "( ( ( A person ) ( on ( a horse ) ) ) ( ( jumps ( over ( a ( broken ( down airplane ) ) "
       ") ) ) . ) )",
       "(ROOT (S (NP (NP (DT A) (NN person)) (PP (IN on) (NP (DT a) (NN horse)))) (VP (VBZ jumps) "
       "(PP (IN over) (NP (DT a) (JJ broken) (JJ down) (NN airplane)))) (. .)))")
_P2 = ("Children smiling and waving at camera",
       "( Children ( ( ( smiling and ) waving ) ( at camera ) ) )",
       "(ROOT (NP (S (NP (NNP Children)) (VP (VBG smiling) (CC and) (VBG waving) (PP (IN at) "
       "(NP (NN camera)))))))")
_P3 = ("A boy is jumping on skateboard in the middle of a red bridge.",
       "( ( A boy ) ( ( is ( ( jumping ( on skateboard ) ) ( in ( ( the middle ) ( of ( a ( red "
       "bridge ) ) ) ) ) ) ) . ) )",
       "(ROOT (S (NP (DT A) (NN boy)) (VP (VBZ is) (VP (VBG jumping) (PP (IN on) (NP (NN "
       "skateboard))) (PP (IN in) (NP (NP (DT the) (NN middle)) (PP (IN of) (NP (DT a) (JJ red) "
       "(NN bridge))))))) (. .)))")
_P4 = ("Two women are embracing while holding to go packages.",
       "( ( Two women ) ( ( are ( embracing ( while ( holding ( to ( go packages ) ) ) ) ) ) . ) )",
       "(ROOT (S (NP (CD Two) (NNS women)) (VP (VBP are) (VP (VBG embracing) (SBAR (IN while) "
       "(S (NP (VBG holding)) (VP (TO to) (VP (VB go) (NP (NNS packages)))))))) (. .)))")

# (gold_label, annotator labels, premise, hypothesis (text, binary parse, parse), caption, pair)
RECORDS = [
    ("neutral", ["neutral"], _P1,
     ("A person is training his horse for a competition.",
      "( ( A person ) ( ( is ( ( training ( his horse ) ) ( for ( a competition ) ) ) ) . ) )",
      "(ROOT (S (NP (DT A) (NN person)) (VP (VBZ is) (VP (VBG training) (NP (PRP$ his) (NN "
      "horse)) (PP (IN for) (NP (DT a) (NN competition))))) (. .)))"),
     "3416050480.jpg#4", "3416050480.jpg#4r1n"),
    ("contradiction", ["contradiction"], _P1,
     ("A person is at a diner, ordering an omelette.",
      "( ( A person ) ( ( ( ( is ( at ( a diner ) ) ) , ) ( ordering ( an omelette ) ) ) . ) )",
      "(ROOT (S (NP (DT A) (NN person)) (VP (VBZ is) (PP (IN at) (NP (DT a) (NN diner))) (, ,) "
      "(S (VP (VBG ordering) (NP (DT an) (NN omelette))))) (. .)))"),
     "3416050480.jpg#4", "3416050480.jpg#4r1c"),
    ("entailment", ["entailment"], _P1,
     ("A person is outdoors, on a horse.",
      "( ( A person ) ( ( ( ( is outdoors ) , ) ( on ( a horse ) ) ) . ) )",
      "(ROOT (S (NP (DT A) (NN person)) (VP (VBZ is) (ADVP (RB outdoors)) (, ,) (PP (IN on) "
      "(NP (DT a) (NN horse)))) (. .)))"),
     "3416050480.jpg#4", "3416050480.jpg#4r1e"),
    ("neutral", ["neutral"], _P2,
     ("They are smiling at their parents",
      "( They ( are ( smiling ( at ( their parents ) ) ) ) )",
      "(ROOT (S (NP (PRP They)) (VP (VBP are) (VP (VBG smiling) (PP (IN at) (NP (PRP$ their) "
      "(NNS parents)))))))"),
     "2267923837.jpg#2", "2267923837.jpg#2r1n"),
    ("entailment", ["entailment"], _P2,
     ("There are children present",
      "( There ( ( are children ) present ) )",
      "(ROOT (S (NP (EX There)) (VP (VBP are) (NP (NNS children)) (ADVP (RB present)))))"),
     "2267923837.jpg#2", "2267923837.jpg#2r1e"),
    ("contradiction", ["contradiction"], _P2,
     ("The kids are frowning",
      "( ( The kids ) ( are frowning ) )",
      "(ROOT (S (NP (DT The) (NNS kids)) (VP (VBP are) (VP (VBG frowning)))))"),
     "2267923837.jpg#2", "2267923837.jpg#2r1c"),
    ("contradiction", ["contradiction"], _P3,
     ("The boy skates down the sidewalk.",
      "( ( The boy ) ( ( skates ( down ( the sidewalk ) ) ) . ) )",
      "(ROOT (S (NP (DT The) (NN boy)) (VP (VBZ skates) (PRT (RP down)) (NP (DT the) (NN "
      "sidewalk))) (. .)))"),
     "3691670743.jpg#0", "3691670743.jpg#0r1c"),
    ("-", ["neutral", "contradiction", "entailment", "neutral", "contradiction"], _P4,
     ("The men are fighting outside a deli.",
      "( ( The men ) ( ( are ( fighting ( outside ( a deli ) ) ) ) . ) )",
      "(ROOT (S (NP (DT The) (NNS men)) (VP (VBP are) (VP (VBG fighting) (PP (IN outside) (NP "
      "(DT a) (NN deli))))) (. .)))"),
     "4705552913.jpg#2", "4705552913.jpg#2r1c"),
    ("entailment", ["entailment"], _P3,
     ("The boy does a skateboarding trick.",
      "( ( The boy ) ( ( does ( a ( skateboarding trick ) ) ) . ) )",
      "(ROOT (S (NP (DT The) (NN boy)) (VP (VBZ does) (NP (DT a) (NNP skateboarding) (NN "
      "trick))) (. .)))"),
     "3691670743.jpg#0", "3691670743.jpg#0r1e"),
    ("neutral", ["neutral"], _P3,
     ("The boy is wearing safety equipment.",
      "( ( The boy ) ( ( is ( wearing ( safety equipment ) ) ) . ) )",
      "(ROOT (S (NP (DT The) (NN boy)) (VP (VBZ is) (VP (VBG wearing) (NP (NN safety) (NN "
      "equipment)))) (. .)))"),
     "3691670743.jpg#0", "3691670743.jpg#0r1n"),
]

TXT_HEADER = ["gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
              "sentence2_parse", "sentence1", "sentence2", "captionID", "pairID", "label1",
              "label2", "label3", "label4", "label5"]


def jsonl_line(rec) -> str:
    gold, annot, (s1, b1, p1), (s2, b2, p2), caption, pair = rec
    # The key order of the distributed files.
    return json.dumps({"annotator_labels": annot, "captionID": caption, "gold_label": gold,
                       "pairID": pair, "sentence1": s1, "sentence1_binary_parse": b1,
                       "sentence1_parse": p1, "sentence2": s2, "sentence2_binary_parse": b2,
                       "sentence2_parse": p2})


def txt_line(rec) -> str:
    gold, annot, (s1, b1, p1), (s2, b2, p2), caption, pair = rec
    labels = annot + [""] * (5 - len(annot))
    return "\t".join([gold, b1, b2, p1, p2, s1, s2, caption, pair] + labels)


def write_snli(folder: Path, split: str, fmt: str, records=RECORDS) -> Path:
    """``folder/snli_1.0_<split>.<fmt>`` in the distributed format."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"snli_1.0_{split}.{fmt}"
    if fmt == "jsonl":
        text = "".join(jsonl_line(r) + "\n" for r in records)
    else:
        text = "\t".join(TXT_HEADER) + "\n" + "".join(txt_line(r) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
    return path


def write_glove(path: Path, words, dim: int, seed: int = 0) -> dict:
    """A GloVe-format text file (``word v1 ... vd``, 6 decimals as in
    glove.6B) with random vectors; returns ``{word: tensor}`` as written."""
    gen = torch.Generator().manual_seed(seed)
    vectors, lines = {}, []
    for w in words:
        v = torch.randn(dim, generator=gen)
        text = " ".join(f"{x:.6f}" for x in v.tolist())
        vectors[w] = torch.tensor([float(x) for x in text.split(" ")])
        lines.append(f"{w} {text}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vectors
