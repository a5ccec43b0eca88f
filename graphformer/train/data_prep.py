"""The data of a molecule training run, ready for the loop: the data set
loaded with the encodings the model uses, split, checked
(:mod:`~graphformer.train.data_checks`), the regression targets'
normalisation, and the data's fingerprint that a resumed run compares
(:class:`Prepared`, :func:`prepare`); the model config that fits the data
(:func:`model_config_for`) and the model (:func:`model_for`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Subset

from ..data.encodings import encodings
from ..datasets import Benchmark, load_dataset, make_split
from ..errors import UsageError
from ..models import GraphTransformer, GraphTransformerConfig
from .batches import batch_loader
from .config import RunConfig
from .data_checks import all_mol_features, all_targets, check_scorable, check_split, \
    check_targets, fingerprint
from .uncertainty import LOSSES


@dataclass
class Prepared:
    """Data ready for training: the benchmark, its split, the regression
    target normalisation (train mean and std per task), the data's
    fingerprint (:func:`~graphformer.train.data_checks.fingerprint`), and
    the training part's molecule features ``[N_train, F]`` (None without
    any), which the model's feature scaler is fitted on."""
    bench: Benchmark
    split: Dict[str, Tensor]
    y_mean: Tensor
    y_std: Tensor
    fingerprint: Optional[Dict[str, Any]] = None
    train_mol_x: Optional[Tensor] = None
    _batches: Dict[Tuple[str, int], List[Any]] = field(default_factory=dict, repr=False)

    def subset(self, part: str) -> Subset:
        return Subset(self.bench.dataset, self.split[part].tolist())

    def eval_batches(self, part: str, batch_size: int) -> Iterable[Any]:
        """The batches of one part in order, collated once and kept for every
        later evaluation (parts of up to :data:`EVAL_CACHE_GRAPHS` graphs;
        larger ones are collated as they are read)."""
        key = (part, batch_size)
        if key in self._batches:
            return self._batches[key]
        loader = batch_loader(self.subset(part), batch_size)
        if len(self.split[part]) > EVAL_CACHE_GRAPHS:
            return loader
        self._batches[key] = list(loader)
        return self._batches[key]


#: Evaluation parts of up to this many graphs are collated once per run.
EVAL_CACHE_GRAPHS = 100_000
#: Graphs per evaluation batch at least (the training batch size when larger):
#: without gradients, larger batches cost no more memory than training's and
#: evaluate the bundled sets about 1.25x faster than batches of 32. The
#: metrics do not depend on it beyond float rounding.
EVAL_BATCH_GRAPHS = 128


def prepare(cfg: RunConfig, log: bool = True) -> Prepared:
    """Load the data set of ``cfg.data`` with the encodings ``cfg.model`` uses,
    split it and check it (:mod:`~graphformer.train.data_checks`: finite
    targets, no empty part, scorable validation and test parts). Molecule
    features (``cfg.data.molecule_features`` / ``feature_columns``) are
    computed with the graphs; only the training part's are kept for fitting
    their scaling."""
    d = cfg.data
    bench = load_dataset(d.dataset, d.root, smiles_column=d.smiles_column,
                         target_columns=d.target_columns, task=d.task,
                         pre_transform=encodings(cfg.model.rwse_steps, cfg.model.lap_pe),
                         log=log, molecule_features=d.molecule_features,
                         feature_columns=d.feature_columns)
    split = make_split(bench, d.split, seed=cfg.split_seed())
    y_all = all_targets(bench)
    check_targets(bench, y_all)
    check_split(bench, split, d.split)
    check_scorable(bench, split, y_all, d.target_columns)
    y = y_all[split["train"]]
    if bench.task == "regression":
        mean = torch.nanmean(y, dim=0)
        centred = torch.where(torch.isnan(y), torch.zeros_like(y), y - mean)
        count = (~torch.isnan(y)).sum(0).clamp_min(1)
        std = (centred.pow(2).sum(0) / count).sqrt().clamp_min(1e-6)
    else:
        mean, std = torch.zeros(y.size(1)), torch.ones(y.size(1))
    mol_x = all_mol_features(bench)
    return Prepared(bench, split, mean, std, fingerprint(bench, split, y_all, mol_x),
                    mol_x[split["train"]] if mol_x is not None else None)


def model_config_for(cfg: RunConfig, bench: Benchmark) -> GraphTransformerConfig:
    """The model config with the data set's task, task count and features,
    and the head's ``output`` of ``train.loss``. A distribution loss on a
    classification data set is a :class:`UsageError`. (The molecule
    features are the model's arguments: :func:`model_for`.)"""
    if cfg.train.loss != "mse" and bench.task != "regression":
        raise UsageError(f"--loss {cfg.train.loss} (train.loss) trains a predictive "
                         f"distribution of a regression target; {bench.name} is a "
                         f"{bench.task} data set (use --loss mse)")
    return replace(cfg.model, num_tasks=bench.num_tasks, task=bench.task,  # type: ignore[arg-type]
                   features=bench.features,  # type: ignore[arg-type]
                   output=LOSSES[cfg.train.loss])


def model_for(cfg: RunConfig, bench: Benchmark) -> GraphTransformer:
    """A new model (fresh weights) for ``bench``: :func:`model_config_for`,
    the data set's molecule features and the run's ``train.attention_backend``."""
    return GraphTransformer(model_config_for(cfg, bench),
                            mol_feature_names=tuple(bench.feature_names),
                            attention_backend=cfg.train.attention_backend)
