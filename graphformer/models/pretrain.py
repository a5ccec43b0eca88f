"""Pre-training heads on the :class:`~graphformer.models.GraphTransformer` trunk.

Two self-supervised objectives on unlabelled molecules:

- masked atoms: a fraction of the atoms enter the trunk as a learned mask
  embedding instead of their features, and a head predicts each masked
  atom's atomic-number class (OGB atom feature 0) from its final state
  (cross-entropy);
- descriptors: a head predicts normalised RDKit descriptors
  (:mod:`graphformer.data.pretrain_targets`) from the pooled graph vector
  (MSE, missing values masked out).

The trunk is a ``GraphTransformer`` whose head is dropped; its weights
(``trunk.*`` in the state dict) are what ``graphformer train --init`` starts
from (:func:`trunk_state`, :func:`check_trunk_config`).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from ogb.utils.features import get_atom_feature_dims
from torch import Tensor
from torch_geometric.data import Batch

from .graph_transformer import GraphTransformer, GraphTransformerConfig, masked_loss

#: atomic-number classes of OGB atom feature 0
NUM_ATOM_CLASSES = get_atom_feature_dims()[0]
#: the config keys that decide the trunk's weights: a trunk initialises
#: another model only when all of them agree
TRUNK_KEYS = ("hidden", "layers", "heads", "patterns", "k", "self_loops", "edge_update",
              "norm_first", "pooling", "rwse_steps", "lap_pe", "features")
TRUNK_PREFIX = "trunk."


def mask_atoms(num_atoms: int, rate: float, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device] = None) -> Tensor:
    """A boolean mask ``[num_atoms]`` with ``max(1, round(rate * num_atoms))``
    atoms chosen uniformly without replacement (at least one, so every batch
    has a masked-atom loss)."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"mask rate must be in (0, 1), got {rate}")
    count = min(num_atoms, max(1, round(rate * num_atoms)))
    chosen = torch.randperm(num_atoms, generator=generator)[:count]
    mask = torch.zeros(num_atoms, dtype=torch.bool)
    mask[chosen] = True
    return mask.to(device) if device is not None else mask


class PretrainModel(torch.nn.Module):
    """A ``GraphTransformer`` trunk with a masked-atom head and a descriptor
    head.

    Args:
        config: the trunk's config (``num_tasks`` and ``task`` are unused).
        num_descriptors: descriptors predicted per molecule.
    """

    def __init__(self, config: GraphTransformerConfig, num_descriptors: int) -> None:
        super().__init__()
        if config.features != "ogb":
            raise ValueError("pre-training predicts OGB atom features: 'features' must be 'ogb'")
        self.config = config
        self.trunk = GraphTransformer(config)
        self.trunk.head = torch.nn.Identity()  # replaced by the heads below
        h = config.hidden
        self.mask_embedding = torch.nn.Parameter(torch.randn(h) * 0.02)
        self.atom_head = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.GELU(),
                                             torch.nn.Linear(h, NUM_ATOM_CLASSES))
        self.descriptor_head = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.GELU(),
                                                   torch.nn.Linear(h, num_descriptors))

    def forward(self, batch: Batch, atom_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """Atomic-number logits of the masked atoms ``[M, NUM_ATOM_CLASSES]``
        and descriptor predictions ``[B, num_descriptors]``."""
        nodes, g, _ = self.trunk.encode(batch, atom_mask=atom_mask,
                                        mask_embedding=self.mask_embedding)
        return self.atom_head(nodes[atom_mask]), self.descriptor_head(g)


def pretrain_losses(model: torch.nn.Module, batch: Batch, atom_mask: Tensor,
                    desc_target: Tensor) -> Dict[str, Tensor]:
    """The two objectives on one batch: ``atom`` (cross-entropy of the masked
    atoms' classes), ``atom_correct`` (how many were right) and
    ``descriptors`` (MSE on the normalised targets, NaN = missing)."""
    logits, desc = model(batch, atom_mask)
    target = batch.x[atom_mask, 0].long()
    return {"atom": F.cross_entropy(logits, target),
            "atom_correct": (logits.argmax(1) == target).sum(),
            "descriptors": masked_loss(desc, desc_target, "regression")}


def trunk_state(state: Mapping[str, Tensor], pretrained: bool) -> Dict[str, Tensor]:
    """The trunk weights of a model state dict: those under ``trunk.`` of a
    :class:`PretrainModel` (``pretrained``), or every weight but the head and
    the molecule-feature scaler (fitted on its own data) of a
    ``GraphTransformer``."""
    if pretrained:
        return {k[len(TRUNK_PREFIX):]: v for k, v in state.items() if k.startswith(TRUNK_PREFIX)}
    return {k: v for k, v in state.items() if not k.startswith(("head.", "mol_scaler."))}


def check_trunk_config(saved: Mapping[str, Any], config: GraphTransformerConfig,
                       where: str) -> None:
    """A ``ValueError`` naming the first of :data:`TRUNK_KEYS` where the
    saved model config (a dict) and ``config`` differ, with both values."""
    given = asdict(config)
    for key in TRUNK_KEYS:
        a, b = saved.get(key), given[key]
        if key == "patterns":
            a, b = list(a or []), list(b)
        if a != b:
            raise ValueError(f"{where}: its model has {key} = {a!r}, this run's has {b!r}; "
                             f"the trunk fits only a model of the same {', '.join(TRUNK_KEYS)}")
