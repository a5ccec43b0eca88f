"""Baselines trained through the same loop as :class:`GraphTransformer`."""
from __future__ import annotations

import torch
from torch_geometric.nn import global_mean_pool
from torch_geometric.nn.models import GIN

from .encoders import AtomEncoder
from .graph_transformer import GraphTransformerConfig


class GINBaseline(torch.nn.Module):
    """PyG's GIN with graphformer's inputs and head: AtomEncoder (+ RWSE) ->
    :class:`torch_geometric.nn.models.GIN` (batch norm) -> mean pool -> MLP head.

    Takes the :class:`GraphTransformerConfig` of the model it is compared with
    (hidden, layers, dropout, rwse_steps, num_tasks) and a PyG ``Batch``;
    returns ``[B, num_tasks]``."""

    def __init__(self, config: GraphTransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.atom_encoder = AtomEncoder(config.hidden)
        self.rwse = torch.nn.Linear(config.rwse_steps, config.hidden) if config.rwse_steps else None
        self.gin = GIN(config.hidden, config.hidden, num_layers=config.layers,
                       dropout=config.dropout, norm="batch_norm")
        self.head = torch.nn.Sequential(
            torch.nn.Linear(config.hidden, config.hidden), torch.nn.GELU(),
            torch.nn.Dropout(config.dropout), torch.nn.Linear(config.hidden, config.num_tasks))

    def forward(self, batch):
        x = self.atom_encoder(batch.x)
        if self.rwse is not None:
            x = x + self.rwse(batch.rwse)
        x = self.gin(x, batch.edge_index)
        return self.head(global_mean_pool(x, batch.batch, size=batch.num_graphs))
