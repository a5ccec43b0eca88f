"""Train transformers at the size RASP predicts, and one layer / one head fewer.

The experiment of Weiss, Goldberg & Yahav (2021), "Thinking Like Transformers"
(Sec. 5), at a CPU scale: for each classic program, transformers built from
graphformer layers (:class:`graphformer.nn.TransformerLayer` over the full
edge set, or the causal one for Dyck, whose selectors only look back) are
trained on the program's input/output pairs at the size
:func:`graphformer.rasp.program_shape` predicts, with one layer fewer and with
one head fewer (same data, seeds, steps, optimiser). For each it reports the
test accuracy (per token and per sequence) and how much of the learned
attention falls on the program's selectors
(:func:`graphformer.rasp.attention_match`: per compiled head, the best learned
head of the same layer; ``chance`` is the share uniform attention over the
model's edge set would get). The compiled model
(:func:`graphformer.rasp.compile`) is run on the same test set as a check
(it must be exact), and its heads are drawn next to the learned ones.

Writes to ``--out``: ``results.json``, ``results.md`` (the table) and
``attention_<program>.png`` (learned heads of the predicted-size model, left,
and the compiled heads, right, one row per layer, on one test sequence).

    python scripts/rasp_train.py --out runs/rasp            # all programs
    python scripts/rasp_train.py --programs reverse hist --steps 2000 --seeds 0 1
    python scripts/rasp_train.py --quick --out /tmp/rasp     # a tiny run (tests)
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from graphformer import patterns, rasp
from graphformer.nn import TransformerLayer
from graphformer.patterns import node_info
from graphformer.viz import dense_attention


@dataclass(frozen=True)
class Task:
    """A classic program, its input vocabulary, and its attention edge set."""

    name: str
    program: Callable[[rasp.SOp], rasp.SOp]
    vocab: Tuple[int, ...]
    causal: bool = False
    dyck_pairs: Tuple[Tuple[int, int], ...] = ()


def _sort(t: rasp.SOp) -> rasp.SOp:
    return rasp.make_sort(t, t)


TASKS: Dict[str, Task] = {t.name: t for t in [
    Task("reverse", rasp.make_reverse, tuple(range(5))),
    Task("hist", rasp.make_hist, tuple(range(5))),
    Task("double_hist", rasp.make_hist2, tuple(range(4))),
    Task("sort", _sort, tuple(range(5))),
    Task("most_freq", rasp.make_most_freq, tuple(range(5))),
    Task("dyck1", rasp.make_dyck1, (0, 1), causal=True, dyck_pairs=((0, 1),)),
    Task("dyck2", rasp.make_dyck2, (0, 1, 2, 3), causal=True, dyck_pairs=((0, 1), (2, 3))),
]}


@dataclass
class Config:
    programs: List[str] = field(default_factory=lambda: list(TASKS))
    steps: int = 1500
    seeds: List[int] = field(default_factory=lambda: [0])
    max_len: int = 8
    channels: int = 64
    batch_size: int = 64
    lr: float = 3e-3
    train_size: int = 4000
    test_size: int = 1000
    out: str = "runs/rasp"
    log_every: int = 250
    bos: bool = True

    def __post_init__(self) -> None:
        unknown = [p for p in self.programs if p not in TASKS]
        if unknown:
            raise ValueError(f"unknown programs {unknown}; choose from {sorted(TASKS)}")
        for name in ("steps", "max_len", "channels", "batch_size", "train_size", "test_size",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ValueError("'seeds' is empty")
        if self.channels % 2:
            raise ValueError(f"'channels' must be even (2 heads), got {self.channels}")


# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #
def _dyck_sequence(rng: random.Random, task: Task, length: int) -> List[int]:
    """Half the time a random walk of opens and closes (mostly valid prefixes,
    sometimes balanced), one token of it corrupted a third of those times;
    otherwise uniform random tokens: all three labels occur often."""
    if rng.random() < 0.5:
        return [rng.choice(task.vocab) for _ in range(length)]
    seq: List[int] = []
    stack: List[int] = []
    for _ in range(length):
        if stack and rng.random() < 0.5:
            seq.append(stack.pop())
        else:
            o, c = rng.choice(task.dyck_pairs)
            seq.append(o)
            stack.append(c)
    if rng.random() < 0.33:
        seq[rng.randrange(length)] = rng.choice(task.vocab)
    return seq


def make_data(task: Task, size: int, max_len: int, seed: int) -> List[List[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(size):
        n = rng.randint(1, max_len)
        out.append(_dyck_sequence(rng, task, n) if task.dyck_pairs else
                   [rng.choice(task.vocab) for _ in range(n)])
    return out


@dataclass
class Batch:
    """Sequences for the program (``tokens``, ``ptr``: the RASP batch) and for
    the trained models (``index``, ``model_ptr``: vocabulary indices, with a
    beginning-of-sequence token of index ``len(vocab)`` in front of each
    sequence when ``bos``; ``original`` maps the model's nodes to the RASP
    batch's, ``-1`` for BOS)."""

    tokens: Tensor       # [N] token ids
    ptr: Tensor          # [B + 1]
    labels: Tensor       # [N] class index of the program's output
    context: rasp.Context
    output: rasp.SOp     # the program evaluated on the batch
    index: Tensor        # [N'] vocabulary index per model node
    model_ptr: Tensor    # [B + 1]
    original: Tensor     # [N'] RASP node of each model node, -1 for BOS


def make_batch(task: Task, seqs: Sequence[Sequence[int]], classes: Tensor,
               bos: bool) -> Batch:
    ctx = rasp.Context.from_sequences(seqs)
    out = task.program(rasp.tokens(ctx))
    labels = (out.values.reshape(-1, 1) == classes.reshape(1, -1)).to(torch.uint8).argmax(1)
    lookup = {v: k for k, v in enumerate(task.vocab)}
    index = torch.tensor([lookup[v] for v in ctx.tokens.tolist()], dtype=torch.long)
    if not bos:
        return Batch(ctx.tokens, ctx.ptr, labels, ctx, out, index, ctx.ptr,
                     torch.arange(ctx.num_nodes))
    sizes = ctx.ptr.diff() + 1
    model_ptr = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    original = torch.full((int(model_ptr[-1]),), -1, dtype=torch.long)
    is_token = torch.ones_like(original, dtype=torch.bool)
    is_token[model_ptr[:-1]] = False
    original[is_token] = torch.arange(ctx.num_nodes)
    model_index = torch.full_like(original, len(task.vocab))
    model_index[is_token] = index
    return Batch(ctx.tokens, ctx.ptr, labels, ctx, out, model_index, model_ptr, original)


# --------------------------------------------------------------------------- #
# the trained model
# --------------------------------------------------------------------------- #
class Net(nn.Module):
    """Token + position embeddings, ``layers`` pre-norm ``TransformerLayer``s
    with ``heads`` heads over the full (or causal) edge set, a linear readout
    (no layer at all for ``layers=0``: a per-token classifier)."""

    def __init__(self, vocab: int, max_len: int, classes: int, channels: int, layers: int,
                 heads: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.token = nn.Embedding(vocab + 1, channels)      # + BOS
        self.position = nn.Embedding(max_len + 1, channels)
        self.layers = nn.ModuleList(
            TransformerLayer(channels, heads=heads, ff_channels=2 * channels, dropout=0.0,
                             norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(channels)
        self.readout = nn.Linear(channels, classes)

    def edges(self, ptr: Tensor) -> Tensor:
        return patterns.causal(ptr) if self.causal else patterns.full(ptr)

    def forward(self, token_index: Tensor, ptr: Tensor, return_attention: bool = False):
        info = node_info(ptr)
        x = self.token(token_index) + self.position(info.pos)
        edge_index = self.edges(ptr)
        alphas = []
        for layer in self.layers:
            if return_attention:
                x, _, alpha = layer(x, edge_index, return_attention_weights=True, batch=info.graph)
                alphas.append(alpha)
            else:
                x = layer(x, edge_index, batch=info.graph).x
        logits = self.readout(self.norm(x))
        return (logits, edge_index, alphas) if return_attention else logits


def _accuracy(pred: Tensor, labels: Tensor, ptr: Tensor) -> Tuple[float, float]:
    ok = pred == labels
    graph = node_info(ptr).graph
    wrong = torch.zeros(ptr.numel() - 1, dtype=torch.long).index_add_(0, graph, (~ok).long())
    return float(ok.float().mean()), float((wrong == 0).float().mean())


def _uniform_alpha(edge_index: Tensor, num_nodes: int) -> Tensor:
    deg = torch.bincount(edge_index[1], minlength=num_nodes).double()
    return (1.0 / deg[edge_index[1]]).unsqueeze(1)


def attention_scores(alphas: List[Tensor], edge_index: Tensor, selectors: List[List],
                     original: Tensor) -> Tuple[List[List[float]], List[List[float]]]:
    """Per compiled head ``(l, h)`` with a learned layer ``l``: the best
    ``attention_match`` over the learned heads of that layer, and chance (the
    share of uniform attention over the edge set). Edges from or to BOS are
    left out: the share is of the attention mass on the sequence's tokens."""
    uniform = _uniform_alpha(edge_index, original.numel())
    src, dst = original[edge_index[0]], original[edge_index[1]]
    keep = (src >= 0) & (dst >= 0)
    edge_index = torch.stack([src[keep], dst[keep]])
    alphas = [a[keep] for a in alphas]
    uniform = uniform[keep]
    best, chance = [], []
    for layer, sels in enumerate(selectors):
        if layer >= len(alphas):
            break
        best.append([float(rasp.attention_match(alphas[layer], edge_index, s).max())
                     for s in sels])
        chance.append([float(rasp.attention_match(uniform, edge_index, s)[0]) for s in sels])
    return best, chance


def train_one(task: Task, cfg: Config, layers: int, heads: int, seed: int, classes: Tensor,
              train: Batch, test: Batch, selectors: List[List], label: str) -> Dict:
    torch.manual_seed(seed)
    model = Net(len(task.vocab), cfg.max_len, classes.numel(), cfg.channels, layers, heads,
                task.causal)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                pct_start=0.1)
    rng = random.Random(seed)
    bounds = train.model_ptr.tolist()
    starts, stops = bounds[:-1], bounds[1:]
    targets = torch.full_like(train.original, -100)      # BOS: no loss
    targets[train.original >= 0] = train.labels
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    t0 = time.time()
    for step in range(1, cfg.steps + 1):
        pick = rng.sample(range(len(starts)), min(cfg.batch_size, len(starts)))
        nodes = torch.cat([torch.arange(starts[k], stops[k]) for k in pick])
        ptr = torch.tensor([0] + [stops[k] - starts[k] for k in pick]).cumsum(0)
        model.train()
        loss = loss_fn(model(train.index[nodes], ptr), targets[nodes])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            print(f"    {label} step {step}/{cfg.steps} loss {loss.item():.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        logits, edge_index, alphas = model(test.index, test.model_ptr, return_attention=True)
    pred = logits.argmax(-1)[test.original >= 0]
    tok_acc, seq_acc = _accuracy(pred, test.labels, test.ptr)
    best, chance = attention_scores(alphas, edge_index, selectors, test.original)
    return {"layers": layers, "heads": heads, "seed": seed, "token_acc": tok_acc,
            "seq_acc": seq_acc, "match": best, "chance": chance,
            "seconds": time.time() - t0, "model": model, "alphas": alphas,
            "edge_index": edge_index}


# --------------------------------------------------------------------------- #
# pictures and tables
# --------------------------------------------------------------------------- #
def draw(path: Path, task: Task, test: Batch, learned: Dict, compiled: rasp.CompiledProgram,
         graph: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with torch.no_grad():
        _, comp_attn = compiled(test.tokens, test.ptr, return_attention=True)
    labels = compiled.head_labels()
    rows = max(len(learned["alphas"]), len(comp_attn))
    cols = learned["heads"] + max(compiled.heads_per_layer, default=0)
    fig = Figure(figsize=(max(2.4 * cols, 6.0), 2.4 * rows + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    a, b = int(test.ptr[graph]), int(test.ptr[graph + 1])
    toks = [str(t) for t in test.tokens[a:b].tolist()]
    bos = test.model_ptr.numel() and int(test.model_ptr[-1]) != int(test.ptr[-1])
    model_toks = (["BOS"] if bos else []) + toks
    for r in range(rows):
        panels = []
        if r < len(learned["alphas"]):
            dense = dense_attention(learned["edge_index"], learned["alphas"][r], test.model_ptr,
                                    graph)
            panels += [(dense[h], f"learned L{r + 1} H{h + 1}", model_toks)
                       for h in range(dense.shape[0])]
        else:
            panels += [(None, "", [])] * learned["heads"]
        if r < len(comp_attn):
            ei, alpha, _ = comp_attn[r]
            dense = dense_attention(ei, alpha, test.ptr, graph)
            panels += [(dense[h], f"compiled L{r + 1}: {labels[r][h]}"[:40], toks)
                       for h in range(dense.shape[0])]
        for c, (mat, title, names) in enumerate(panels):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            if mat is None:
                ax.axis("off")
                continue
            ax.set_facecolor("#d9d9d9")
            ax.imshow(mat, cmap="viridis", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.set_xticks(range(len(names)), names, fontsize=6)
            ax.set_yticks(range(len(names)), names, fontsize=6)
    fig.suptitle(f"{task.name}: learned (L, H) = ({learned['layers']}, {learned['heads']}) "
                 "vs compiled heads\nrows = layers; query i = row, key j = column", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def _mean_std(xs: List[float]) -> str:
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{100 * xs[0]:.1f}"
    return f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


def _flat(nested: List[List[float]]) -> List[float]:
    return [v for row in nested for v in row]


def markdown(results: Dict) -> str:
    lines = [
        "| program | predicted (L, H) | seq acc % at (L, H) | at (L-1, H) | at (L, H-1) "
        "| token acc % at (L, H) / (L-1, H) / (L, H-1) | attention on selectors % "
        "(chance) | compiled model acc % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in results["programs"].items():
        L, H = res["shape"]
        cells, toks = [], []
        for variant in ("predicted", "layer_fewer", "head_fewer"):
            runs = res["variants"].get(variant)
            if not runs:
                cells.append("n/a")
                toks.append("n/a")
                continue
            cells.append(_mean_std([r["seq_acc"] for r in runs]))
            toks.append(_mean_std([r["token_acc"] for r in runs]))
        pred = res["variants"]["predicted"]
        match = statistics.mean(statistics.mean(_flat(r["match"])) for r in pred)
        chance = statistics.mean(statistics.mean(_flat(r["chance"])) for r in pred)
        lines.append(f"| {name} | ({L}, {H}) | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{' / '.join(toks)} | {100 * match:.1f} ({100 * chance:.1f}) | "
                     f"{100 * res['compiled_seq_acc']:.1f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def run(cfg: Config) -> Dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: Dict = {"config": asdict(cfg), "programs": {}}
    t_all = time.time()
    for name in cfg.programs:
        task = TASKS[name]
        compiled = rasp.compile(task.program, cfg.max_len, task.vocab)
        classes = compiled.output_values
        train = make_batch(task, make_data(task, cfg.train_size, cfg.max_len, 1000), classes,
                           cfg.bos)
        test = make_batch(task, make_data(task, cfg.test_size, cfg.max_len, 2000), classes,
                          cfg.bos)
        L, H = rasp.program_shape(test.output)
        selectors = rasp.head_selectors(test.output)
        with torch.no_grad():
            comp_pred = compiled.decode(compiled(test.tokens, test.ptr))
        comp_tok, comp_seq = _accuracy((comp_pred.reshape(-1, 1) == classes.reshape(1, -1))
                                       .to(torch.uint8).argmax(1), test.labels, test.ptr)
        print(f"{name}: predicted (L, H) = ({L}, {H}); compiled model {compiled}: test "
              f"sequence accuracy {100 * comp_seq:.1f}%", flush=True)
        variants = {"predicted": (L, H), "layer_fewer": (L - 1, H)}
        if H > 1:
            variants["head_fewer"] = (L, H - 1)
        res: Dict = {"shape": [L, H], "heads_per_layer": compiled.heads_per_layer,
                     "compiled_seq_acc": comp_seq, "compiled_token_acc": comp_tok,
                     "variants": {}}
        for variant, (layers, heads) in variants.items():
            runs = []
            for seed in cfg.seeds:
                r = train_one(task, cfg, layers, heads, seed, classes, train, test,
                              selectors, f"{name} {variant} ({layers}, {heads}) seed {seed}")
                print(f"  {name} {variant} ({layers}, {heads}) seed {seed}: token acc "
                      f"{100 * r['token_acc']:.1f}%, sequence acc {100 * r['seq_acc']:.1f}%, "
                      f"attention on selectors {[round(m, 3) for m in _flat(r['match'])]} "
                      f"(chance {[round(c, 3) for c in _flat(r['chance'])]}), "
                      f"{r['seconds']:.0f}s",
                      flush=True)
                if variant == "predicted" and seed == cfg.seeds[0]:
                    graph = max(range(test.ptr.numel() - 1),
                                key=lambda g: int(test.ptr[g + 1] - test.ptr[g]))
                    draw(out / f"attention_{name}.png", task, test, r, compiled, graph)
                runs.append({k: v for k, v in r.items()
                             if k not in ("model", "alphas", "edge_index")})
            res["variants"][variant] = runs
        results["programs"][name] = res
        (out / "results.json").write_text(json.dumps(results, indent=2))
    results["seconds"] = time.time() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "results.md").write_text(table)
    print(table)
    print(f"total {results['seconds']:.0f}s; wrote {out}/results.json, results.md, "
          "attention_*.png")
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", nargs="+", default=list(TASKS), choices=sorted(TASKS))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--max-len", type=int, default=8)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--out", default="runs/rasp")
    p.add_argument("--no-bos", action="store_true",
                   help="no beginning-of-sequence token in the trained models' inputs")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run: 20 steps, max_len 5, small data (for tests)")
    a = p.parse_args(argv)
    cfg = Config(programs=a.programs, steps=a.steps, seeds=a.seeds, max_len=a.max_len,
                 channels=a.channels, batch_size=a.batch_size, lr=a.lr,
                 train_size=a.train_size, test_size=a.test_size, out=a.out, bos=not a.no_bos)
    if a.quick:
        cfg = Config(programs=a.programs, steps=20, seeds=a.seeds[:1], max_len=5,
                     channels=16, batch_size=16, lr=a.lr, train_size=64, test_size=32,
                     out=a.out, log_every=10, bos=not a.no_bos)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
