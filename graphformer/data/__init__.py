"""Raw input becomes graphs: molecules (SMILES), token sequences, edge lists."""
from .descriptors import (MOLECULE_FEATURE_SETS, RDKIT2D_NAMES, molecule_feature_names,
                          molecule_features)
from .edge_list import convert_edge_list, read_edge_list, write_edge_list
from .graph_store import OnDiskGraph, load_graph
from .encodings import LaplacianPE, RandomWalkSE, encodings
from .molecule import from_mol, from_smiles, parse_smiles
from .sampling import NeighborSampler, neighbor_sampler
from .snli import SNLI_LABELS, SNLISplit, load_snli, load_word_vectors, read_snli, snli_vocab
from .tokens import (
    RelativePosition,
    SinusoidalPosition,
    build_vocab,
    from_token_batch,
    from_tokens,
    sinusoidal_encoding,
)

__all__ = [
    "from_smiles", "from_mol", "parse_smiles",
    "MOLECULE_FEATURE_SETS", "RDKIT2D_NAMES", "molecule_feature_names", "molecule_features",
    "from_tokens", "from_token_batch", "build_vocab", "RelativePosition",
    "SinusoidalPosition", "sinusoidal_encoding",
    "read_edge_list", "write_edge_list", "convert_edge_list", "load_graph", "OnDiskGraph",
    "RandomWalkSE", "LaplacianPE", "encodings",
    "NeighborSampler", "neighbor_sampler",
    "SNLI_LABELS", "SNLISplit", "read_snli", "load_snli", "snli_vocab", "load_word_vectors",
]
