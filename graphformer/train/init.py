"""Starting a model from pre-trained weights (``graphformer train --init``).

The trunk of a model (encoders, blocks, final norm: everything but the head)
is loaded from a checkpoint of ``graphformer pretrain`` (or of ``graphformer
train``); the head starts fresh. The checkpoint's model must agree with the
run's in every key that shapes the trunk
(:data:`~graphformer.models.pretrain.TRUNK_KEYS`); a difference is a
:class:`CheckpointError` naming the key and both values.

:func:`default_checkpoint` is the small checkpoint shipped in
``graphformer/pretrained/`` (see its README for how it was made).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..datasets.molecules import file_digest
from ..errors import UsageError
from ..models import GraphTransformer
from ..models.pretrain import check_trunk_config, trunk_state
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

#: what ``graphformer pretrain`` writes in its checkpoints' ``kind`` field
PRETRAIN_KIND = "pretrain"
#: the shipped checkpoint, relative to the package
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "pretrained" / "moses-default.pt"


def default_checkpoint() -> Optional[Path]:
    """The shipped pre-trained checkpoint, if this installation has one."""
    return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else None


def export_checkpoint(source: Union[str, Path], target: Union[str, Path]) -> None:
    """Write ``source`` (a checkpoint of ``graphformer pretrain``) to
    ``target`` without what only resuming needs (optimiser and schedule
    states): a third of the size, for shipping."""
    state = load_checkpoint(source)
    if state.get("kind") != PRETRAIN_KIND:
        raise CheckpointError(f"{source} is not a checkpoint of 'graphformer pretrain'")
    save_checkpoint({k: v for k, v in state.items()
                     if k not in ("optimizer", "scheduler", "format", "version")}, target)


def init_trunk(model: GraphTransformer, path: Union[str, Path]) -> Dict[str, str]:
    """Load the trunk of the checkpoint at ``path`` into ``model`` (its head
    is left as it is). Returns ``{"path", "sha256"}`` of the checkpoint, to
    record with the run.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a checkpoint (or a damaged one), no model config
            in it, a model config that differs in a trunk key (named, with
            both values), or weights that do not fit.
        UsageError: the checkpoint of an ensemble (the message names its
            first member's checkpoint to start from instead).
    """
    path = Path(path)
    state = load_checkpoint(path)
    config = state.get("config")
    saved = config.get("model") if isinstance(config, dict) else None
    if not isinstance(saved, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} holds no model and model config to start from")
    train = config.get("train") if isinstance(config, dict) else None
    members = train.get("ensemble", 1) if isinstance(train, dict) else 1
    if isinstance(members, int) and members > 1:
        raise UsageError(f"--init {path} is the checkpoint of an ensemble of {members} models, "
                         f"not of one trunk: start from one of its members instead, e.g. "
                         f"--init {path.parent / 'member-0' / 'best.pt'}")
    try:
        check_trunk_config(saved, model.config, f"--init {path}")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    weights = trunk_state(state["model"], pretrained=state.get("kind") == PRETRAIN_KIND)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise CheckpointError(f"--init {path}: its weights do not fit the model: "
                              f"{str(err).splitlines()[-1].strip()}") from None
    # the head and the molecule-feature scaler (fitted on this run's data) start fresh
    missing = [k for k in missing if not k.startswith(("head.", "mol_scaler."))]
    if missing or unexpected:
        raise CheckpointError(f"--init {path}: its trunk does not fit the model (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]})")
    return {"path": str(path), "sha256": file_digest(path)}


def resolve_init(init: Optional[str], pretrained: bool, model: torch.nn.Module
                 ) -> Optional[Path]:
    """The checkpoint a new run starts from: ``init`` when given; else the
    shipped one when ``pretrained`` and it fits the model (a model of another
    size starts from scratch); else none."""
    if init is not None:
        if not isinstance(model, GraphTransformer):
            raise CheckpointError(f"--init {init}: only a GraphTransformer starts from a "
                                  f"pre-trained trunk, not a {type(model).__name__}")
        return Path(init)
    shipped = default_checkpoint()
    if not pretrained or shipped is None or not isinstance(model, GraphTransformer):
        return None
    saved = load_checkpoint(shipped)["config"]["model"]
    try:
        check_trunk_config(saved, model.config, str(shipped))
    except ValueError:
        return None
    return shipped
