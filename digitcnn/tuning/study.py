"""The tuner's engine: an Optuna study whose trials are whole K-fold runs, pruned by their
fold-mean validation metric after every epoch.

A trial draws its settings from the :class:`~digitcnn.tuning.space.SearchSpace`, trains
every fold of the base settings with them (:func:`~digitcnn.cv.runner.run_kfold`) and
reports, once every fold has finished epoch *e*, the mean over the folds at step *e*; a fold
that stopped early counts with its last value. When the pruner says so the callback raises
``optuna.TrialPruned``, which ends every fold of the trial at once (fold processes are
terminated). A trial whose loss diverges, or whose drawn settings the run refuses, is kept
as pruned: it is a bad recipe, not a failure of the study.

All trials use the base settings' seed and folds, so that they are compared on the same
splits. On a CPU each trial trains its folds in as many fold processes as there are folds,
so that all folds reach epoch *e* together and a pruned trial stops early in every fold;
the workers and threads this chooses are written into the trial's settings, and so into
``best.toml``, which reproduces the best trial exactly.

The study lives in ``OUT/study.journal`` (Optuna's journal file storage), or in the
database of ``storage``. A trial left running by a killed process (its pid gone, on this
host) is marked failed and queued again with its settings when the study restarts;
``trials`` counts finished trials (complete or pruned), and a lock around asking for a trial
keeps ``jobs`` processes from running more than that.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import multiprocessing
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from digitcnn.config import RunConfig
from digitcnn.cv.folds import check_model
from digitcnn.cv.runner import run_kfold
from digitcnn.cv.splits import make_splits
from digitcnn.datasets.base import DigitDataset
from digitcnn.errors import ConfigError, DigitCNNError, TrainingDiverged, one_line
from digitcnn.runstore.folder import process_alive
from digitcnn.training.callbacks import Callback, EpochEnd, RunStart
from digitcnn.training.runtime import cpu_cores, die_with_parent, select_device
from digitcnn.tuning.space import SearchSpace

__all__ = [
    "METRICS",
    "PRUNERS",
    "TuneConfig",
    "FoldMeanReport",
    "open_storage",
    "make_pruner",
    "trial_base",
    "fail_stale_trials",
    "run_trials",
    "single_threaded_before_fork",
    "finished_count",
    "StudySearch",
    "make_search",
    "load_study",
    "ask_trial",
    "fail_and_requeue",
    "train_trial",
    "draw_config",
    "record_trial",
    "refused",
    "show_progress",
]

METRICS = {"accuracy": "maximize", "loss": "minimize"}
PRUNERS = ("median", "hyperband", "none")
JOURNAL = "study.journal"
ASK_LOCK = ".ask.lock"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TuneConfig:
    """How a study searches (the run settings are the base :class:`RunConfig`).

    Attributes:
        trials: finished trials (complete or pruned) the study ends with; default 20.
        timeout: start no trial after this many seconds of this call; None: no limit.
        metric: ``accuracy`` (validation accuracy, maximised) or ``loss`` (validation
            loss, minimised), the fold mean.
        pruner: ``median`` (Optuna's MedianPruner: stop a trial whose fold mean after an
            epoch is below the median of earlier trials' at that epoch), ``hyperband``, or
            ``none``.
        jobs: trial processes on this machine, sharing the study's storage (with a Ray
            executor: trials out at once as Ray tasks).
        storage: a database URL for Optuna's RDB storage (several machines); None: the
            journal file ``OUT/study.journal``.
        study_name: the study's name in its storage; None: the study folder's name.
        confirm_seeds: fresh seeds (new folds) the best and the base settings are rerun on
            afterwards; 0 skips the confirmation.
    """

    trials: int = 20
    timeout: float | None = None
    metric: str = "accuracy"
    pruner: str = "median"
    jobs: int = 1
    storage: str | None = None
    study_name: str | None = None
    confirm_seeds: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"--trials {self.trials}: give 1 trial or more")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"--jobs {self.jobs}: give 1 process or more")
        if self.timeout is not None and not (
            isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout)
        ):
            raise ConfigError(f"--timeout {self.timeout}: give a number of seconds")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout {self.timeout}: give a number of seconds above 0")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric}: choose one of {', '.join(METRICS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner {self.pruner}: choose one of {', '.join(PRUNERS)}")
        if (
            isinstance(self.confirm_seeds, bool)
            or not isinstance(self.confirm_seeds, int)
            or self.confirm_seeds < 0
        ):
            raise ConfigError(
                f"--confirm-seeds {self.confirm_seeds}: give 0 (no confirmation) or more"
            )
        if self.storage is not None and self.storage.startswith("sqlite") and self.jobs > 1:
            raise ConfigError(
                f"--storage {self.storage} with --jobs {self.jobs}: SQLite locks under "
                "parallel writers; drop --storage (the journal file serves one machine) "
                "or use PostgreSQL or MySQL"
            )

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize``, as the metric asks."""
        return METRICS[self.metric]

    @property
    def epoch_metric(self) -> str:
        """The metric's key in an epoch's metrics."""
        return f"val_{self.metric}"


class FoldMeanReport(Callback):
    """Report the fold mean of the validation metric to an Optuna ``trial`` once every fold
    has finished an epoch (step = that epoch, from 0), and prune the trial when its pruner
    says so (raising ``optuna.TrialPruned``, which stops every fold).

    A fold that ended (early stopping) counts with its last value at later steps.
    ``epochs`` counts the epochs trained over all folds; ``fold_values`` holds each fold's
    latest value.
    """

    def __init__(self, trial: Any, metric_key: str) -> None:
        self.trial = trial
        self.key = metric_key
        self.folds: list[int] = []
        self.values: dict[int, dict[int, float]] = {}
        self.fold_values: dict[int, float] = {}
        self.ended: set[int] = set()
        self.reported = -1
        self.epochs = 0
        self.optuna_s = 0.0  # seconds spent in Optuna's report and pruning decision

    def on_run_start(self, event: RunStart) -> None:
        self.folds = [fold for fold in range(event.folds) if fold not in event.finished]

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.epochs += 1
        value = float(event.metrics[self.key])
        self.values.setdefault(event.epoch, {})[event.fold] = value
        self.fold_values[event.fold] = value
        self._report()

    def on_fold_end(self, result: Any) -> None:
        self.ended.add(result.fold)
        self._report()

    def _report(self) -> None:
        while True:
            step = self.reported + 1
            reached = self.values.get(step, {})
            if not reached or any(f not in reached and f not in self.ended for f in self.folds):
                return
            mean = sum(reached.get(f, self.fold_values[f]) for f in self.folds) / len(self.folds)
            started = time.perf_counter()
            self.trial.report(mean, step)
            self.reported = step
            prune = self.trial.should_prune()
            self.optuna_s += time.perf_counter() - started
            if prune:
                raise optuna.TrialPruned(f"pruned after epoch {step + 1}")


def open_storage(url: str | None, out: Path) -> Any:
    """The study's Optuna storage: the journal file ``out/study.journal`` when ``url`` is
    None, else the RDB storage of ``url``; a URL that cannot be opened is a ConfigError."""
    if url is None:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # SQLAlchemy's URL, driver and connection errors alike
        raise ConfigError(
            f"--storage {url}: cannot open it ({one_line(err)}); pass a database URL "
            "such as postgresql://user@host/db or sqlite:///study.db, or drop --storage "
            "to keep the study in OUT/study.journal"
        ) from None


def make_pruner(name: str, epochs: int) -> Any:
    """Optuna's pruner for ``--pruner``: ``median`` (Optuna's MedianPruner as it ships: after
    5 finished trials, from the first epoch on), ``hyperband`` (1 to ``epochs`` epochs),
    ``none``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def trial_base(base: RunConfig, dataset: DigitDataset, jobs: int) -> RunConfig:
    """The settings every trial starts from: ``base``, quiet, and on a CPU (unless the base
    chooses fold-batched training or its workers) one fold process per fold with the cores
    shared among ``jobs`` trials, so that every fold reaches each epoch together."""
    config = base.replace(quiet=True, out=None)
    device = select_device(base.device)
    if jobs > 1 and device.type != "cpu":
        raise ConfigError(
            f"--jobs {jobs} forks trial processes, which {device.type} does not survive; use "
            "--jobs 1 (the folds of a trial train together on the GPU), or --device cpu"
        )
    if base.fold_parallel or base.workers is not None or device.type != "cpu":
        return config
    folds = len(make_splits(dataset, base))
    threads = base.threads or max(1, cpu_cores() // (jobs * folds))
    return config.replace(workers=folds, threads=threads)


def finished_count(study: Any) -> int:
    """Trials that count towards ``--trials``: complete or pruned."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _alive(host: Any, pid: Any) -> bool:
    if host != socket.gethostname():
        return True  # another machine's trial: its own restart deals with it
    return isinstance(pid, int) and process_alive(pid)


def fail_stale_trials(study: Any) -> list[int]:
    """Mark failed the trials left RUNNING by a process of this host that is gone (killed),
    and queue their settings again; returns their numbers."""
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(trial.user_attrs.get("host"), trial.user_attrs.get("pid")):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        stale.append(trial.number)
    return stale


@contextlib.contextmanager
def _ask_lock(out: Path) -> Iterator[None]:
    """One process at a time counts the trials and asks for one (on this machine)."""
    with open(out / ASK_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class StudySearch:
    """A study's search as its trial processes run it: the data, the trials' base settings,
    the space, how to search, the study's name and folder, the deadline (``time.time()``)
    and whether to print a line per trial. Shared with forked processes, never pickled."""

    dataset: DigitDataset
    base: RunConfig
    space: SearchSpace
    settings: TuneConfig
    study_name: str
    out: Path
    deadline: float
    quiet: bool


def load_study(search: StudySearch, job: int) -> Any:
    """The study from its storage, with a TPE sampler seeded by the base seed + ``job`` (each
    trial process its own stream) and the study's pruner."""
    storage = open_storage(search.settings.storage, search.out)
    sampler = optuna.samplers.TPESampler(seed=search.base.seed + job)
    return optuna.load_study(
        study_name=search.study_name,
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(search.settings.pruner, search.base.epochs),
    )


def train_trial(
    dataset: DigitDataset, config: RunConfig, trial: Any, metric: str
) -> tuple[TrialState, float | None, dict]:
    """Train the folds of one trial's ``config``, reporting the fold mean after every epoch
    to ``trial`` (an Optuna trial, or anything with its ``report`` and ``should_prune``).

    Returns its state (complete, or pruned: stopped by the pruner, diverged or refused), its
    value (the fold mean of ``metric``; None unless complete) and the records that become
    the trial's user attributes: ``fold_values``, ``epochs_trained``, ``optuna_s`` (seconds
    in ``report`` and ``should_prune``), and ``accuracy`` or why it was pruned.
    """
    report = FoldMeanReport(trial, f"val_{metric}")
    attrs: dict[str, Any] = {}
    state, value = TrialState.PRUNED, None
    try:
        check_model(config, dataset)
        result = run_kfold(dataset, config, callbacks=[report])
    except optuna.TrialPruned as pruned:
        attrs["pruned"] = str(pruned)
    except TrainingDiverged as err:
        attrs["pruned"] = f"diverged: {err}"
    except DigitCNNError as err:  # settings the run refuses: a recipe that cannot be tried
        attrs["pruned"] = refused(err)
    else:
        accuracy = metric == "accuracy"
        folds = [fold.accuracy if accuracy else fold.loss for fold in result.folds]
        report.fold_values = dict(enumerate(folds))
        value = sum(folds) / len(folds)
        attrs["accuracy"] = result.accuracy
        state = TrialState.COMPLETE
    attrs["fold_values"] = [report.fold_values[k] for k in sorted(report.fold_values)]
    attrs["epochs_trained"] = report.epochs
    attrs["optuna_s"] = report.optuna_s
    return state, value, attrs


def refused(err: DigitCNNError) -> str:
    """Why a trial's drawn settings could not be tried, as ``trials.csv`` says it."""
    return f"refused: {one_line(err.cli_message())}"


def draw_config(search: StudySearch, trial: Any) -> tuple[RunConfig | None, dict, float]:
    """The trial's settings drawn from the space on top of the trials' base: (its config, or
    None when the run refuses them; the user attributes so far; seconds spent drawing)."""
    started = time.perf_counter()
    try:
        settings = search.space.suggest(trial)
        drawn = time.perf_counter() - started
        return search.base.replace(**settings), {}, drawn
    except DigitCNNError as err:
        return None, {"pruned": refused(err)}, time.perf_counter() - started


def record_trial(trial: Any, attrs: dict, drawn_s: float, seconds: float) -> None:
    """Store a trial's records as its user attributes; ``optuna_s`` gains the drawing."""
    attrs = {**attrs, "seconds": seconds}
    # Optuna's own share of those seconds (drawing the settings, reporting, pruning), so
    # that its overhead can be told apart from training
    attrs["optuna_s"] = attrs.get("optuna_s", 0.0) + drawn_s
    attrs.setdefault("fold_values", [])
    attrs.setdefault("epochs_trained", 0)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _run_trial(search: StudySearch, trial: Any) -> tuple[TrialState, float | None]:
    """Train one trial in this process; its state and value (None unless complete). Its
    records go into the trial's user attributes."""
    started = time.perf_counter()
    config, attrs, drawn_s = draw_config(search, trial)
    state, value = TrialState.PRUNED, None
    if config is not None:
        state, value, attrs = train_trial(search.dataset, config, trial, search.settings.metric)
    record_trial(trial, attrs, drawn_s, time.perf_counter() - started)
    return state, value


def ask_trial(study: Any, search: StudySearch) -> Any | None:
    """A new trial of ``study``, owned by this process (its host and pid recorded, so that a
    restarted study can tell it was left running by a dead process); None once
    ``search.settings.trials`` trials have finished or are running."""
    with _ask_lock(search.out):
        counted = len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))
        if counted >= search.settings.trials:
            return None
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
    return trial


def fail_and_requeue(study: Any, trial: Any) -> None:
    """An interrupted trial (or one a fault of the program ended): failed, and queued again
    with the same settings."""
    study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _work(search: StudySearch, job: int) -> None:
    """One trial process: ask for trials and run them until ``trials`` have finished (or
    are running elsewhere), or the deadline has passed."""
    study = load_study(search, job)
    while time.time() < search.deadline:
        trial = ask_trial(study, search)
        if trial is None:
            return
        try:
            state, value = _run_trial(search, trial)
        except BaseException:
            fail_and_requeue(study, trial)
            raise
        study.tell(trial, value, state=state)
        if not search.quiet:
            show_progress(study, trial.number, state, value, search.settings)


def show_progress(
    study: Any, number: int, state: TrialState, value: float | None, s: TuneConfig
) -> None:
    """The line on stderr for a trial that has just finished, with the best so far."""
    total = s.trials
    trial = study.get_trials(deepcopy=False)[number]
    shown = "" if value is None else f" {_show(value, s.metric)}"
    why = trial.user_attrs.get("pruned", "")
    best = ""
    with contextlib.suppress(ValueError):
        best = f"; best {_show(study.best_value, s.metric)} (trial {study.best_trial.number})"
    print(
        f"digitcnn.tune: [{finished_count(study)}/{total}] trial {number} "
        f"{state.name.lower()}{shown}{f' ({why})' if why else ''}, "
        f"{trial.user_attrs.get('epochs_trained', 0)} epochs, "
        f"{trial.user_attrs.get('seconds', 0.0):.1f} s{best}",
        file=sys.stderr,
    )


def _show(value: float, metric: str) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"loss {value:.4f}"


def _job_main(search: StudySearch, job: int) -> None:
    # a trial process ends when the tune process is killed, instead of running on and
    # asking for trials while a restarted tune process does too
    die_with_parent()
    # this process only checks each trial's model and waits for its fold processes, which
    # set their own threads: one thread keeps torch out of OpenMP, whose thread pool does not
    # survive a fork
    torch.set_num_threads(1)
    try:
        _work(search, job)
    except KeyboardInterrupt:
        os._exit(130)
    except DigitCNNError as err:
        print(f"digitcnn.tune: {err.cli_message()}", file=sys.stderr)
        os._exit(2)


def single_threaded_before_fork() -> None:
    """Run torch on one thread in this process from now on, before trial processes are
    forked: a fork taken after torch ran an OpenMP parallel region leaves the child's OpenMP
    pool half there, and the child's first parallel convolution waits forever on it. Call it
    before the data are checked (a model's trial forward pass) when ``jobs`` > 1."""
    torch.set_num_threads(1)


def make_search(
    dataset: DigitDataset,
    base: RunConfig,
    space: SearchSpace,
    settings: TuneConfig,
    study_name: str,
    out: Path,
    quiet: bool = False,
) -> StudySearch:
    """The search of the study ``study_name`` (which must exist in its storage), its
    deadline ``settings.timeout`` seconds from now; ``base`` are the trials' base settings."""
    deadline = time.time() + (settings.timeout if settings.timeout is not None else math.inf)
    return StudySearch(dataset, base, space, settings, study_name, out, deadline, quiet)


def run_trials(search: StudySearch) -> None:
    """Run the study's trials until ``settings.trials`` have finished: in this process
    (``jobs`` 1) or in ``jobs`` forked processes."""
    settings = search.settings
    with warnings.catch_warnings():
        # Optuna warns that ask-and-tell with the journal storage is experimental in places
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.jobs == 1:
            _work(search, 0)
            return
        single_threaded_before_fork()
        context = multiprocessing.get_context("fork")
        processes = [
            context.Process(target=_job_main, args=(search, job), name=f"digitcnn-tune-{job}")
            for job in range(settings.jobs)
        ]
        for process in processes:
            process.start()
        try:
            for process in processes:
                process.join()
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                process.join()
    failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    if failed:
        raise ConfigError(
            f"{len(failed)} of {settings.jobs} trial processes failed (exit status "
            f"{', '.join(map(str, failed))}; their line is above); run the same command "
            "again to continue the study"
        )
