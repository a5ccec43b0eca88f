"""Checkpoints: written atomically, read as data (``weights_only=True``).

A checkpoint is a dict of tensors and plain Python values: the run config,
the model / optimizer / scheduler states, the epoch, the metric history,
the target normalisation and the names of the molecule features the model
reads (``mol_feature_names``; a checkpoint of an older graphformer has
them in its config's model section, :func:`mol_features_of`). Nothing in it
is code, so loading it cannot run any.

Every checkpoint carries a SHA-256 of its tensors (:data:`CHECKSUM`: each
tensor's name, dtype, shape and bytes, in one fixed order), written when it is
saved and checked when it is loaded; a mismatch, or non-finite model weights,
is a :class:`CheckpointError` ("... is damaged"), so no command uses a
damaged checkpoint. Checkpoints written before the checksum existed (the
shipped pre-trained one among them) are read without it; their weights are
still checked for NaN and infinity.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .._files import atomic_write
from ..data.descriptors import molecule_feature_names
from ..errors import DataError, UsageError
from ..models import Ensemble, GraphTransformer
from ..models.kernel import MorganKernelRidge
from .config import RunConfig

FORMAT = "graphformer-checkpoint"
VERSION = 1
#: the payload key of the checksum of a checkpoint's tensors
CHECKSUM = "tensor_sha256"
#: the payload keys whose tensors are model weights (checked to be finite)
WEIGHTS = ("model", "training_model")


class CheckpointError(DataError):
    """A file that is not a readable graphformer checkpoint, or one that lacks
    what it is used for (exit code 1 on the command line)."""


def _tensors(value: Any, name: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """Every tensor in ``value`` (nested dicts, lists and tuples) with its
    dotted name, in one fixed order: dict keys sorted (by type, then text)."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            yield from _tensors(value[key], f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}.{i}" if name else str(i))


def tensor_checksum(state: Dict[str, Any]) -> str:
    """The SHA-256 (hex) of the tensors of ``state`` but its :data:`CHECKSUM`:
    each one's name, dtype, shape and bytes, in :func:`_tensors`' order."""
    digest = hashlib.sha256()
    for name, tensor in _tensors({k: v for k, v in state.items() if k != CHECKSUM}):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_intact(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Refuse a loaded checkpoint whose tensors differ from the checksum it
    was saved with, or whose model weights hold NaN or infinity (the first
    such tensor is named). A checkpoint without a checksum (written by an
    older graphformer) gets only the second check."""
    saved = state.get(CHECKSUM)
    if CHECKSUM in state and (not isinstance(saved, str) or saved != tensor_checksum(state)):
        raise CheckpointError(
            f"{path} is damaged: its tensors do not match the checksum written when it was "
            f"saved (sha256 {str(saved)[:16]}..., now {tensor_checksum(state)[:16]}...); restore "
            f"it from a copy or train it again")
    for key in WEIGHTS:
        for name, tensor in _tensors(state.get(key), key):
            if (tensor.is_floating_point() or tensor.is_complex()) and \
                    not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{path} is damaged: its weights hold NaN or infinite values (first in "
                    f"{name}); it cannot be used: restore it from a copy, or train again (a run "
                    f"whose loss diverged: try a lower --lr)")


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same
    folder, flushed to disk, then renamed over ``path``. A crash leaves either
    the old checkpoint or the new one, never half of one. The file gets the
    mode of any other new file (``0o666`` minus the umask). The payload
    carries the checksum of its tensors (:data:`CHECKSUM`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    payload[CHECKSUM] = tensor_checksum(payload)
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check it
    (:func:`check_intact`); the checksum is not part of the returned state.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupt, not a torch file,
            not a graphformer checkpoint, or damaged: tensors that differ
            from its checksum, NaN or infinite weights (the message names
            the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip errors, EOF, unpickling refusals, ...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                              ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a graphformer checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {state.get('version')}; "
                              f"this graphformer reads version {VERSION}")
    check_intact(state, path)
    state.pop(CHECKSUM, None)
    return state


# What a checkpoint written by ``train`` holds, and the types that are checked.
RUN_FIELDS = {"config": dict, "model": dict, "epoch": int, "history": list, "best": dict,
              "y_mean": torch.Tensor, "y_std": torch.Tensor, "dataset": str, "metric": str,
              "task": str}
RESUME_FIELDS = {"optimizer": dict, "scheduler": dict}


#: What each kind of run's checkpoint is, and the commands that read it
#: (``None``: a molecule model of ``graphformer train``).
KINDS = {
    None: ("a molecule model", "'graphformer evaluate' / 'graphformer predict'"),
    "node-classification": ("a node-classification run",
                            "'graphformer node evaluate' / 'graphformer node predict'"),
    "link-prediction": ("a link-prediction run",
                        "'graphformer link evaluate' / 'graphformer link predict'"),
}


def require_kind(state: Dict[str, Any], path: Union[str, Path], kind: Optional[str]) -> None:
    """Refuse a checkpoint of another kind of run than ``kind``, naming what
    it is and the commands that read it."""
    got = state.get("kind")
    if got == kind:
        return
    what, commands = KINDS.get(got, (f"a run of kind {got!r}", "the command that wrote it"))
    raise CheckpointError(f"{path} is the checkpoint of {what}, not of {KINDS[kind][0]}: "
                          f"use {commands}")


def check_fields(state: Dict[str, Any], path: Union[str, Path],
                 fields: Sequence[Dict[str, type]] = (RUN_FIELDS,)) -> None:
    """Check that a loaded checkpoint has every field ``train`` writes (and, for
    resuming, ``RESUME_FIELDS``), of the right type; the error names the file
    and the missing or wrong fields."""
    if state.get("kind") in ("node-classification", "link-prediction"):
        require_kind(state, path, None)
    wanted = {k: t for group in fields for k, t in group.items()}
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CheckpointError(f"{path} is a graphformer checkpoint but lacks the field(s) "
                              f"{missing}: it was not written by 'graphformer train' or was "
                              f"edited")
    wrong = [f"{k} ({type(state[k]).__name__}, expected {t.__name__})"
             for k, t in wanted.items()
             if not isinstance(state[k], t) or (t is int and isinstance(state[k], bool))]
    if wrong:
        raise CheckpointError(f"{path} has field(s) of the wrong type: {', '.join(wrong)}")


def run_config(state: Dict[str, Any], path: Union[str, Path]) -> RunConfig:
    """The run config stored in a checkpoint; an invalid one is a
    :class:`CheckpointError` naming the file and the key."""
    try:
        return RunConfig.from_saved(state["config"])
    except ValueError as err:
        raise CheckpointError(f"{path} holds an invalid run config: {err}") from None


def mol_features_of(state: Dict[str, Any], path: Union[str, Path] = "checkpoint"
                    ) -> Tuple[int, Tuple[str, ...]]:
    """The number and names of the molecule features the model of a
    checkpoint written by ``train`` reads: its ``mol_feature_names``, or
    for a checkpoint of an older graphformer, ``mol_features`` and
    ``mol_feature_names`` of its config's model section (none when absent).
    A value of the wrong type is a :class:`CheckpointError` naming the file."""
    if "mol_feature_names" in state:
        names, width = state["mol_feature_names"], None
    else:
        model = state.get("config", {}).get("model", {}) \
            if isinstance(state.get("config"), dict) else {}
        model = model if isinstance(model, dict) else {}
        names, width = model.get("mol_feature_names", []), model.get("mol_features")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: 'mol_feature_names' must be a list of names, got "
                              f"{names!r}")
    if width is None:
        width = len(names)
    if not isinstance(width, int) or isinstance(width, bool) or width < 0 or \
            (names and len(names) != width):
        raise CheckpointError(f"{path}: its model config has mol_features = {width!r} and "
                              f"{len(names)} mol_feature_names")
    return width, tuple(names)


def model_from_checkpoint(state: Dict[str, Any], path: Union[str, Path] = "checkpoint"
                          ) -> Union[GraphTransformer, Ensemble]:
    """The trained model of a checked checkpoint (in eval mode): a
    :class:`~graphformer.models.Ensemble` of ``train.ensemble`` models for
    the checkpoint of an ensemble (``graphformer train --ensemble K``); weights that
    do not fit its config, a normalisation of the wrong size, or molecule
    features this graphformer would not compute as they were in training
    are a :class:`CheckpointError` naming the file and the first mismatches."""
    cfg = run_config(state, path)
    width, names = mol_features_of(state, path)
    if width:
        now = molecule_feature_names(cfg.data.molecule_features, cfg.data.feature_columns)
        if now != names:
            changed = [f"{k}: {a!r} then, {b!r} now" for k, (a, b) in enumerate(
                zip(names, now)) if a != b][:3]
            raise CheckpointError(
                f"{path}: its model was trained on {width} molecule features, "
                f"but its data settings (molecule_features {cfg.data.molecule_features}, "
                f"feature_columns {cfg.data.feature_columns}) give {len(now)} here"
                f"{' (' + '; '.join(changed) + ')' if changed else ''}: was it written by "
                f"another graphformer version?")
    k = cfg.train.ensemble
    models: List[torch.nn.Module] = [
        GraphTransformer(cfg.model, mol_feature_names=names, mol_features=width,
                         attention_backend=cfg.train.attention_backend) for _ in range(k)]
    # "auto" is resolved when an ensemble is put together (one model has none)
    if getattr(cfg.train, "kernel_member", "none") == "morgan":
        model = _with_kernel_member(models, state, path)
    else:
        model = models[0] if k == 1 else Ensemble(models)
    try:
        model.load_state_dict(state["model"])
    except Exception as err:  # missing / unexpected keys, size mismatches, non-tensors
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] \
            or [f"{type(err).__name__}: {err}"]
        detail = "; ".join(lines)
        raise CheckpointError(f"{path}: its weights do not fit its model config "
                              f"({detail[:400]}{'...' if len(detail) > 400 else ''})") from None
    tasks = cfg.model.num_tasks
    for key in ("y_mean", "y_std"):
        value = state[key]
        if value.numel() != tasks or not torch.isfinite(value).all() or \
                (key == "y_std" and not (value > 0).all()):
            raise CheckpointError(f"{path}: '{key}' must hold {tasks} finite value(s), one per "
                                  f"task{', all > 0' if key == 'y_std' else ''}, got "
                                  f"{value.tolist()}")
    return model.eval()


def _with_kernel_member(models: List[torch.nn.Module], state: Dict[str, Any],
                        path: Union[str, Path]) -> Ensemble:
    """The ensemble of ``models`` and an empty kernel member of the sizes
    ``state`` holds, with the member weights it holds (checked by
    :class:`~graphformer.models.Ensemble`); its weights are loaded next."""
    saved = state["model"] if isinstance(state.get("model"), dict) else {}
    alpha, weights = saved.get(f"members.{len(models)}.alpha"), saved.get("weights")
    if not isinstance(alpha, torch.Tensor) or alpha.dim() != 2 or alpha.size(0) < 1 or \
            not isinstance(weights, torch.Tensor):
        raise CheckpointError(f"{path}: its config names a kernel member, but its weights "
                              f"hold no such member (members.{len(models)}.alpha and "
                              f"weights)")
    try:
        return Ensemble([*models, MorganKernelRidge(alpha.size(0), alpha.size(1))], weights)
    except ValueError as err:
        raise CheckpointError(f"{path}: its member weights are malformed ({err})") from None


def check_processes(state: Dict[str, Any], world: int, path: Union[str, Path]) -> None:
    """Refuse (``UsageError``) to resume a checkpoint under another number of
    processes than wrote it (``state["processes"]``; not checked for a
    checkpoint of an older graphformer, which did not record it): the batch
    size is per process, so the steps per epoch, the learning-rate schedule
    and every batch would change, and the run would not end as the
    uninterrupted one."""
    saved = state.get("processes")
    if saved is not None and saved != world:
        raise UsageError(f"{path} was written by a run of {saved} process(es), and this one "
                         f"has {world}: the batch size is per process, so the resumed run would "
                         f"not compute the interrupted one; resume it with {saved} process(es) "
                         f"(torchrun --nproc-per-node ...), or start a new run")


def check_reads_smiles(cfg: RunConfig, path: Union[str, Path], command: str) -> None:
    """Refuse (``UsageError``) a model whose atom and bond features are not
    the ones SMILES are read into (OGB's: ``model.features == "ogb"``): a
    ZINC model reads ZINC's atom types, which ``command`` cannot make from a
    SMILES."""
    if cfg.model.features != "ogb":
        raise UsageError(f"{path}: its model reads {cfg.model.features!r} atom features (it "
                         f"was trained on {cfg.data.dataset}), not the OGB features SMILES are "
                         f"read into: graphformer {command} takes models of SMILES data sets "
                         f"(a CSV file, the bundled sets, OGB's ogbg-mol*)")


def load_run(path: Union[str, Path]
             ) -> Tuple[Dict[str, Any], RunConfig, Union[GraphTransformer, Ensemble]]:
    """A checkpoint written by ``train``, checked: its state, its run config
    and its trained model (eval mode). Every problem is a
    :class:`CheckpointError` (or ``FileNotFoundError``) naming the file."""
    state = load_checkpoint(path)
    check_fields(state, path)
    return state, run_config(state, path), model_from_checkpoint(state, path)
