"""Train and evaluate the decomposable attention model on SNLI 1.0 with Dive
into Deep Learning's settings (section 16.5): GloVe 6B 100-d embeddings
(fine-tuned), embedding 100, hidden 200, dropout 0.2, Adam at lr 0.001, 4
epochs, batches of 256 pairs, sentences truncated to 50 tokens, vocabulary of
the training set with min_freq 5, loss summed over the batch (D2L's
``train_ch13``). D2L reports train accuracy 0.805 and test accuracy 0.828
after 4 epochs.

Neither data set can be downloaded here. Put them in place first:

- SNLI 1.0: ``snli_1.0_train``, ``snli_1.0_test`` (and optionally
  ``snli_1.0_dev``) as ``.jsonl`` or ``.txt``, in ``--data-dir`` (default
  ``data/snli``) or in its ``snli_1.0/`` subfolder, i.e. unzip
  https://nlp.stanford.edu/projects/snli/snli_1.0.zip in ``data/snli``.
- GloVe: ``glove.6B.100d.txt`` from https://nlp.stanford.edu/data/glove.6B.zip
  at ``--glove`` (default ``data/glove.6B.100d.txt``), or pass ``--no-glove``
  to start from random embeddings.

Differences from D2L, by design: sentences are graphs of their real tokens,
so the 50-token padding is not needed and ``<pad>`` takes no part in the
attention or the sums (``--pad`` pads to 50 with ``<pad>`` tokens as D2L
does); vocabulary ids are in order of first appearance rather than D2L's
(same token set); pairs with an empty sentence are dropped (and counted).

    python scripts/snli_decomposable.py --data-dir data/snli --glove data/glove.6B.100d.txt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from graphformer.data.snli import (
    GLOVE_URL,
    SNLISplit,
    load_snli,
    load_word_vectors,
    snli_file,
    snli_vocab,
)
from graphformer.models.decomposable import DecomposableAttention, DecomposableAttentionConfig


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/snli"))
    parser.add_argument("--glove", type=Path, default=Path("data/glove.6B.100d.txt"))
    parser.add_argument("--no-glove", action="store_true",
                        help="random embeddings instead of GloVe (not D2L's setting)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--num-steps", type=int, default=50,
                        help="sentences are truncated to this many tokens")
    parser.add_argument("--pad", action="store_true",
                        help="also pad every sentence to --num-steps with <pad> tokens, "
                             "which then take part in attention and sums, as in D2L")
    parser.add_argument("--min-freq", type=int, default=5)
    parser.add_argument("--embed", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lowercase", action="store_true",
                        help="lowercase tokens (D2L does not)")
    parser.add_argument("--max-train", type=int, default=None,
                        help="use only the first N training pairs (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "num_steps", "min_freq", "embed", "hidden"):
        low = 0 if name == "epochs" else 1
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}")
    return args


def encode(sentences: List[List[str]], vocab: Dict[Any, int], num_steps: int,
           pad: bool) -> List[Tensor]:
    """Token ids, truncated to ``num_steps`` (and padded to it with ``pad``)."""
    unk, pad_id = vocab["<unk>"], vocab["<pad>"]
    out = []
    for tokens in sentences:
        ids = [vocab.get(t, unk) for t in tokens[:num_steps]]
        if pad:
            ids += [pad_id] * (num_steps - len(ids))
        out.append(torch.tensor(ids, dtype=torch.long))
    return out


def token_batch(seqs: Sequence[Tensor]) -> SimpleNamespace:
    """The ``x`` / ``ptr`` of :func:`graphformer.data.from_token_batch`,
    without building one ``Data`` per sentence."""
    lengths = torch.tensor([s.numel() for s in seqs])
    ptr = torch.zeros(len(seqs) + 1, dtype=torch.long)
    ptr[1:] = lengths.cumsum(0)
    return SimpleNamespace(x=torch.cat(list(seqs)), ptr=ptr)


@torch.no_grad()
def accuracy(model: DecomposableAttention, premises: List[Tensor], hypotheses: List[Tensor],
             labels: Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for s in range(0, len(premises), batch_size):
        logits = model(token_batch(premises[s:s + batch_size]),
                       token_batch(hypotheses[s:s + batch_size]))
        correct += int((logits.argmax(-1) == labels[s:s + batch_size]).sum())
    model.train()
    return correct / max(len(premises), 1)


def _missing(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        train_path, test_path = snli_file(args.data_dir, "train"), snli_file(args.data_dir, "test")
    except FileNotFoundError as err:
        _missing(str(err))
    if not args.no_glove and not args.glove.is_file():
        _missing(f"GloVe vectors not found at {args.glove}: put glove.6B.100d.txt there (it is "
                 f"in {GLOVE_URL}; it cannot be downloaded from this machine), pass --glove "
                 f"PATH, or pass --no-glove to start from random embeddings.")
    splits: Dict[str, SNLISplit] = {"train": load_snli(args.data_dir, "train", args.lowercase),
                                    "test": load_snli(args.data_dir, "test", args.lowercase)}
    try:
        splits["dev"] = load_snli(args.data_dir, "dev", args.lowercase)
    except FileNotFoundError:
        pass
    assert splits["train"].path == train_path and splits["test"].path == test_path
    for split in splits.values():
        print(split.summary())
    train = splits["train"]
    vocab = snli_vocab(train, min_freq=args.min_freq)
    print(f"vocabulary: {len(vocab)} tokens (min_freq {args.min_freq}, with <pad> and <unk>)")

    torch.manual_seed(args.seed)
    config = DecomposableAttentionConfig(vocab_size=len(vocab), num_classes=3,
                                         embed_dim=args.embed, hidden=args.hidden,
                                         dropout=args.dropout)
    model = DecomposableAttention(config)
    if not args.no_glove:
        vectors, found = load_word_vectors(args.glove, vocab, dim=args.embed)
        with torch.no_grad():
            model.embedding.weight.copy_(vectors)
        print(f"GloVe {args.glove.name}: {found} of {len(vocab)} vocabulary tokens found "
              f"(the others start at zero, as in D2L)")
    print(repr(model))

    data = {name: (encode(s.premises, vocab, args.num_steps, args.pad),
                   encode(s.hypotheses, vocab, args.num_steps, args.pad), s.labels)
            for name, s in splits.items()}
    p_tr, h_tr, y_tr = data["train"]
    if args.max_train is not None:
        p_tr, h_tr, y_tr = p_tr[:args.max_train], h_tr[:args.max_train], y_tr[:args.max_train]
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(p_tr), generator=gen).tolist()
        total_loss, correct = 0.0, 0
        for s in range(0, len(order), args.batch_size):
            idx = order[s:s + args.batch_size]
            logits = model(token_batch([p_tr[k] for k in idx]), token_batch([h_tr[k] for k in idx]))
            y = y_tr[idx]
            loss = F.cross_entropy(logits, y, reduction="sum")  # D2L: l.sum().backward()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += loss.item()
            correct += int((logits.argmax(-1) == y).sum())
        row = {"epoch": epoch, "loss": total_loss / len(order), "train_acc": correct / len(order)}
        for name in ("dev", "test"):
            if name in data:
                row[f"{name}_acc"] = accuracy(model, *data[name], batch_size=args.batch_size)
        history.append(row)
        print(f"epoch {epoch}: loss {row['loss']:.4f}  train acc {row['train_acc']:.4f}"
              + (f"  dev acc {row['dev_acc']:.4f}" if "dev_acc" in row else "")
              + f"  test acc {row['test_acc']:.4f}  ({time.perf_counter() - t0:.1f}s)",
              flush=True)
    test_acc = accuracy(model, *data["test"], batch_size=args.batch_size)
    print(f"test accuracy {test_acc:.4f} on {len(data['test'][0])} pairs")
    return {"model": model, "vocab": vocab, "history": history, "test_acc": test_acc,
            "data": data}


if __name__ == "__main__":
    main()
