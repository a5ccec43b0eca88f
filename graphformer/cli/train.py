"""``graphformer train``: train a graph transformer on a molecular data set."""
from __future__ import annotations

import argparse
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import ConfigError, UsageError
from ..models.graph_transformer import GraphTransformerConfig
from ..train import RunConfig, read_config_file, resume, train
from ..train.config import DataConfig, TrainConfig
from ..train.checkpoint import load_checkpoint, run_config
from ..train.ensemble import saved_ensemble
from ..train.run_dir import RUNTIME_KEYS
from ._config_flags import add_config_flags, config_flags, settings

#: the ``train`` settings that only ``graphformer train`` takes (not ``pretrain``)
TRAIN_ONLY = ("init", "pretrained", "ema", "head_epochs", "ensemble", "member_processes",
              "loss", "evidential_lambda", "kernel_member", "compile")
# flag -> (section, key): every setting of the three config sections
_FLAGS = {**config_flags(DataConfig, "data"), **config_flags(GraphTransformerConfig, "model"),
          **config_flags(TrainConfig, "train")}
#: the flags written --x/--no-x
_BOOLEAN_FLAGS = {f.name for cls in (DataConfig, GraphTransformerConfig, TrainConfig)
                  for f in settings(cls) if typing.get_type_hints(cls)[f.name] is bool}
# Flags a resumed run accepts: where it runs, not what it computes (the
# settings of RUNTIME_KEYS, each flag named as its key).
RUNTIME_FLAGS = tuple(sorted(key for _, key in RUNTIME_KEYS))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train on a data set (default: bundled ESOL)",
                       description="Train a graph transformer. Settings come from the "
                       "defaults, then --config FILE (YAML or JSON with sections data, model, "
                       "train), then the flags given.")
    add_run_arguments(p, "runs/<dataset>-<time>")
    add_config_flags(p.add_argument_group("data"), DataConfig, "data")
    add_model_arguments(p)
    add_training_arguments(p, train_only=True)
    p.set_defaults(run=run)


def add_run_arguments(p: argparse.ArgumentParser, default_dir: str) -> None:
    """The flags of the run itself: --config, --run-dir (default
    ``default_dir``), --resume, --overwrite, --quiet."""
    p.add_argument("--config", type=Path, help="YAML or JSON config file")
    p.add_argument("--run-dir", type=Path, help=f"where to write the run (default: "
                   f"{default_dir})")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its saved "
                   "settings (only --device, --threads, --attention-backend, --compile, "
                   "--member-processes and --root may be given with it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --run-dir (the files graphformer wrote "
                   "for it are removed once the new run's settings and data are checked; "
                   "other files are left alone)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")


def section_flags(*sections: str, leave_out: Tuple[str, ...] = ()) -> Dict[str, Tuple[str, str]]:
    """The flags of ``train`` (flag -> (section, key)) that set keys of
    ``sections``, but for ``leave_out``: for a command that shares them."""
    return {flag: where for flag, where in _FLAGS.items()
            if where[0] in sections and flag not in leave_out}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model flags (the ``model`` config section's settings)."""
    add_config_flags(p.add_argument_group("model"), GraphTransformerConfig, "model")


def add_training_arguments(p: argparse.ArgumentParser, train_only: bool = False
                           ) -> argparse._ArgumentGroup:
    """The training flags (the ``train`` config section's settings; those of
    :data:`TRAIN_ONLY` with ``train_only``); returns their group."""
    t = p.add_argument_group("training")
    add_config_flags(t, TrainConfig, "train", leave_out=() if train_only else TRAIN_ONLY)
    return t


def flag_text(name: str) -> str:
    """How the flag of config key ``name`` is written (``--batch-size``)."""
    flag = "--" + name.replace("_", "-")
    return f"{flag}/--no-{flag[2:]}" if name in _BOOLEAN_FLAGS else flag


def given_flags(args: argparse.Namespace, names) -> List[str]:
    """The flags of ``names`` that were given (not left at ``None``)."""
    return [name for name in names if getattr(args, name, None) is not None]


def config_from_args(args: argparse.Namespace,
                     base: Optional[Dict[str, Dict[str, Any]]] = None,
                     flags_table: Optional[Dict[str, Tuple[str, str]]] = None,
                     build: Callable[[Dict[str, Any]], Any] = RunConfig.from_dict) -> Any:
    """``base`` (default: the defaults, then the config file), then the flags
    that were given. A bad value is named by its flag when it came from one,
    else by its config file and key. ``flags_table`` (flag -> section, key;
    default: ``train``'s) and ``build`` (default ``RunConfig.from_dict``) let
    another command read its own config the same way."""
    values: Dict[str, Dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for section, content in (base or {}).items():
        values.setdefault(section, {}).update(content)
    if args.config is not None:
        for section, content in read_config_file(args.config).items():
            if content is not None and not isinstance(content, dict):
                raise UsageError(f"{args.config}: config section {section!r} must map keys "
                                 f"to values, got {content!r}")
            values.setdefault(section, {}).update(content or {})
    flags = {}
    for flag, (section, key) in (flags_table or _FLAGS).items():
        value = getattr(args, flag, None)
        if value is not None:
            values.setdefault(section, {})[key] = value
            flags[(section, key)] = flag
    try:
        return build(values)
    except ConfigError as err:
        flag = flags.get((err.section, err.key))
        if flag is not None:
            raise UsageError(f"argument {flag_text(flag)}: {err.reason}") from None
        if args.config is not None:
            raise UsageError(f"{args.config}: {err}") from None
        raise
    except UsageError as err:
        if args.config is not None:
            raise UsageError(f"{err} (settings from {args.config} and the flags given)") from None
        raise


def init_distributed(device: str) -> bool:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1):
    NCCL on CUDA, gloo on CPU. Returns whether this call initialised it."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    started = init_distributed(args.device or "auto")
    try:
        return _run(args)
    finally:
        if started:
            dist.destroy_process_group()


def _resume_config(args: argparse.Namespace) -> Optional[RunConfig]:
    """The config to resume ``args.resume`` with: ``None`` (the saved one)
    unless runtime flags are given. Flags that would change what the run
    computes are refused by name: the resumed run must end with exactly the
    metrics of an uninterrupted one."""
    check_resume_flags(args, _FLAGS)
    if not given_flags(args, RUNTIME_FLAGS):
        return None
    run_dir = Path(args.resume)
    last = run_dir / "last.pt"
    state = load_checkpoint(last) if last.is_file() else None
    if state is not None and state.get("kind") is not None:
        return None  # not a run of train (pretrain's): train() names the problem
    saved = run_config(state, last) if state is not None else \
        saved_ensemble(run_dir)    # an ensemble's settings are in its config.json
    if saved is None:
        return None  # train() names the problem
    return config_from_args(args, base=saved.to_dict())


def check_resume_flags(args: argparse.Namespace, flags_table: Dict[str, Tuple[str, str]]
                       ) -> None:
    """Refuse, by name, the flags of ``flags_table`` (and --config,
    --overwrite, another --run-dir) that would change what a resumed run
    computes; only :data:`RUNTIME_FLAGS` may come with --resume."""
    conflicts = [flag_text(f) for f in flags_table if f not in RUNTIME_FLAGS and
                 getattr(args, f, None) is not None]
    conflicts += ["--config"] if args.config is not None else []
    conflicts += ["--overwrite"] if args.overwrite else []
    if args.run_dir is not None and Path(args.run_dir).resolve() != Path(args.resume).resolve():
        conflicts.append("--run-dir")
    if conflicts:
        raise UsageError(f"--resume {args.resume} continues the run with its saved settings; "
                         f"these flags would change it: {', '.join(conflicts)} (drop them, or "
                         f"start a new run with another --run-dir)")


def default_run_dir(prefix: str) -> Path:
    """``runs/<prefix>-<date>-<time>``, the time rank 0's under ``torchrun``:
    the ranks must name one folder (an ensemble's ranks read its members'
    checkpoints), and a second may pass between their clocks' readings."""
    import torch.distributed as dist

    from ..train.run import resolve_device

    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if dist.is_initialized() and dist.get_world_size() > 1:
        # NCCL broadcasts from the rank's GPU (gloo: on the CPU)
        device = resolve_device("cuda") if dist.get_backend() == "nccl" else None
        dist.broadcast_object_list(stamp, src=0, device=device)
    return Path("runs") / f"{prefix}-{stamp[0]}"


def _run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        run_dir = args.resume
        try:
            summary = resume(run_dir, _resume_config(args), progress=not args.quiet)
        except KeyboardInterrupt:
            _interrupted(run_dir)
            raise
    else:
        cfg = config_from_args(args)
        run_dir = args.run_dir or default_run_dir(Path(cfg.data.dataset).stem.lower())
        try:
            summary = train(cfg, run_dir, progress=not args.quiet, overwrite=args.overwrite)
        except KeyboardInterrupt:
            _interrupted(run_dir)
            raise
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    metric = summary["metric"]
    final = summary["final"]
    if "members" in summary:
        kernel = summary.get("kernel_member")
        extra = "" if not kernel else (
            f" and a fingerprint kernel member of weight "
            f"{', '.join(f'{w:.2f}' for w in kernel['weight'])}")
        print(f"test {metric} of the ensemble of {len(summary['members'])}{extra}: "
              f"{summary[f'test_{metric}_at_best']:.4f} (each member at its best validation "
              f"epoch: {', '.join(map(str, summary['best_epoch']))})")
    elif final:
        print(f"test {metric}: {final[f'test_{metric}']:.4f} (final epoch {final['epoch']}); "
              f"at the best validation epoch {summary['best_epoch']}: "
              f"{summary[f'test_{metric}_at_best']:.4f}")
    print(f"run directory: {run_dir}")
    return 0


def _interrupted(run_dir: Path) -> None:
    if (Path(run_dir) / "last.pt").is_file():
        print(f"graphformer: the run in {run_dir} can continue with: graphformer train "
              f"--resume {run_dir}", file=sys.stderr)
