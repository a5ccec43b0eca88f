"""Training an ensemble (``train.ensemble = K > 1``): K whole runs, one model.

Member ``k`` is an ordinary run of the same settings with its own seed
(:meth:`TrainConfig.member`) in ``RUN_DIR/member-k/``: its own metrics,
checkpoints and summary, each selecting its best validation epoch. When
all have finished, the run directory gets

- ``config.json`` (written first: the run's settings, ``ensemble`` K);
- ``best.pt``: an :class:`~graphformer.models.Ensemble` of the members'
  best models, read by ``evaluate``, ``predict`` and :func:`load_run` like
  any checkpoint of ``train``; for regression, with the calibration of the
  ensemble's predictive distribution (the members' spread, and their own
  variances with ``--loss mve`` / ``evidential``) fitted on the validation
  part (``calibration``, :mod:`graphformer.train.uncertainty`);
- ``summary.json``: the ensemble's validation and test metrics (of the mean
  prediction), its uncertainty metrics (``uncertainty``, regression), and
  each member's summary;
- ``learning_curve.png``: every member's curves (a member draws none of
  its own), and the ensemble's metrics.

With ``train.kernel_member: morgan`` (and by default, ``auto``, where it can
join: :func:`kernel_member_for`) the ensemble gets one more member once
the graph transformers have finished: kernel ridge regression on the
training molecules' ECFP4 counts
(:class:`~graphformer.models.kernel.MorganKernelRidge`), weighted against
the transformers' mean by the validation part (:func:`kernel_weight`), its
pull on each molecule scaled by the molecule's similarity to the nearest
training molecule (the member's reach; see
:class:`~graphformer.models.Ensemble`); the
summary's ``kernel_member`` holds its weight, its validation score alone
and the blend's cross-fitted validation score (:func:`crossfit_blend`).

``resume`` skips the members that finished, resumes the one that was
interrupted, and ends with the metrics of an uninterrupted run.

The run directory is locked while the ensemble runs, and its manifest lists
the members' runs, so ``--overwrite`` (by an ensemble or by one model)
removes them (:mod:`graphformer.train.run_dir`).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import pickle
import sys
import time
import traceback
from dataclasses import replace
from multiprocessing import connection
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .._process import end_with_parent, usable_cores
from ..errors import DataError
from ..models import Ensemble
from ..models.kernel import MorganKernelRidge, count_fingerprints
from . import loop  # each member is one model's run of loop.train_model
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import RunConfig
from .data_prep import EVAL_BATCH_GRAPHS, Prepared, prepare
from .metrics import compute_metrics
from .plots import plot_learning_curve
from .run import Processes, open_run_directory, resolve_device, write_json
from .run_dir import resume_config


def member_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"member-{k}"


def member_config(cfg: RunConfig, k: int) -> RunConfig:
    """The run of member ``k``: ``cfg`` as one model with the member's seed
    (:meth:`TrainConfig.member`), on the ensemble's split (a random split
    keeps the ensemble's seed through ``data.split_seed``)."""
    return replace(cfg, data=replace(cfg.data, split_seed=cfg.split_seed()),
                   train=cfg.train.member(k))


def saved_ensemble(run_dir: Path) -> Optional[RunConfig]:
    """The settings of the ensemble's run that ``run_dir`` holds (from its
    ``config.json``, written when the run started), or ``None`` when it
    holds none (a run of one model has a ``last.pt``)."""
    path = run_dir / "config.json"
    if not path.is_file() or (run_dir / "last.pt").exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if int(saved["train"].get("ensemble", 1)) <= 1:
            return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return RunConfig.from_saved(saved)


def train_ensemble(cfg: Optional[RunConfig], run_dir: Path, saved: Optional[RunConfig],
                   progress: bool, prepared: Optional[Prepared],
                   overwrite: bool) -> Dict[str, Any]:
    """Train the members of ``cfg``, each with
    :func:`graphformer.train.loop.train_model`, one after the other or side
    by side in processes of their own (:func:`side_by_side`: the same
    results, the same files), then score their mean. ``saved``
    (:func:`saved_ensemble`) resumes the run in ``run_dir``, whose settings
    ``cfg`` may then change only where the run runs. See the module
    docstring for the files; the other arguments are those of
    :func:`graphformer.train.train`."""
    processes = Processes.current()
    writer, world = processes.is_main, processes.world
    resume = saved is not None
    with open_run_directory(run_dir, resume, overwrite, ensemble=True) as directory:
        if saved is not None:
            cfg = resume_config(saved, cfg)
        assert cfg is not None
        show = progress and writer
        if prepared is None and world == 1:   # the data once for all members
            prepared = prepare(member_config(cfg, 0), log=show)
        if not resume and prepared is not None:
            loop.check_start(member_config(cfg, 0), prepared)
        k_total = cfg.train.ensemble
        directory.start(members=k_total)  # checked: an overwritten run goes now
        if writer and not resume:
            write_json(run_dir / "config.json", cfg.to_dict())
        jobs = [_MemberJob(k, member_config(cfg, k), member_dir(run_dir, k), resume)
                for k in range(k_total)]
        processes_, threads = side_by_side(cfg, world, k_total)
        done = {job.k: summary for job in jobs if (summary := job.finished()) is not None}
        todo = [job for job in jobs if job.k not in done]
        if processes_ > 1 and len(todo) > 1:
            for job in todo:
                job.cfg = replace(job.cfg, train=replace(job.cfg.train, threads=threads))
            if show:
                print(f"ensemble: {len(todo)} members side by side in {min(processes_, len(todo))}"
                      f" processes of {threads} thread(s) each (--member-processes 1: one after "
                      f"the other)", file=sys.stderr)
            done.update(_train_side_by_side(todo, processes_, prepared, progress))
        else:
            for job in todo:
                if show:
                    print(f"ensemble member {job.k + 1}/{k_total} (seed {job.cfg.train.seed}) "
                          f"in {job.folder}", file=sys.stderr)
                done[job.k] = job.run(prepared, progress)
        members = [done[job.k] for job in jobs]
        if world > 1:   # rank 0 has written the last member's best.pt before any rank reads it
            dist.barrier()
        return _finish(cfg, run_dir, members, writer, prepared, show)


def side_by_side(cfg: RunConfig, world: int, members: int) -> Tuple[int, int]:
    """``(processes, threads of each)`` for training ``members`` members side
    by side (``train.member_processes``): more than one process only on the
    CPU and on Linux (the processes fork: macOS's system libraries are not
    safe to fork), outside torchrun. Its default (0)
    uses as many processes as the cores allow when ``train.threads`` is 0
    (torch's default, whose second thread barely speeds up a molecule
    batch), each on ``cores // processes`` threads; an explicit
    ``train.threads`` keeps the members one after the other unless
    ``member_processes`` asks otherwise."""
    asked, threads = cfg.train.member_processes, cfg.train.threads
    cores = usable_cores()
    if asked == 1 or members < 2 or world > 1 or not sys.platform.startswith("linux") or \
            resolve_device(cfg.train.device).type != "cpu":
        return 1, threads
    if asked == 0:
        if threads > 0 or cores < 2:
            return 1, threads
        processes = min(members, cores)
    else:
        processes = min(members, asked)
    return processes, threads or max(1, cores // processes)


class _MemberJob:
    """One member of an ensemble: its settings and folder, and how it runs
    (new, resumed, or finished already)."""

    def __init__(self, k: int, cfg: RunConfig, folder: Path, resume: bool) -> None:
        self.k, self.cfg, self.folder, self.resume = k, cfg, folder, resume

    def finished(self) -> Optional[Dict[str, Any]]:
        """The summary of a resumed ensemble's member that had finished."""
        if self.resume and (self.folder / "summary.json").is_file() and \
                (self.folder / "best.pt").is_file():
            return json.loads((self.folder / "summary.json").read_text())
        return None

    def run(self, prepared: Optional[Prepared], progress: bool,
            label: str = "") -> Dict[str, Any]:
        if self.resume and (self.folder / "last.pt").is_file():
            return loop.train_model(self.cfg, self.folder, resume=True, progress=progress,
                                    prepared=prepared, curve=False, label=label)
        return loop.train_model(self.cfg, self.folder, progress=progress, prepared=prepared,
                                overwrite=True, curve=False, label=label)


def _member_process(job: _MemberJob, prepared: Optional[Prepared], progress: bool,
                    result: Any) -> None:
    """The body of a member's process: its run, and how it ended, sent to
    the parent on the pipe ``result`` as ``("done" | "interrupted" |
    "error", summary or error)``."""
    end_with_parent()
    try:
        summary = job.run(prepared, progress, label=f"member {job.k}: ")
        result.send(("done", summary))
    except KeyboardInterrupt:
        result.send(("interrupted", None))
    except BaseException as err:   # sent whole when it pickles, else as text
        try:
            pickle.dumps(err)
        except Exception:
            err = RuntimeError(f"ensemble member {job.k}: {type(err).__name__}: {err}\n"
                               f"{traceback.format_exc()}")
        result.send(("error", err))


def _train_side_by_side(jobs: List[_MemberJob], processes: int, prepared: Optional[Prepared],
                        progress: bool) -> Dict[int, Dict[str, Any]]:
    """Train ``jobs`` in at most ``processes`` forked processes at a time
    (each inherits the prepared data; nothing is pickled but the results).
    Every member runs to its end; then the first error is raised (a member
    whose process died without a word, killed for memory say, is one), or
    KeyboardInterrupt when a member (or this process) was interrupted: each
    member's ``last.pt`` is where ``--resume`` continues it."""
    context = multiprocessing.get_context("fork")
    waiting = list(jobs)
    running: Dict[Any, Tuple[int, Any]] = {}   # result pipe -> (member, process)
    done: Dict[int, Dict[str, Any]] = {}
    failures: List[BaseException] = []
    interrupted = False
    try:
        while waiting or running:
            while waiting and len(running) < processes:
                job = waiting.pop(0)
                reader, writer = context.Pipe(duplex=False)
                proc = context.Process(target=_member_process,
                                       args=(job, prepared, progress, writer), daemon=False)
                proc.start()
                writer.close()     # the member's copy is the only one: its end is EOF here
                running[reader] = (job.k, proc)
            reader = connection.wait(list(running))[0]
            k, proc = running.pop(reader)
            try:
                status, value = reader.recv()
            except EOFError:
                proc.join()
                status, value = "error", RuntimeError(
                    f"ensemble member {k}: its process ended without a result (exit code "
                    f"{proc.exitcode}; killed for memory?); --resume continues it")
            reader.close()
            proc.join()
            if status == "done":
                done[k] = value
            elif status == "interrupted":
                interrupted = True
            else:
                failures.append(value)
    except KeyboardInterrupt:   # Ctrl-C reached the members too; let them stop
        for _, proc in running.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        raise
    if failures:
        raise failures[0]
    if interrupted:
        raise KeyboardInterrupt("an ensemble member was interrupted")
    return done


def _finish(cfg: RunConfig, run_dir: Path, members: List[Dict[str, Any]], writer: bool,
            prepared: Optional[Prepared], show: bool = False) -> Dict[str, Any]:
    """The ensemble of the members' best checkpoints: its checkpoint and summary."""
    paths = [member_dir(run_dir, k) / "best.pt" for k in range(len(members))]
    states = [load_checkpoint(p) for p in paths]
    model = Ensemble([model_from_checkpoint(s, p) for s, p in zip(states, paths)])
    first = states[0]
    if prepared is None:
        prepared = prepare(member_config(cfg, 0), log=False)
    prepared = replace(prepared, y_mean=first["y_mean"], y_std=first["y_std"])
    device = resolve_device(cfg.train.device)
    model = model.to(device)
    metric = first["metric"]
    batch_size = max(cfg.train.batch_size, EVAL_BATCH_GRAPHS)
    kernel: Dict[str, Any] = {}
    kind = kernel_member_for(cfg, prepared)
    if kind != "none":
        model, kernel = with_kernel_member(model, prepared, batch_size, device, show=show)
    scores = {part: loop.evaluate_split(model, prepared, part, batch_size, device)
              for part in ("valid", "test")}
    calibration, uncertainty = loop.calibrate(model, prepared, batch_size, device)
    model = model.cpu()
    summary = {"dataset": first["dataset"], "metric": metric,
               "best_epoch": [m["best_epoch"] for m in members],
               f"best_valid_{metric}": scores["valid"][metric],
               f"test_{metric}_at_best": scores["test"][metric],
               "valid": scores["valid"], "test": scores["test"],
               "final": {}, "init": first.get("init"), "members": members}
    if uncertainty:
        summary["uncertainty"] = uncertainty
    if kernel:
        summary["kernel_member"] = kernel
    config = dict(first["config"], train=dict(first["config"]["train"],
                                              **{"ensemble": cfg.train.ensemble,
                                                 "seed": cfg.train.seed,
                                                 "kernel_member": kind}))
    if writer:
        save_checkpoint({"config": config, "model": model.state_dict(),
                         "epoch": cfg.train.total_epochs, "history": [],
                         "best": {"epoch": None, "valid": scores["valid"][metric],
                                  "test": scores["test"][metric],
                                  "members": [s["best"] for s in states]},
                         "y_mean": first["y_mean"], "y_std": first["y_std"],
                         "dataset": first["dataset"], "metric": metric, "task": first["task"],
                         "data": first.get("data"), "init": first.get("init"),
                         **({"mol_feature_names": first["mol_feature_names"]}
                            if "mol_feature_names" in first else {}),
                         **({"calibration": calibration.to_dict()}
                            if calibration is not None else {})},
                        run_dir / "best.pt")
        write_json(run_dir / "summary.json", summary)
        plot_learning_curve([], metric, run_dir / "learning_curve.png",
                                 members=[json.loads((p.parent / "metrics.json").read_text())
                                          for p in paths],
                                 ensemble={part: scores[part][metric] for part in scores})
    if not math.isfinite(scores["valid"][metric]):
        raise DataError(f"the ensemble in {run_dir} has no finite validation {metric}")
    return summary


#: the most training molecules a kernel member is fitted on: its n x n kernel
#: (float64) and Cholesky factor take 2 * 8 * n**2 bytes, 3.6 GB here
MAX_KERNEL_TRAIN = 15_000


def kernel_weight(transformers: torch.Tensor, kernel: torch.Tensor, y: torch.Tensor
                  ) -> torch.Tensor:
    r"""The kernel member's weight per task ``[T]``, fitted on the labelled
    entries of ``y`` (``g``: the transformers' mean prediction, ``k``: the
    kernel member's; all ``[n, T]``) for the blend :math:`(1 - w)\,g + w\,k`.

    The least-squares weight :math:`\hat w = \sum r d / \sum d^2`
    (:math:`r = y - g`, :math:`d = k - g`) has the standard error
    :math:`s^2 = \sum (r - \hat w d)^2 / ((n - 1) \sum d^2)`, which is large
    when the part is small or the two predictions barely differ. The weight is
    shrunk towards 0 (the transformers alone) by empirical Bayes, a normal
    prior on :math:`w` whose variance is estimated as
    :math:`\max(0, \hat w^2 - s^2)`, and clipped to ``[0, 1]``:

    .. math::
        w = \mathrm{clip}\Big(\hat w \, \max\big(0,
            1 - s^2 / \hat w^2\big),\; 0,\; 1\Big)

    0 when fewer than 3 entries are labelled or the two agree everywhere."""
    g, k, y = (t.detach().double() for t in (transformers, kernel, y))
    out = []
    for t in range(y.size(1)):
        m = ~torch.isnan(y[:, t])
        d, r = k[m, t] - g[m, t], y[m, t] - g[m, t]
        n, den = int(m.sum()), float((d * d).sum())
        if n < 3 or den == 0.0:
            out.append(0.0)
            continue
        w = float((r * d).sum()) / den
        se2 = float(((r - w * d) ** 2).sum()) / ((n - 1) * den)
        shrunk = 0.0 if w == 0.0 else w * max(0.0, 1.0 - se2 / (w * w))
        out.append(min(1.0, max(0.0, shrunk)))
    return torch.tensor(out, dtype=torch.float64)


def crossfit_blend(transformers: torch.Tensor, kernel: torch.Tensor, y: torch.Tensor
                   ) -> torch.Tensor:
    """The blend of :func:`kernel_weight` with each molecule's weight fitted
    on the *other* half of the part (molecules at even and at odd positions),
    ``[n, T]``: its RMSE is an honest validation score of the blend, which the
    weight fitted on the whole part would flatter."""
    n = y.size(0)
    halves = [torch.arange(0, n, 2), torch.arange(1, n, 2)]
    out = transformers.detach().double().clone()
    for fit, score in (halves, halves[::-1]):
        if fit.numel() == 0 or score.numel() == 0:
            continue
        w = kernel_weight(transformers[fit], kernel[fit], y[fit])
        out[score] = (1 - w) * transformers[score].double() + w * kernel[score].double()
    return out


def _kernel_member_obstacle(prepared: Prepared) -> Optional[str]:
    """Why the data cannot have a kernel member (None: it can): a classifier,
    molecules without SMILES, or over :data:`MAX_KERNEL_TRAIN` training
    molecules."""
    bench = prepared.bench
    if bench.task != "regression":
        return f"--kernel-member is for regression; {bench.name} is a {bench.task} data set"
    if bench.smiles is None:
        return f"--kernel-member needs each molecule's SMILES; {bench.name} has none"
    n = len(prepared.split["train"])
    if n > MAX_KERNEL_TRAIN:
        return (f"--kernel-member fits on at most {MAX_KERNEL_TRAIN:,} training molecules "
                f"(its kernel matrix is n x n); {bench.name} has {n:,}")
    return None


def kernel_member_for(cfg: RunConfig, prepared: Prepared) -> str:
    """The kernel member an ensemble run gets: ``train.kernel_member`` when
    it names one, and for ``auto`` (the default) ``morgan`` where it can join
    (a regression ensemble trained by MSE, every molecule with its SMILES,
    at most :data:`MAX_KERNEL_TRAIN` training molecules), else ``none``."""
    asked = cfg.train.kernel_member
    if asked != "auto":
        return asked
    fits = cfg.train.ensemble >= 2 and cfg.train.loss == "mse" and \
        _kernel_member_obstacle(prepared) is None
    return "morgan" if fits else "none"


def with_kernel_member(model: Ensemble, prepared: Prepared, batch_size: int,
                       device: torch.device, show: bool = False
                       ) -> Tuple[Ensemble, Dict[str, Any]]:
    """``model`` (the graph transformers) with a
    :class:`~graphformer.models.kernel.MorganKernelRidge` fitted on the
    training part (normalised targets) as one more member, weighted by
    :func:`kernel_weight` on the validation part; and what the summary
    records of it. A classifier, data without SMILES or a training part over
    :data:`MAX_KERNEL_TRAIN` molecules is a :class:`DataError` saying so."""
    obstacle = _kernel_member_obstacle(prepared)
    if obstacle is not None:
        raise DataError(obstacle)
    bench = prepared.bench
    train_idx = prepared.split["train"].tolist()
    start = time.perf_counter()
    mu, sd = prepared.y_mean.double(), prepared.y_std.double()
    y = (torch.stack([bench.dataset[i].y.view(-1) for i in train_idx]).double() - mu) / sd
    counts = count_fingerprints([bench.smiles[i] for i in train_idx])
    member = MorganKernelRidge.fit(counts, y)
    valid_g, valid_k, valid_r, valid_y = [], [], [], []
    with torch.no_grad():
        for batch in prepared.eval_batches("valid", batch_size):
            valid_g.append(model(batch.to(device)).cpu())
            kernel_pred, reach_pred = member.forward_with_reach(batch)
            valid_k.append(kernel_pred.cpu())
            valid_r.append(reach_pred.cpu())
            valid_y.append(batch.y.view(valid_g[-1].shape).cpu())
    g, k, yv = (torch.cat(x).double() for x in (valid_g, valid_k, valid_y))
    reach = torch.cat(valid_r).double()[:, None]
    zv = (yv - mu) / sd                        # the validation targets, normalised
    # what the ensemble predicts with weight w is (1 - w) g + w k_reach
    k_reach = g + reach * (k - g)
    w = kernel_weight(g, k_reach, zv)
    members = list(model.members)
    weights = torch.cat([((1 - w) / len(members)).expand(len(members), -1), w[None]])
    combined = Ensemble([*members, member], weights).to(device)

    def rmse(pred: torch.Tensor) -> float:
        return compute_metrics(yv.numpy(), (pred * sd + mu).numpy(), "regression")["rmse"]

    info = {"kind": "morgan", "weight": w.tolist(), "train_molecules": len(train_idx),
            "valid_rmse_alone": rmse(k), "valid_rmse_transformers": rmse(g),
            "valid_rmse_crossfit": rmse(crossfit_blend(g, k_reach, zv)),
            "valid_reach_mean": float(reach.mean()),
            "seconds": time.perf_counter() - start}
    if show:
        print(f"kernel member: weight {', '.join(f'{v:.2f}' for v in w.tolist())} against the "
              f"graph transformers (valid RMSE alone {info['valid_rmse_alone']:.4f}, "
              f"transformers {info['valid_rmse_transformers']:.4f}; "
              f"{info['seconds']:.1f} s)", file=sys.stderr)
    return combined, info
