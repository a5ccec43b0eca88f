"""Causal self-attention over a batch of token sequences, as message passing.

Builds a batch of three sentences of different lengths, the causal edge set
(each token attends to itself and to the tokens before it), and one
graphformer TransformerLayer; prints the output and, for the first sentence,
the attention weights of every head on every edge.

    python scripts/attention_example.py
"""
import torch

from graphformer import patterns
from graphformer.nn import TransformerLayer

SENTENCES = [
    "tokens become graph nodes",
    "masks become edge sets",
    "attention is message passing over a causal edge set",
]


def main() -> None:
    torch.manual_seed(0)
    tokens = [s.split() for s in SENTENCES]
    vocab = {w: k for k, w in enumerate(sorted({w for t in tokens for w in t}))}
    ids = torch.tensor([vocab[w] for t in tokens for w in t])
    ptr = torch.tensor([0] + [len(t) for t in tokens]).cumsum(0)  # graph boundaries

    edge_index = patterns.causal(ptr)  # [2, E]: row 0 key j, row 1 query i
    embed = torch.nn.Embedding(len(vocab), 32)
    layer = TransformerLayer(32, heads=4, dropout=0.0).eval()

    with torch.no_grad():
        out, _, alpha = layer(embed(ids), edge_index, return_attention_weights=True)

    print(f"{len(tokens)} sequences, {ids.numel()} tokens, {edge_index.size(1)} causal edges")
    print(f"output: {tuple(out.shape)}  attention weights: {tuple(alpha.shape)} (edges x heads)")
    print("output (first token of each sequence, first 6 channels):")
    for b in range(len(tokens)):
        row = out[ptr[b], :6].tolist()
        print(f"  seq {b}: " + " ".join(f"{v:+.3f}" for v in row))
    print("attention weights of sequence 0 (query <- key: head 0..3):")
    first = edge_index[1] < ptr[1]
    for (j, i), a in zip(edge_index[:, first].t().tolist(), alpha[first].tolist()):
        print(f"  {tokens[0][i]:>6} <- {tokens[0][j]:<6} " + " ".join(f"{v:.3f}" for v in a))
    sums = torch.zeros(ids.numel(), alpha.size(1)).index_add(0, edge_index[1], alpha)
    print(f"weights sum to 1 over each query's keys: {torch.allclose(sums, torch.ones_like(sums))}")


if __name__ == "__main__":
    main()
