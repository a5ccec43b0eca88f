"""``graphformer pretrain``: pre-train the graph transformer's trunk on
unlabelled molecules (masked atoms and RDKit descriptors)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from ..train.pretrain import CorpusConfig, ObjectiveConfig, PretrainConfig, load_pretrain_run, \
    pretrain
from ._config_flags import add_config_flags, config_flags
from .train import RUNTIME_FLAGS, TRAIN_ONLY, add_model_arguments, add_run_arguments, \
    add_training_arguments, check_resume_flags, config_from_args, given_flags, \
    default_run_dir, init_distributed, section_flags

# flag -> (section, key)
_PRETRAIN_FLAGS = {
    **config_flags(CorpusConfig, "data"), **config_flags(ObjectiveConfig, "objective"),
    **section_flags("model", "train", leave_out=TRAIN_ONLY),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train on unlabelled molecules (masked atoms, RDKit descriptors)",
        description="Pre-train the graph transformer's trunk on a SMILES corpus: masked "
        "atoms' elements and RDKit descriptors are predicted. 'graphformer train --init "
        "RUN_DIR/best.pt' fine-tunes from the result. Settings come from the defaults, then "
        "--config FILE (sections data, model, objective, train), then the flags given.")
    add_run_arguments(p, "runs/pretrain-<time>")
    add_config_flags(p.add_argument_group("corpus"), CorpusConfig, "data")
    add_model_arguments(p)
    add_config_flags(p.add_argument_group("objectives"), ObjectiveConfig, "objective")
    add_training_arguments(p)
    p.set_defaults(run=run)


def _resume_config(args: argparse.Namespace) -> Optional[PretrainConfig]:
    """The config to resume with: the saved one, with runtime flags applied;
    any other flag is refused by name."""
    check_resume_flags(args, _PRETRAIN_FLAGS)
    last = Path(args.resume) / "last.pt"
    if not given_flags(args, RUNTIME_FLAGS) or not last.is_file():
        return None
    return config_from_args(args, base=load_pretrain_run(Path(args.resume))["config"],
                            flags_table=_PRETRAIN_FLAGS, build=PretrainConfig.from_dict)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    started = init_distributed(args.device or "auto")
    run_dir = args.resume or args.run_dir or default_run_dir("pretrain")
    try:
        if args.resume is not None:
            summary = pretrain(_resume_config(args), run_dir, resume=True,
                               progress=not args.quiet)
        else:
            if args.smiles is None and args.config is None:
                raise UsageError("give the corpus: --smiles FILE (a SMILES file, a molsets "
                                 "wheel or 'moses'), or --resume RUN_DIR")
            cfg = config_from_args(args, flags_table=_PRETRAIN_FLAGS,
                                   build=PretrainConfig.from_dict)
            summary = pretrain(cfg, run_dir, progress=not args.quiet, overwrite=args.overwrite)
    except KeyboardInterrupt:
        if (Path(run_dir) / "last.pt").is_file():
            print(f"graphformer: the run in {run_dir} can continue with: graphformer "
                  f"pretrain --resume {run_dir}", file=sys.stderr)
        raise
    finally:
        if started:
            dist.destroy_process_group()
    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    final = summary["final"]
    print(f"pretrained on {summary['molecules']} molecules ({summary['bad_smiles']} bad "
          f"SMILES left out); best validation loss {summary['best_valid_loss']:.4f} at epoch "
          f"{summary['best_epoch']}; final masked-atom accuracy "
          f"{final.get('valid_atom_accuracy', float('nan')):.3f}")
    print(f"run directory: {run_dir}")
    print(f"fine-tune with: graphformer train --init {Path(run_dir) / 'best.pt'}")
    return 0
