"""Pictures of a graph transformer's attention.

All matplotlib figures are made with :class:`matplotlib.figure.Figure` on the
Agg canvas, never through ``pyplot``: nothing global (backend, style, open
figures) is touched. Every function returns what it drew (a ``Figure``, or the
PNG bytes for the RDKit molecule picture) and, when ``path`` is given, also
writes a PNG there (atomically: a temporary name, then a rename).

Conventions (those of :class:`~graphformer.models.GraphTransformer` with
``return_attention_weights=True``): ``edge_index[0]`` is the source / key
``j``, ``edge_index[1]`` the target / query ``i``; ``weights`` is ``[E, H]``
(one column per head), softmax-normalised over the incoming edges of each
query, so every query's row sums to 1 per head.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
import matplotlib

from ._files import atomic_write

Tensor = torch.Tensor
PathLike = Union[str, Path]

NO_EDGE_COLOUR = "#d9d9d9"  # light grey: "not an attention edge"
HEATMAP_CMAP = "viridis"
MOLECULE_CMAP = "Reds"
#: The largest side of a molecule picture, in pixels. Cairo refuses sides
#: above 32,767 (RDKit then fails with "PNG header not recognized"), and a
#: square picture of that side would take 4 GiB of memory.
MAX_PICTURE_SIDE = 8192

__all__ = ["attention_heatmap", "dense_attention", "atom_bond_scores", "molecule_attention",
           "pattern_attention_mass", "attention_mass_from_model"]


def _new_figure(figsize: Tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Optional[PathLike]) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png")


def _as_2d(weights: Tensor) -> Tensor:
    w = torch.as_tensor(weights).detach().float().cpu()
    return w.unsqueeze(1) if w.dim() == 1 else w


def _graph_range(ptr: Optional[Tensor], graph: int, edge_index: Tensor) -> Tuple[int, int]:
    if ptr is None:
        if graph != 0:
            raise ValueError("without ptr there is one graph: graph must be 0")
        return 0, int(edge_index.max()) + 1 if edge_index.numel() else 0
    ptr = torch.as_tensor(ptr)
    if not 0 <= graph < ptr.numel() - 1:
        raise ValueError(f"graph {graph} out of range: the batch has {ptr.numel() - 1} graphs")
    return int(ptr[graph]), int(ptr[graph + 1])


def dense_attention(edge_index: Tensor, weights: Tensor, ptr: Optional[Tensor] = None,
                    graph: int = 0) -> np.ma.MaskedArray:
    """The ``[H, T, T]`` attention of one sequence as a masked array.

    Entry ``[h, i - start, j - start]`` is the weight head ``h`` puts on the edge
    ``j -> i`` (row = query ``i``, column = key ``j``); pairs that are not
    attention edges are masked. ``ptr`` (the batch's graph boundaries, shifted
    for virtual tokens where the model prepends them) selects graph ``graph``;
    without it the whole edge set is one sequence of ``max(edge_index) + 1``
    tokens.
    """
    edge_index = torch.as_tensor(edge_index).cpu()
    w = _as_2d(weights)
    start, stop = _graph_range(ptr, graph, edge_index)
    t = stop - start
    keep = (edge_index[1] >= start) & (edge_index[1] < stop)
    src, dst = edge_index[0, keep] - start, edge_index[1, keep] - start
    dense = np.zeros((w.size(1), t, t))
    mask = np.ones((w.size(1), t, t), dtype=bool)
    dense[:, dst.numpy(), src.numpy()] = w[keep].numpy().T
    mask[:, dst.numpy(), src.numpy()] = False
    return np.ma.MaskedArray(dense, mask=mask)


def attention_heatmap(edge_index: Tensor, weights: Union[Tensor, Sequence[Tensor]],
                      ptr: Optional[Tensor] = None, graph: int = 0,
                      tokens: Optional[Sequence[str]] = None,
                      heads: Optional[Sequence[int]] = None,
                      layer_name: Optional[Union[str, Sequence[str]]] = None,
                      path: Optional[PathLike] = None) -> Figure:
    """Attention matrices of one sequence, one panel per head.

    Each panel is a ``T x T`` image (``T`` tokens of graph ``graph``): row =
    query ``i``, column = key ``j``, colour = the weight of edge ``j -> i``
    (viridis, 0 to the panel's largest weight, see the colour bar). Pairs that
    are not edges of the attention pattern are drawn light grey: they are
    masked, not zero. ``weights`` is one layer's ``[E, H]`` tensor (a row of
    panels) or a list of layers' tensors (a grid: layers x heads); ``heads``
    picks heads (default all), ``tokens`` labels the axes, ``layer_name`` (one
    string, or one per layer) titles the rows. The image arrays are
    :func:`dense_attention`'s, so ``fig.axes[k].images[0].get_array()`` is the
    model's attention.
    """
    layers = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    layers = [_as_2d(w) for w in layers]
    num_heads = layers[0].size(1)
    heads = list(range(num_heads)) if heads is None else list(heads)
    for h in heads:
        if not 0 <= h < num_heads:
            raise ValueError(f"head {h} out of range: the model has {num_heads} heads")
    if layer_name is None:
        names = [f"layer {k}" for k in range(len(layers))] if len(layers) > 1 else [""]
    elif isinstance(layer_name, str):
        names = [layer_name] if len(layers) == 1 else [f"{layer_name} {k}"
                                                        for k in range(len(layers))]
    else:
        names = list(layer_name)
        if len(names) != len(layers):    # zip() would draw only the named layers
            raise ValueError(f"'layer_name' names {len(names)} layers, but {len(layers)} "
                             f"layers of weights are given: one name per layer, or one string")
    dense = [dense_attention(edge_index, w, ptr, graph) for w in layers]
    t = dense[0].shape[1]
    if tokens is not None and len(tokens) != t:
        raise ValueError(f"{len(tokens)} token labels for a sequence of {t} tokens")
    side = max(2.6, 0.25 * t + 1.6)
    fig = _new_figure((side * len(heads) + 0.8, side * len(layers)))
    cmap: Colormap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=NO_EDGE_COLOUR)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    for r, (name, d) in enumerate(zip(names, dense)):
        for c, h in enumerate(heads):
            ax = axes[r][c]
            panel = d[h]
            vmax = float(panel.max()) if panel.count() else 1.0
            im = ax.imshow(panel, cmap=cmap, vmin=0.0, vmax=vmax or 1.0,
                           interpolation="nearest")
            title = f"{name} head {h}".strip()
            ax.set_title(f"{title}\n(grey: no edge)", fontsize=9)
            ax.set_xlabel("key j", fontsize=8)
            ax.set_ylabel("query i", fontsize=8)
            if tokens is not None:
                ax.set_xticks(range(t), list(tokens), rotation=90, fontsize=7)
                ax.set_yticks(range(t), list(tokens), fontsize=7)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            cb.set_label("attention weight (grey: not an edge)", fontsize=7)
            cb.ax.tick_params(labelsize=7)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _select(weights: Tensor, member: Optional[Tensor], head: Optional[int],
            pattern: Optional[int]) -> Tensor:
    w = _as_2d(weights)
    if head is None:
        w = w.mean(dim=1)
    else:
        if not 0 <= head < w.size(1):
            raise ValueError(f"head {head} out of range: the model has {w.size(1)} heads")
        w = w[:, head]
    if pattern is not None:
        if member is None:
            raise ValueError("pattern needs the membership matrix member")
        member = torch.as_tensor(member).cpu()
        if not 0 <= pattern < member.size(1):
            raise ValueError(f"pattern {pattern} out of range: {member.size(1)} patterns")
        w = w * member[:, pattern].to(w.dtype)
    return w


def atom_bond_scores(edge_index: Tensor, weights: Tensor, bonds: Sequence[Tuple[int, int]],
                     num_atoms: int, member: Optional[Tensor] = None,
                     head: Optional[int] = None, pattern: Optional[int] = None,
                     offset: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The numbers behind :func:`molecule_attention`.

    With ``w_e`` the weight of attention edge ``e = (j -> i)`` for head ``head``
    (the mean over heads when ``None``), multiplied by 0 where ``pattern`` is
    given and ``e`` is not in that pattern (``member[e, pattern]``):

    * atom score ``a[j] = sum of w_e over the edges j -> i`` -- the attention
      atom ``j`` *receives* as a key, summed over all queries ``i`` (the query
      side would be trivial: each query's weights sum to 1);
    * bond score ``b[k] = w(u -> v) + w(v -> u)`` for bond ``k = (u, v)`` (an
      absent direction counts 0).

    Atom ``a`` of the molecule is node ``a + offset`` of the attention graph
    (``offset = 1`` when the model prepends a virtual token); edges to or from
    nodes that are not atoms (virtual tokens) are left out.
    """
    edge_index = torch.as_tensor(edge_index).cpu().long()
    w = _select(weights, member, head, pattern).double()
    src, dst = edge_index[0] - offset, edge_index[1] - offset
    is_atom = (src >= 0) & (src < num_atoms) & (dst >= 0) & (dst < num_atoms)
    atoms = torch.zeros(num_atoms, dtype=torch.float64)
    atoms.index_add_(0, src[is_atom], w[is_atom])
    lookup: Dict[Tuple[int, int], float] = {}
    for s, d, v in zip(src[is_atom].tolist(), dst[is_atom].tolist(), w[is_atom].tolist()):
        lookup[(s, d)] = lookup.get((s, d), 0.0) + v
    bond_scores = np.array([lookup.get((u, v), 0.0) + lookup.get((v, u), 0.0)
                            for u, v in bonds], dtype=np.float64)
    return atoms.numpy(), bond_scores


def _colours(values: np.ndarray, vmax: float) -> List[Tuple[float, float, float]]:
    cmap = matplotlib.colormaps[MOLECULE_CMAP]
    scale = vmax if vmax > 0 else 1.0
    return [tuple(float(c) for c in cmap(float(v) / scale)[:3]) for v in values]


def molecule_attention(smiles: str, edge_index: Tensor, weights: Tensor,
                       member: Optional[Tensor] = None, head: Optional[int] = None,
                       pattern: Optional[int] = None, path: Optional[PathLike] = None,
                       size: Tuple[int, int] = (500, 400), offset: int = 0,
                       legend: Optional[str] = None) -> bytes:
    """The molecule (RDKit 2D depiction) coloured by one layer's attention.

    Every atom and every bond is highlighted with the "Reds" colour map at
    ``score / max_score`` (white = 0, dark red = the largest score; one common
    scale for atoms and bonds, the maximum written in the legend). Scores are
    :func:`atom_bond_scores`'s: an atom's is the attention it receives as a key
    (summed over queries), a bond's the weight of its two directed edges. The
    atoms are the SMILES's, in RDKit's order (that of
    :func:`graphformer.data.from_smiles`); ``offset`` is where they start in
    the attention graph.

    Returns:
        the PNG's bytes (``size`` = width, height in pixels), also written
        to ``path`` when given.

    Raises:
        ValueError: ``smiles`` does not parse, a head / pattern is out of
            range, or a side of ``size`` is not 1 to :data:`MAX_PICTURE_SIDE`.
        RuntimeError: this RDKit has no Cairo drawer (``MolDraw2DCairo``).
    """
    from .data.molecule import bonds_of, parse_smiles
    if len(size) != 2 or not all(1 <= int(side) <= MAX_PICTURE_SIDE for side in size):
        raise ValueError(f"size {tuple(size)} must be a width and a height in pixels, each "
                         f"from 1 to {MAX_PICTURE_SIDE}")
    try:
        from rdkit.Chem.Draw import rdMolDraw2D
        drawer_cls = rdMolDraw2D.MolDraw2DCairo
    except (ImportError, AttributeError) as err:
        raise RuntimeError("molecule_attention needs RDKit built with Cairo "
                           "(rdkit.Chem.Draw.rdMolDraw2D.MolDraw2DCairo)") from err
    mol = parse_smiles(smiles)
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in bonds_of(mol)]
    atoms, bond_scores = atom_bond_scores(edge_index, weights, bonds, mol.GetNumAtoms(),
                                          member=member, head=head, pattern=pattern,
                                          offset=offset)
    vmax = float(max(atoms.max(initial=0.0), bond_scores.max(initial=0.0)))
    atom_colours = dict(enumerate(_colours(atoms, vmax)))
    bond_colours = dict(enumerate(_colours(bond_scores, vmax)))
    text = f"white 0 .. dark red {vmax:.3g}"
    if legend:
        text = f"{legend}; {text}"
    drawer = drawer_cls(int(size[0]), int(size[1]))
    drawer.drawOptions().fillHighlights = True
    rdMolDraw2D.PrepareAndDrawMolecule(
        drawer, mol, legend=text,
        highlightAtoms=list(range(mol.GetNumAtoms())), highlightAtomColors=atom_colours,
        highlightBonds=list(range(len(bonds))), highlightBondColors=bond_colours)
    drawer.FinishDrawing()
    png = drawer.GetDrawingText()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as fh:
            fh.write(png)
    return png


def pattern_attention_mass(weights_per_graph: Sequence[Tensor],
                           members_per_graph: Sequence[Tensor], names: Sequence[str],
                           path: Optional[PathLike] = None) -> Tuple[Dict[str, float], Figure]:
    """Share of attention mass on each pattern of a union, averaged over graphs.

    For graph ``g`` with weights ``w[e, h]`` (``[E_g, H]``; heads, or layers x
    heads concatenated along the columns) and membership ``m[e, p]``
    (``[E_g, P]``), the share of pattern ``p`` is

        ``s_g(p) = sum_{e, h} w[e, h] * m[e, p] / sum_{e, h} w[e, h]``

    and the result is the unweighted mean of ``s_g(p)`` over the graphs. An
    edge in several patterns counts in full for *each* pattern it belongs to
    (a bond is also a ``full`` pair), so every share is in ``[0, 1]`` but the
    shares may add up to more than 1 (``full``'s share is always 1).

    Returns:
        ``({name: share}, figure)``: the numbers and a bar chart of them.
    """
    if len(weights_per_graph) != len(members_per_graph):
        raise ValueError("one membership matrix per graph's weights is needed")
    if not weights_per_graph:
        raise ValueError("no graphs")
    shares = []
    for w, m in zip(weights_per_graph, members_per_graph):
        w = _as_2d(w).double()
        m = torch.as_tensor(m).cpu().to(torch.float64)
        if m.size(1) != len(names):
            raise ValueError(f"{m.size(1)} membership columns for {len(names)} names")
        total = w.sum()
        per_edge = w.sum(dim=1)
        shares.append((per_edge @ m) / total if total > 0 else torch.zeros(len(names),
                                                                             dtype=torch.float64))
    mean = torch.stack(shares).mean(dim=0)
    result = {name: float(v) for name, v in zip(names, mean)}
    fig = _new_figure((max(3.5, 1.1 * len(names) + 1.5), 3.5))
    ax = fig.subplots()
    bars = ax.bar(list(result), list(result.values()), color="#4c72b0")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of attention mass")
    ax.set_title(f"attention mass per pattern ({len(shares)} graphs;\n"
                 "an edge counts for every pattern it is in)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return result, fig


@torch.no_grad()
def attention_mass_from_model(model, loader, layer: Optional[int] = None,
                              path: Optional[PathLike] = None
                              ) -> Tuple[Dict[str, float], Figure]:
    """:func:`pattern_attention_mass` of a :class:`GraphTransformer` over a
    data loader: per graph, the weights of layer ``layer`` (all layers, their
    heads side by side, when ``None``) with the model's pattern names."""
    model.eval()
    names = model._set_names()
    virtual = model.config.pooling == "virtual"
    ws, ms = [], []
    for batch in loader:
        _, (edge_index, member, weights) = model(batch, return_attention_weights=True)
        w = torch.cat(weights, dim=1) if layer is None else weights[layer]
        ptr = batch.ptr
        if virtual:  # the model prepends one virtual token per graph
            ptr = ptr + torch.arange(ptr.numel(), device=ptr.device)
        graph = torch.searchsorted(ptr, edge_index[1], right=True) - 1
        for g in range(ptr.numel() - 1):
            keep = graph == g
            ws.append(w[keep])
            ms.append(member[keep])
    return pattern_attention_mass(ws, ms, names, path=path)
