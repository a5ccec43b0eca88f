"""A graph transformer for molecules: OGB encoders, relational attention over
a chosen edge set, a pooling readout and a prediction head."""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Literal, NamedTuple, Optional, Sequence, Tuple, get_args

import torch
import torch.nn.functional as F
from ogb.utils.features import get_bond_feature_dims
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.nn import GINEConv
from torch_geometric.utils import scatter
from torch_geometric.utils.sparse import ptr2index

from .. import patterns
from .._settings import setting
from ..datasets.molecules import TASKS, Task
from ..nn import Dropout, EdgeSet, FeatureScaler, RelationalAttention, TransformerLayer
from ..nn.backend import ATTENTION_BACKENDS
from .encoders import AtomEncoder, BondEncoder

PATTERNS = ("bonds", "k_hop", "full")
Pooling = Literal["mean", "sum", "virtual"]
POOLINGS = get_args(Pooling)
Features = Literal["ogb", "zinc"]
FEATURES = get_args(Features)
Local = Literal["none", "gine"]
LOCALS = get_args(Local)
Output = Literal["mean", "mve", "evidential"]
OUTPUTS = get_args(Output)
#: numbers the head predicts per task for each ``output``
OUTPUT_PARAMETERS = {"mean": 1, "mve": 2, "evidential": 4}
#: added to every positive parameter of a distribution head (variance, nu,
#: alpha - 1, beta), so none is 0 when softplus underflows
POSITIVE_EPS = 1e-6
ZINC_ATOM_TYPES, ZINC_BOND_TYPES = 28, 4


@dataclass
class GraphTransformerConfig:
    """Hyper-parameters of :class:`GraphTransformer` (checked on creation).

    Attributes:
        num_tasks: outputs per graph.
        task: ``"regression"`` or ``"classification"`` (multi-label, logits).
        hidden: node (and edge) state size.
        layers: number of :class:`~graphformer.nn.TransformerLayer` blocks.
        heads: attention heads (``hidden`` divisible by it).
        dropout: dropout in the blocks and the head (default 0: chosen on
            validation scores from the shipped pre-trained trunk, see
            docs/defaults.md).
        patterns: the attention edge set, a union of ``"bonds"`` (the
            molecule's bonds), ``"k_hop"`` (pairs within ``k`` bonds) and
            ``"full"`` (all pairs in the molecule). With more than one, each
            edge's membership is an extra edge feature, so bonds and long-range
            pairs are told apart.
        k: the ``k`` of ``"k_hop"``.
        self_loops: add ``i -> i`` to the edge set (implied by ``"full"``).
        edge_update: update edge states in every block (Relational Transformer).
        norm_first: pre-norm blocks.
        pooling: ``"mean"``, ``"sum"``, or ``"virtual"`` (a virtual token per
            graph attends to and is attended by every atom; its state is the
            readout).
        rwse_steps: width of ``data.rwse`` (random-walk SE) to embed, 0 = off.
        lap_pe: width of ``data.lap_pe`` (Laplacian PE) to embed, 0 = off.
        features: ``"ogb"`` (OGB's 9 atom and 3 bond features, through
            ``ogb``'s ``AtomEncoder`` / ``BondEncoder``) or ``"zinc"`` (ZINC's
            atom type ``x [N, 1]`` and bond type ``edge_attr [E]``).
        local: message passing over the bonds before every block, added to
            the node states (a hybrid in the manner of GraphGPS): ``"none"``
            or ``"gine"`` (:class:`torch_geometric.nn.GINEConv`, bond
            embeddings as edge features, a two-layer MLP, pre-norm).
        output: what the head predicts per task (regression only):
            ``"mean"`` (one number, trained by MSE), ``"mve"`` (a Gaussian's
            mean and variance, trained by its negative log-likelihood) or
            ``"evidential"`` (the Normal-Inverse-Gamma parameters
            ``gamma, nu, alpha, beta`` of deep evidential regression). Set
            from ``train.loss`` (``--loss``) by the training loop; see
            :meth:`GraphTransformer.forward`. A model saved before it
            existed predicted the mean.

    What the data decides (the molecule features, ``mol_feature_names``)
    and how attention is computed at run time (``attention_backend``) are
    arguments of :class:`GraphTransformer`, not hyper-parameters; a config
    saved by an older graphformer held them here (:data:`MOVED_KEYS`).
    """
    num_tasks: int = 1
    task: Task = "regression"
    hidden: int = setting(64, help="node (and edge) state size (default 64)")
    layers: int = setting(4, help="transformer blocks (default 4)")
    heads: int = setting(4, help="attention heads; --hidden must be divisible by it "
                         "(default 4)")
    dropout: float = setting(0.0, help="dropout in the blocks and the head (default 0)")
    patterns: Tuple[str, ...] = setting(("bonds", "full"), choices=PATTERNS,
                                        help="the attention edge set, a union (default: "
                                        "bonds full)")
    k: int = setting(3, help="k of the k_hop pattern (default 3)")
    self_loops: bool = True
    edge_update: bool = setting(False, help="update edge states in every block (default: no)")
    norm_first: bool = setting(True, help="pre-norm blocks (default: yes)")
    pooling: Pooling = setting("mean", help="the readout (default mean; virtual: a virtual "
                               "token per graph)")
    rwse_steps: int = setting(16, help="random-walk structural encoding steps, 0 = off "
                              "(default 16)")
    lap_pe: int = setting(0, help="Laplacian positional encoding width, 0 = off (default 0)")
    features: Features = "ogb"
    local: Local = setting("none", help="message passing over the bonds before every block "
                           "(gine: GINEConv; default none)")
    output: Output = "mean"

    def __post_init__(self) -> None:
        self.patterns = tuple(self.patterns)
        if self.num_tasks < 1:
            raise ValueError(f"'num_tasks' must be >= 1, got {self.num_tasks}")
        if self.task not in TASKS:
            raise ValueError(f"'task' must be 'regression' or 'classification', got {self.task!r}")
        if self.hidden < 1 or self.layers < 0 or self.heads < 1:
            raise ValueError("'hidden' and 'heads' must be >= 1 and 'layers' >= 0, got "
                             f"{self.hidden}, {self.heads}, {self.layers}")
        if self.hidden % self.heads:
            raise ValueError(f"'hidden' ({self.hidden}) must be divisible by 'heads' ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1), got {self.dropout}")
        unknown = [p for p in self.patterns if p not in PATTERNS]
        if unknown or not self.patterns or len(set(self.patterns)) != len(self.patterns):
            raise ValueError(f"'patterns' must be distinct names from {PATTERNS}, "
                             f"got {self.patterns}")
        if self.k < 1:
            raise ValueError(f"'k' must be >= 1, got {self.k}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"'pooling' must be 'mean', 'sum' or 'virtual', got {self.pooling!r}")
        if self.rwse_steps < 0 or self.lap_pe < 0:
            raise ValueError("'rwse_steps' and 'lap_pe' must be >= 0")
        if self.features not in FEATURES:
            raise ValueError(f"'features' must be 'ogb' or 'zinc', got {self.features!r}")
        if self.local not in LOCALS:
            raise ValueError(f"'local' must be one of {LOCALS}, got {self.local!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"'output' must be one of {OUTPUTS}, got {self.output!r}")
        if self.output != "mean" and self.task != "regression":
            raise ValueError(f"'output' {self.output!r} (a predictive distribution) is for "
                             f"regression; a classifier's head predicts logits ('mean')")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["patterns"] = list(self.patterns)
        return d


class PreparedEdges(NamedTuple):
    """A batch's attention edge set, as :meth:`GraphTransformer.prepare`
    computes it (no parameters involved): everything of the model whose size
    depends on the data. It travels with the batch (``batch.prepared_edges``;
    ``batch.to(device)`` moves it), so the model's compute graph takes it as
    input: no data-dependent size inside, nothing for torch.compile to break
    the graph on. Shapes: E attention edges, S edge sets (bonds, full, ...), R
    edge types in the batch, N' nodes (atoms, and one virtual node per
    graph with ``pooling="virtual"``).

    Attributes:
        edge_index: [2, E] the attention edges ``j -> i``, grouped by target.
        member: [E, S] bool, each edge's membership in each edge set.
        edge_type: [E] each edge's type, in ``0..R-1``.
        types: [R] each type's code: its bond features (mixed radix, 0 for
            "not a bond") plus the bond-code radix times its membership bits;
            the model turns the codes into its edge-feature table.
        ptr: [N' + 1] the CSR row pointer of ``edge_index`` (edges into
            node ``i`` at ``ptr[i]:ptr[i + 1]``).
        edge_set: which edge set it is (the patterns, k, the features), so
            a model refuses a batch prepared by a model of another set.
    """
    edge_index: Tensor
    member: Tensor
    edge_type: Tensor
    types: Tensor
    ptr: Tensor
    edge_set: str


#: model-config keys of an older graphformer that are no longer hyper-parameters:
#: the molecule features come from the data (arguments of
#: :class:`GraphTransformer`, saved in a checkpoint beside its config), the
#: attention backend is a runtime setting (``train.attention_backend``)
MOVED_KEYS = ("attention_backend", "mol_features", "mol_feature_names")


class GraphTransformer(torch.nn.Module):
    r"""Graph transformer for graph-level prediction on molecules.

    .. math::
        \mathbf{h}^0_i = \mathrm{AtomEnc}(\mathbf{a}_i) + \mathbf{W}_r \mathbf{rwse}_i
            + \mathbf{W}_l \mathbf{pe}_i, \qquad
        \mathbf{e}_{ij} = \mathrm{BondEnc}(\mathbf{b}_{ij})\,[j \sim i]
            + \mathbf{W}_m \mathbf{m}_{ij}

        \mathbf{h}^{l+1}, \mathbf{e} = \mathrm{TransformerLayer}_l(\mathbf{h}^l,
            \mathcal{E}, \mathbf{e}), \qquad
        \hat{y} = \mathrm{MLP}(\mathrm{pool}_{i \in G} \mathbf{h}^L_i
            \,\Vert\, \mathrm{scale}(\mathbf{m}_G))

    where :math:`\mathcal{E}` is the union of the configured patterns,
    :math:`\mathbf{m}_{ij}` the membership of edge :math:`j \to i` in each of
    them, :math:`[j \sim i]` is 1 for bonds, and :math:`\mathbf{m}_G` the
    molecule's features ``mol_x`` (only with ``mol_features > 0``).

    Shapes: a PyG ``Batch`` of B molecules with N atoms in all (``x``
    ``[N, 9]`` and ``edge_attr`` ``[E_b, 3]`` as from
    :func:`graphformer.data.from_smiles`; with ``mol_features = F``, also
    ``mol_x`` ``[B, F]``) gives ``[B, num_tasks]``. The batch may come
    prepared by :meth:`prepare` (its attention edge set computed beforehand,
    the same results to the bit): then the model's compute graph has no
    data-dependent size, for ``torch.compile`` without graph breaks and
    ``torch.export`` (:meth:`for_export`).

    Args:
        config: the hyper-parameters.
        mol_feature_names: the name of each molecule-level feature of
            ``data.mol_x`` (e.g. RDKit descriptors), set from the data set
            (as PyG's ``in_channels``), so a trained model says which
            features it must be given; empty (default): none. They are
            scaled by a :class:`~graphformer.nn.FeatureScaler` (fitted on the
            training split, see :meth:`fit_mol_features`; its statistics are
            buffers of the model) and concatenated with the pooled graph
            vector before the head.
        mol_features: their number ``F`` (default: ``len(mol_feature_names)``;
            given alone, the features are unnamed).
        attention_backend: how attention is computed (``"auto"``,
            ``"sparse"``, ``"dense"``, ``"fused"``, ...; see
            :mod:`graphformer.nn.backend` and :meth:`set_attention_backend`).
            Changes speed and memory, not results (beyond float rounding),
            so it is not saved with the model.
    """

    def __init__(self, config: GraphTransformerConfig, *,
                 mol_feature_names: Sequence[str] = (), mol_features: Optional[int] = None,
                 attention_backend: str = "auto") -> None:
        super().__init__()
        names = tuple(mol_feature_names)
        if isinstance(mol_feature_names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"'mol_feature_names' must be a sequence of names, got "
                             f"{mol_feature_names!r}")
        width = len(names) if mol_features is None else mol_features
        if width < 0:
            raise ValueError(f"'mol_features' must be >= 0, got {width}")
        if names and len(names) != width:
            raise ValueError(f"'mol_feature_names' must be empty or name each of the "
                             f"{width} molecule features ('mol_features'), got "
                             f"{len(names)} names")
        _check_backend(attention_backend)
        self.config = config
        self.mol_features = width
        self.mol_feature_names = names
        self.attention_backend = attention_backend
        c = config
        if c.features == "ogb":
            self.atom_encoder = AtomEncoder(c.hidden)
            self.bond_encoder = BondEncoder(c.hidden)
        else:
            self.atom_encoder = _FirstColumnEmbedding(ZINC_ATOM_TYPES, c.hidden)
            self.bond_encoder = _FirstColumnEmbedding(ZINC_BOND_TYPES, c.hidden)
        self.rwse = torch.nn.Linear(c.rwse_steps, c.hidden) if c.rwse_steps else None
        self.lap = torch.nn.Linear(c.lap_pe, c.hidden) if c.lap_pe else None
        num_sets = len(self._set_names())
        self.membership = torch.nn.Linear(num_sets, c.hidden, bias=False) if num_sets > 1 else None
        self.virtual = torch.nn.Parameter(torch.zeros(1, c.hidden)) if c.pooling == "virtual" else None
        self.blocks = torch.nn.ModuleList([
            TransformerLayer(c.hidden, heads=c.heads, dropout=c.dropout, activation="gelu",
                             norm_first=c.norm_first, edge_dim=c.hidden,
                             edge_update=c.edge_update, backend=attention_backend)
            for _ in range(c.layers)
        ])
        self.local = torch.nn.ModuleList([_LocalGINE(c.hidden, c.dropout, c.norm_first)
                                          for _ in range(c.layers)]) if c.local == "gine" else None
        self.final_norm = torch.nn.LayerNorm(c.hidden) if c.norm_first else torch.nn.Identity()
        self._bond_dims = tuple(get_bond_feature_dims()) if c.features == "ogb" \
            else (ZINC_BOND_TYPES,)
        self._bond_radix = math.prod(self._bond_dims) + 1   # bond codes 0 (none) .. radix - 1
        self.mol_scaler = FeatureScaler(width) if width else None
        self.head = torch.nn.Sequential(
            torch.nn.Linear(c.hidden + width, c.hidden), torch.nn.GELU(),
            Dropout(c.dropout),
            torch.nn.Linear(c.hidden, c.num_tasks * OUTPUT_PARAMETERS[c.output]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, torch.nn.Embedding):  # as ogb's encoders initialise
                torch.nn.init.xavier_uniform_(module.weight)
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if self.virtual is not None:
            torch.nn.init.normal_(self.virtual, std=0.02)

    def fit_mol_features(self, mol_x: Tensor) -> None:
        """Fit the scaler of the molecule features on the training split's
        ``mol_x`` ``[N_train, F]`` (see :class:`~graphformer.nn.FeatureScaler`)."""
        if self.mol_scaler is None:
            raise ValueError("this model takes no molecule features ('mol_features' is 0)")
        self.mol_scaler.fit(mol_x)

    def set_attention_backend(self, backend: str) -> None:
        """Compute attention with ``backend`` from now on (every block; see
        :mod:`graphformer.nn.backend`): a runtime choice, the weights and
        results (beyond float rounding) stay the same."""
        _check_backend(backend)
        self.attention_backend = backend
        for module in self.modules():
            if isinstance(module, RelationalAttention):
                module.backend = backend

    def _set_names(self) -> Tuple[str, ...]:
        names = tuple(self.config.patterns)
        if self.config.self_loops and "full" not in names:
            names += ("self",)
        if self.config.pooling == "virtual":
            names += ("virtual",)
        return names

    def attention_edges(self, bonds: Tensor, ptr: Tensor, num_nodes: int,
                        virtual: Tensor) -> Tuple[Tensor, Tensor]:
        """The attention edge set of a batch and each edge's membership."""
        return self._attention_edges(bonds, ptr, num_nodes, virtual)[:2]

    def _attention_edges(self, bonds: Tensor, ptr: Tensor, num_nodes: int,
                         virtual: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The attention edge set (grouped by target), each edge's membership
        [E, sets], and the position of every bond in it [E_b]."""
        names = self._set_names()
        if names == ("bonds", "full"):
            # every bond and self loop is a pair: the union is the full set,
            # and a bond's place in it has a closed form (no sort, no search)
            edge_index = patterns.full(ptr)
            pos = _full_positions(ptr, bonds)
            member = edge_index.new_zeros(edge_index.size(1), 2, dtype=torch.bool)
            member[:, 1] = True
            member[pos, 0] = True
            return edge_index, member, pos
        sets = {
            "bonds": lambda: bonds,
            "k_hop": lambda: patterns.k_hop(bonds, self.config.k, num_nodes=num_nodes),
            "full": lambda: patterns.full(ptr),
            "self": lambda: torch.arange(num_nodes, device=ptr.device).expand(2, -1),
            "virtual": lambda: patterns.global_tokens(ptr, virtual),
        }
        edge_index, member = patterns.union(*(sets[name]() for name in names),
                                            num_nodes=num_nodes)
        keys = patterns.edge_keys(edge_index, num_nodes)  # sorted: where does each bond sit?
        pos = torch.searchsorted(keys, patterns.edge_keys(bonds, num_nodes))
        return edge_index, member, pos

    def _bond_codes(self, edge_attr: Tensor) -> Tensor:
        """One integer per bond for its features (mixed radix), from 1; 0 is
        kept for "not a bond"."""
        edge_attr = edge_attr.view(edge_attr.size(0), len(self._bond_dims))  # ZINC: [E]
        code = torch.zeros(edge_attr.size(0), dtype=torch.long, device=edge_attr.device)
        for column, size in enumerate(self._bond_dims):
            code = code * size + edge_attr[:, column].long()
        return code + 1

    def _bond_features(self, code: Tensor) -> Tensor:
        """The bond features of codes from :meth:`_bond_codes` (code >= 1)."""
        rest = code - 1
        columns = []
        for size in reversed(self._bond_dims):
            columns.append(rest % size)
            rest = rest // size
        return torch.stack(columns[::-1], dim=1)

    def edge_types(self, edge_attr: Tensor, member: Tensor, bond_pos: Tensor,
                   dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        r"""The edges as types: ``(edge_type [E], table [R, hidden])`` with
        ``table[edge_type]`` equal to the edge features
        :math:`\mathrm{BondEnc}(\mathbf{b}_{ij})[j \sim i] + \mathbf{W}_m \mathbf{m}_{ij}`;
        a type is one combination of bond features and memberships present
        in the batch (a few dozen at most in molecules)."""
        types, edge_type = self._type_codes(edge_attr, member, bond_pos)
        return edge_type, self._type_table(types, dtype)

    def _type_codes(self, edge_attr: Tensor, member: Tensor, bond_pos: Tensor
                    ) -> Tuple[Tensor, Tensor]:
        """``(types [R], edge_type [E])``: the code of every type present
        (:attr:`PreparedEdges.types`) and every edge's type (data only)."""
        E = member.size(0)
        bond_code = member.new_zeros(E, dtype=torch.long)
        bond_code[bond_pos] = self._bond_codes(edge_attr)
        bits = torch.arange(member.size(1), device=member.device)
        member_code = (member.long() << bits).sum(1)
        radix = self._bond_radix
        return _unique_small(member_code * radix + bond_code, radix << member.size(1))

    def _type_table(self, types: Tensor, dtype: torch.dtype) -> Tensor:
        """The edge features of every type ``[R, hidden]`` from its code
        (:meth:`_type_codes`): the parameters' part, with no data-dependent
        size (a non-bond type's row is that of code 1, all-zero features,
        zeroed after the encoder)."""
        radix = self._bond_radix
        bits = torch.arange(len(self._set_names()), device=types.device)
        type_bond, type_member = types % radix, types // radix
        table = self.membership(((type_member.unsqueeze(1) >> bits) & 1).to(dtype)) \
            if self.membership is not None else None
        is_bond = type_bond > 0
        bond_rows = self._bond_features(type_bond.clamp(min=1))
        bond = self.bond_encoder(bond_rows) * is_bond.unsqueeze(1).to(dtype)
        return bond if table is None else table + bond

    def _edge_set_name(self) -> str:
        """What decides the edge set and its type codes, in words
        (:attr:`PreparedEdges.edge_set`)."""
        c = self.config
        k = f", k={c.k}" if "k_hop" in c.patterns else ""
        return f"{'+'.join(self._set_names())}{k}, features={c.features}"

    def _node_layout(self, ptr: Tensor, graph: Tensor, num_atoms: int
                     ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(ptr, virtual, atoms)`` of the nodes attention runs over: with
        ``pooling="virtual"`` one virtual node is prepended to every graph
        (``virtual`` [B] its place, ``atoms`` [N] where each atom moved,
        ``ptr`` shifted); else ``ptr`` as given, no virtual node and
        ``atoms`` None."""
        if self.virtual is None:
            return ptr, ptr.new_zeros(0), None
        atoms = torch.arange(num_atoms, device=ptr.device) + graph + 1
        ptr = ptr + torch.arange(ptr.numel(), device=ptr.device)
        return ptr, ptr[:-1], atoms

    def _prepare_edges(self, ptr: Tensor, bonds: Tensor, graph: Tensor, edge_attr: Tensor,
                       num_atoms: int) -> PreparedEdges:
        """The :class:`PreparedEdges` of a batch (its ``ptr``, ``edge_index``,
        ``batch``, ``edge_attr`` and atom count)."""
        ptr, virtual, atoms = self._node_layout(ptr, graph, num_atoms)
        if atoms is not None:
            bonds = atoms[bonds]
        num_nodes = num_atoms + virtual.numel()
        edge_index, member, bond_pos = self._attention_edges(bonds, ptr, num_nodes, virtual)
        types, edge_type = self._type_codes(edge_attr, member, bond_pos)
        return PreparedEdges(edge_index, member, edge_type, types,
                             EdgeSet.row_pointer(edge_index[1], num_nodes),
                             self._edge_set_name())

    @torch.no_grad()
    def prepare(self, batch: Batch) -> Batch:
        """The batch with its attention edge set computed
        (``batch.prepared_edges``, a :class:`PreparedEdges`): a shallow copy,
        the given batch is left as it is.

        ``model(batch)`` prepares the batch itself when it is not prepared,
        with the same results to the bit; preparing it beforehand (once per
        batch, in a data-loader worker, say) takes every data-dependent size
        out of the model's compute graph: ``torch.compile(model,
        dynamic=True)`` of a prepared batch has no graph break under default
        settings, and :meth:`for_export` exports the model for inference.
        The preparation holds no parameter (the model's config decides it),
        so it stays valid while the model trains."""
        out = copy.copy(batch)
        out.prepared_edges = self._prepare_edges(batch.ptr, batch.edge_index, batch.batch,
                                                 batch.edge_attr, batch.x.size(0))
        return out

    def _prepared_edges(self, batch: Batch, num_atoms: int) -> PreparedEdges:
        """The batch's :class:`PreparedEdges`, checked against the batch
        and this model's edge set in eager mode; computed when the batch
        was not prepared."""
        prepared = getattr(batch, "prepared_edges", None)
        if prepared is None:
            return self._prepare_edges(batch.ptr, batch.edge_index, batch.batch,
                                       batch.edge_attr, num_atoms)
        if torch.compiler.is_compiling():
            return prepared
        if not isinstance(prepared, PreparedEdges):
            raise TypeError(f"'batch.prepared_edges' must be a PreparedEdges (from "
                            f"model.prepare(batch)), got {type(prepared).__name__}")
        name = self._edge_set_name()
        if prepared.edge_set != name:
            raise ValueError(f"the batch was prepared for the edge set {prepared.edge_set!r} "
                             f"but this model's is {name!r}: prepare it with this model "
                             f"(model.prepare(batch))")
        num_nodes = num_atoms + (batch.ptr.numel() - 1 if self.virtual is not None else 0)
        E = prepared.edge_index.size(1)
        shapes = {"edge_index": (2, E), "member": (E, len(self._set_names())),
                  "edge_type": (E,), "ptr": (num_nodes + 1,)}
        for field, shape in shapes.items():
            tensor = getattr(prepared, field)
            if tuple(tensor.shape) != shape:
                raise ValueError(f"'batch.prepared_edges.{field}' has shape "
                                 f"{list(tensor.shape)} where the batch's {num_atoms} atoms "
                                 f"need {list(shape)}: was the batch changed after "
                                 f"model.prepare(batch)?")
        return prepared

    def forward(self, batch: Batch, return_attention_weights: bool = False,
                distribution: bool = False):
        r"""The predictions of a batch of B graphs, in the units the model was
        trained in (normalised targets for regression, logits for
        classification).

        Returns ``[B, num_tasks]``: the mean prediction, whatever the
        ``output``. With ``distribution=True``, ``[B, P, num_tasks]``
        instead: the parameters of each prediction's distribution, ``P``
        per task (:data:`OUTPUT_PARAMETERS`), positive where they must be:

        - ``"mean"``: ``[mean]`` (``P = 1``);
        - ``"mve"``: ``[mean, variance]``, variance
          :math:`= \mathrm{softplus}(\cdot) + \epsilon`;
        - ``"evidential"``: ``[gamma, nu, alpha, beta]`` of a
          Normal-Inverse-Gamma, :math:`\nu, \beta = \mathrm{softplus}(\cdot)
          + \epsilon` and :math:`\alpha = 1 + \mathrm{softplus}(\cdot) +
          \epsilon` (so the predictive variance is finite),

        with :math:`\epsilon` = :data:`POSITIVE_EPS`. The head's outputs are
        laid out parameter-major (the ``num_tasks`` means first), so the mean
        is the head's first ``num_tasks`` outputs and a ``"mean"`` model is
        the head it always was. With ``return_attention_weights`` the
        result is ``(prediction, (edge_index, member, weights))``."""
        nodes, g, attention = self.encode(batch, return_attention_weights)
        if self.mol_scaler is not None:
            mol_x = getattr(batch, "mol_x", None)
            if mol_x is None:
                raise ValueError(f"the model takes {self.mol_features} molecule features but "
                                 f"the batch has no 'mol_x' [B, {self.mol_features}]")
            g = torch.cat([g, self.mol_scaler(mol_x.view(g.size(0), -1)).to(g.dtype)], dim=1)
        y = self.head(g)
        y = self._distribution(y) if distribution else y[:, :self.config.num_tasks]
        if return_attention_weights:
            return y, attention
        return y

    def forward_distribution(self, batch: Batch) -> Tensor:
        """``forward(batch, distribution=True)``: the parameters ``[B, P,
        num_tasks]`` of every prediction's distribution (see :meth:`forward`)."""
        return self(batch, distribution=True)

    def _distribution(self, raw: Tensor) -> Tensor:
        """The head's raw outputs ``[B, P * T]`` as the constrained
        parameters ``[B, P, T]`` of :meth:`forward`."""
        output = self.config.output
        raw = raw.view(raw.size(0), OUTPUT_PARAMETERS[output], self.config.num_tasks)
        if output == "mean":
            return raw
        positive = F.softplus(raw[:, 1:]) + POSITIVE_EPS
        if output == "evidential":   # alpha > 1
            positive = positive + torch.tensor([0.0, 1.0, 0.0], dtype=raw.dtype,
                                               device=raw.device).view(1, 3, 1)
        return torch.cat([raw[:, :1], positive], dim=1)

    def encode(self, batch: Batch, return_attention_weights: bool = False,
               atom_mask: Optional[Tensor] = None, mask_embedding: Optional[Tensor] = None
               ) -> Tuple[Tensor, Tensor, Any]:
        """The trunk without the head: the atoms' final states ``[N, hidden]``
        (virtual nodes left out), the pooled graph vectors ``[B, hidden]``,
        and ``(edge_index, member, weights)`` when attention weights are
        asked for (else ``None``). Atoms where ``atom_mask`` ``[N]`` is true
        enter as ``mask_embedding`` ``[hidden]`` instead of their encoded
        features (masked-atom pre-training)."""
        c = self.config
        prepared = self._prepared_edges(batch, batch.x.size(0))
        x = self.atom_encoder(batch.x)
        if atom_mask is not None:
            x = torch.where(atom_mask.unsqueeze(1), mask_embedding.to(x.dtype), x)
        if self.rwse is not None:
            x = x + self.rwse(batch.rwse)
        if self.lap is not None:
            pe = batch.lap_pe
            if self.training:  # eigenvector signs are arbitrary: flip at random
                sign = torch.randint(0, 2, (1, pe.size(1)), device=pe.device) * 2 - 1
                pe = pe * sign
            x = x + self.lap(pe)
        ptr, bonds, graph = batch.ptr, batch.edge_index, batch.batch
        num_graphs = ptr.numel() - 1
        # atoms: where the atoms sit among the nodes (None: all of them, no virtual ones)
        ptr, virtual, atoms = self._node_layout(ptr, graph, x.size(0))
        if atoms is not None:  # one virtual node prepended to every graph
            # index_copy / index_select, not h[atoms] = x: indexing broadcasts, so an
            # exported program would assume more than one atom and graph
            h = x.new_empty(x.size(0) + num_graphs, x.size(1)).index_copy(0, atoms, x)
            h = h.index_copy(0, virtual, self.virtual.to(x.dtype).expand(num_graphs, -1))
            x, bonds = h, atoms[bonds]
        num_nodes = x.size(0)
        edge_index, member = prepared.edge_index, prepared.member
        table = self._type_table(prepared.types, x.dtype)
        # graph of every node (virtual nodes included), for per-graph padding
        node_graph = ptr2index(ptr, num_nodes)
        if c.edge_update:   # edge states per edge, updated by every block
            edges = EdgeSet.grouped(edge_index, num_nodes, prepared.ptr, batch=node_graph)
            e = table.index_select(0, prepared.edge_type)
        else:               # typed edges: one edge set, edge terms per type
            edges = EdgeSet.grouped(edge_index, num_nodes, prepared.ptr, batch=node_graph,
                                    edge_type=prepared.edge_type, num_types=table.size(0))
            e = table
        bond_states = self.bond_encoder(batch.edge_attr) if self.local is not None else None
        weights = []
        for layer, block in enumerate(self.blocks):
            if self.local is not None:
                x = self.local[layer](x, bonds, bond_states)
            x, e, alpha = block(x, edges, e, return_attention_weights=return_attention_weights)
            if alpha is not None:
                weights.append(alpha)
        x = self.final_norm(x)
        if c.pooling == "virtual":
            g = x.index_select(0, virtual)
        else:
            g = scatter(x, graph, dim=0, dim_size=num_graphs, reduce=c.pooling)
        nodes = x if atoms is None else x.index_select(0, atoms)
        return nodes, g, ((edge_index, member, weights) if return_attention_weights else None)

    def for_export(self, distribution: bool = False) -> "ExportableGraphTransformer":
        """This model as a function of tensors, for :func:`torch.export.export`
        (inference): see :class:`ExportableGraphTransformer`."""
        return ExportableGraphTransformer(self, distribution=distribution)

    def __repr__(self) -> str:
        c = self.config
        return (f"{self.__class__.__name__}(hidden={c.hidden}, layers={c.layers}, "
                f"heads={c.heads}, patterns={list(c.patterns)}, pooling={c.pooling!r}, "
                f"edge_update={c.edge_update}, local={c.local!r}, tasks={c.num_tasks} {c.task}"
                f"{'' if c.output == 'mean' else f', output={c.output!r}'})")


@dataclass
class _BatchTensors:
    """The parts of a prepared batch the model reads, as attributes (what
    :class:`ExportableGraphTransformer` hands the model in place of a
    ``Batch``)."""
    x: Tensor
    edge_attr: Tensor
    edge_index: Tensor
    ptr: Tensor
    batch: Tensor
    prepared_edges: PreparedEdges
    rwse: Optional[Tensor] = None
    lap_pe: Optional[Tensor] = None
    mol_x: Optional[Tensor] = None


#: the batch's tensors :class:`ExportableGraphTransformer` takes, in order,
#: before the :class:`PreparedEdges` tensors (``rwse``, ``lap_pe`` and
#: ``mol_x`` only where the model reads them)
BATCH_INPUTS = ("x", "edge_attr", "edge_index", "ptr", "batch", "rwse", "lap_pe", "mol_x")
#: the :class:`PreparedEdges` tensors it takes after them, as ``prepared_<name>``
PREPARED_INPUTS = ("edge_index", "member", "edge_type", "types", "ptr")


class ExportableGraphTransformer(torch.nn.Module):
    """A :class:`GraphTransformer` as a function of tensors, for
    :func:`torch.export.export`: ``forward(*inputs)`` takes the tensors of a
    prepared batch (:meth:`inputs`, named by :meth:`input_names`) and gives
    ``model(batch)`` (``[B, num_tasks]``; with ``distribution=True``,
    ``model(batch, distribution=True)``).

    Every size (atoms, bonds, graphs, attention edges, edge types) is
    dynamic in :meth:`dynamic_shapes`, so one exported program serves
    batches of any size. Export the model in eval mode (dropout off, no
    random sign flips of ``lap_pe``).

    Example::

        >>> inference = model.eval().for_export()
        >>> program = inference.export(batch)        # a torch.export.ExportedProgram
        >>> program.module()(*inference.inputs(other_batch))   # == model(other_batch)
    """

    def __init__(self, model: GraphTransformer, distribution: bool = False) -> None:
        super().__init__()
        self.model = model
        self.distribution = distribution
        c = model.config
        used = {"rwse": c.rwse_steps > 0, "lap_pe": c.lap_pe > 0,
                "mol_x": model.mol_scaler is not None}
        self._batch_inputs = tuple(n for n in BATCH_INPUTS if used.get(n, True))

    def input_names(self) -> Tuple[str, ...]:
        """The name of every positional input of :meth:`forward`, in order."""
        return self._batch_inputs + tuple(f"prepared_{n}" for n in PREPARED_INPUTS)

    def inputs(self, batch: Batch) -> Tuple[Tensor, ...]:
        """The tensors :meth:`forward` takes, of ``batch`` (prepared by
        :meth:`GraphTransformer.prepare` if it is not)."""
        if getattr(batch, "prepared_edges", None) is None:
            batch = self.model.prepare(batch)
        missing = [n for n in self._batch_inputs if getattr(batch, n, None) is None]
        if missing:
            raise ValueError(f"the batch has no {missing}, which the model reads")
        prepared = batch.prepared_edges
        return tuple(getattr(batch, n) for n in self._batch_inputs) + \
            tuple(getattr(prepared, n) for n in PREPARED_INPUTS)

    def dynamic_shapes(self) -> Dict[str, Tuple[Dict[int, Any], ...]]:
        """The ``dynamic_shapes`` argument of :func:`torch.export.export` for
        :meth:`inputs`: every count of atoms, bonds, graphs, edges and types
        dynamic (``torch.export.Dim.DYNAMIC``), feature widths fixed."""
        dynamic = getattr(torch.export.Dim, "DYNAMIC", None)
        if dynamic is None:
            raise RuntimeError(f"exporting the model needs torch.export.Dim.DYNAMIC, which "
                               f"torch {torch.__version__} lacks: upgrade torch")
        counts = {"edge_index": {1: dynamic}, "prepared_edge_index": {1: dynamic}}
        return {"inputs": tuple(counts.get(n, {0: dynamic}) for n in self.input_names())}

    def export(self, batch: Batch) -> torch.export.ExportedProgram:
        """:func:`torch.export.export` of this module on ``batch``'s
        :meth:`inputs` with :meth:`dynamic_shapes`, without gradients. Every
        count of the example batch must be 2 or more (two graphs, bonds,
        edge types, ...): torch would fix a size of 0 or 1 in the program.
        The program serves batches of any size, one molecule included."""
        if self.model.training:
            raise ValueError("export the model for inference: call model.eval() first")
        inputs = self.inputs(batch)
        for name, tensor, dims in zip(self.input_names(), inputs,
                                      self.dynamic_shapes()["inputs"]):
            offset = 1 if name.endswith("ptr") else 0    # a row pointer: count + 1
            small = [d for d in dims if tensor.size(d) - offset < 2]
            if small:
                raise ValueError(f"export needs an example batch whose every count is 2 or "
                                 f"more (torch fixes a count of 0 or 1 in the program): "
                                 f"'{name}' has size {tensor.size(small[0])} in dim "
                                 f"{small[0]}, a count of {tensor.size(small[0]) - offset}")
        # sizes of 0 and 1 are not specialised: one program for a batch of one molecule
        # too (the sizes are traced as >= 0 where the code allows it); a torch without
        # the setting gives a program for counts of 2 or more
        fx_config = torch.fx.experimental._config
        oblivious = fx_config.patch(backed_size_oblivious=True) \
            if hasattr(fx_config, "backed_size_oblivious") else contextlib.nullcontext()
        with torch.no_grad(), oblivious:
            return torch.export.export(self, inputs, dynamic_shapes=self.dynamic_shapes())

    def forward(self, *inputs: Tensor) -> Tensor:
        names = self.input_names()
        if len(inputs) != len(names):
            raise TypeError(f"expected {len(names)} tensors {names}, got {len(inputs)}")
        given = dict(zip(names, inputs))
        prepared = PreparedEdges(*(given[f"prepared_{n}"] for n in PREPARED_INPUTS),
                                 edge_set=self.model._edge_set_name())
        batch = _BatchTensors(**{n: given[n] for n in self._batch_inputs},
                              prepared_edges=prepared)
        return self.model(batch, distribution=self.distribution)


class _LocalGINE(torch.nn.Module):
    r"""One local message-passing step over the bonds, as a residual branch:
    :math:`\mathbf{x} + \mathrm{Dropout}(\mathrm{GINE}(\mathrm{LN}(\mathbf{x}),
    \mathbf{b}))` (pre-norm) or :math:`\mathrm{LN}(\mathbf{x} +
    \mathrm{Dropout}(\mathrm{GINE}(\mathbf{x}, \mathbf{b})))` (post-norm), with
    :math:`\mathrm{GINE}(\mathbf{x})_i = \mathrm{MLP}((1 + \epsilon)\mathbf{x}_i +
    \sum_{j \to i} \mathrm{ReLU}(\mathbf{x}_j + \mathbf{b}_{ji}))`.
    Shapes: x [N, C], bonds [2, E_b], bond states [E_b, C] -> [N, C]."""

    def __init__(self, channels: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        mlp = torch.nn.Sequential(torch.nn.Linear(channels, channels), torch.nn.ReLU(),
                                  torch.nn.Linear(channels, channels))
        self.conv = GINEConv(mlp, train_eps=True)
        self.norm = torch.nn.LayerNorm(channels)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor, bonds: Tensor, bond_states: Tensor) -> Tensor:
        if self.norm_first:
            return x + self.dropout(self.conv(self.norm(x), bonds, bond_states))
        return self.norm(x + self.dropout(self.conv(x, bonds, bond_states)))


class _FirstColumnEmbedding(torch.nn.Embedding):
    """An embedding of a type index given as ``[N]`` or ``[N, 1]``."""

    def forward(self, index: Tensor) -> Tensor:
        return super().forward(index.view(-1).long())


def _unique_small(code: Tensor, bound: int) -> Tuple[Tensor, Tensor]:
    """``torch.unique(code, return_inverse=True)`` for codes in ``0..bound-1``:
    by a presence table (``bincount``) instead of a sort when ``bound`` is
    small (the codes of bond features and memberships: a few hundred)."""
    if bound > max(4 * code.numel(), 1 << 16):
        return torch.unique(code, return_inverse=True)
    present = torch.bincount(code, minlength=bound) > 0
    rank = present.cumsum(0) - 1          # a present code's index among the present ones
    return present.nonzero().squeeze(1), rank.index_select(0, code)


def _full_positions(ptr: Tensor, edge_index: Tensor) -> Tensor:
    """Position of every edge ``j -> i`` (inside one graph) in
    :func:`graphformer.patterns.full` of ``ptr``: graph g's pairs start after
    the squares of the sizes before it, in target-major order."""
    sizes = ptr.diff()
    start = torch.cumsum(sizes * sizes, 0) - sizes * sizes
    src, dst = edge_index[0], edge_index[1]
    g = torch.searchsorted(ptr, dst, right=True) - 1
    n, offset = sizes.index_select(0, g), ptr.index_select(0, g)
    return start.index_select(0, g) + (dst - offset) * n + (src - offset)


def masked_loss(pred: Tensor, target: Tensor, task: Task) -> Tensor:
    """Mean loss over the labelled entries only (NaN targets are missing):
    MSE for regression, binary cross-entropy with logits for classification."""
    target = target.view(pred.shape).to(pred.dtype)
    mask = ~torch.isnan(target)
    if not mask.any():
        return pred.sum() * 0.0
    if task == "classification":
        return F.binary_cross_entropy_with_logits(pred[mask], target[mask])
    return F.mse_loss(pred[mask], target[mask])


def _check_backend(backend: str) -> None:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"'attention_backend' must be one of {ATTENTION_BACKENDS}, "
                         f"got {backend!r}")
