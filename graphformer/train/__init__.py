"""Training: run configuration, the training loop, metrics and checkpoints."""
from .api import resume, train
from .checkpoint import CheckpointError, load_checkpoint, load_run, save_checkpoint
from .config import DataConfig, RunConfig, TrainConfig, read_config_file
from .data_prep import Prepared, prepare
from .loop import evaluate_split, predict
from .metrics import compute_metrics

__all__ = [
    "RunConfig", "DataConfig", "TrainConfig", "read_config_file",
    "train", "resume", "prepare", "Prepared", "predict", "evaluate_split",
    "compute_metrics", "save_checkpoint", "load_checkpoint", "load_run", "CheckpointError",
]
