"""A whole study into its folder: create or continue it, run its trials, write its files.

Python API::

    import digitcnn
    from digitcnn.tuning import SearchSpace, TuneConfig, tune_kfold

    data = digitcnn.load("uci", data_dir="../shared/data/optdigits")
    base = digitcnn.RunConfig(epochs=10)
    space = SearchSpace.from_table({"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, base)
    result = tune_kfold(data, base, space, TuneConfig(trials=20), "results/tune-uci")
    print(result.best_value, result.best_settings)

The folder gets ``tune.json``, ``study.journal`` (unless the study lives in a database),
``trials.csv``, ``best.toml``, ``confirm.json`` with ``confirm/`` and ``report.html``.
Calling it again on the same folder continues the study.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from digitcnn._io import write_json
from digitcnn.config import RunConfig
from digitcnn.cv.distributed import RayExecutor
from digitcnn.datasets.base import DigitDataset
from digitcnn.errors import ConfigError
from digitcnn.tuning.confirm import confirm_best
from digitcnn.tuning.distributed import ray_trial_base, run_trials_on_ray
from digitcnn.tuning.outputs import (
    check_study_record,
    study_record,
    write_best_toml,
    write_study_record,
    write_trials_csv,
)
from digitcnn.tuning.report import write_study_report
from digitcnn.tuning.space import SearchSpace
from digitcnn.tuning.study import (
    TuneConfig,
    fail_stale_trials,
    make_search,
    open_storage,
    run_trials,
    single_threaded_before_fork,
    trial_base,
)

__all__ = ["TuneResult", "tune_kfold", "prepare_study", "trial_rows"]


@dataclass
class TuneResult:
    """A finished study.

    Attributes:
        out: the study folder.
        study_name: the study's name in its storage.
        best_trial: the best complete trial's number; ``best_value`` its fold-mean metric.
        best_settings: the settings it drew; ``best_config`` its whole run config (as
            ``best.toml`` holds it).
        trials: one dict per trial, as ``trials.csv`` has them.
        confirmation: ``confirm.json``'s content, or None without a confirmation.
        stale: trials a killed process had left running, failed and queued again.
    """

    out: Path
    study_name: str
    best_trial: int
    best_value: float
    best_settings: dict[str, Any]
    best_config: RunConfig
    trials: list[dict] = field(default_factory=list)
    confirmation: dict | None = None
    stale: list[int] = field(default_factory=list)


def prepare_study(
    base: RunConfig, space: SearchSpace, settings: TuneConfig, out: Path
) -> tuple[str, dict, bool]:
    """(study name, ``tune.json`` record, whether ``out`` already holds this study): every
    check that needs nothing written (the record against a study already there, the storage
    URL opened)."""
    if base.cv == "full":
        raise ConfigError(
            "--cv full has no validation rows, so there is nothing to tune on; use --cv "
            "kfold, stratified, writers or holdout"
        )
    study_name = settings.study_name or out.resolve().name
    record = study_record(base, space.to_dict(), settings, study_name)
    existing = check_study_record(out, record)
    if settings.storage is not None:
        open_storage(settings.storage, out)
    return study_name, record, existing


def trial_rows(study: Any, space: SearchSpace) -> list[dict]:
    """Every trial (failed ones included) as a plain row: number, state, value, pooled
    accuracy, fold values, epochs trained, seconds (of which in Optuna), when it started and
    finished (Optuna's times: from its creation by ``ask`` to its ``tell``), why pruned,
    retry_of, settings."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        attrs = trial.user_attrs
        try:
            settings = space.from_params(trial.params)
        except (KeyError, ValueError):  # a trial that failed before drawing every setting
            settings = dict(trial.params)
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value if trial.state == TrialState.COMPLETE else None,
                "accuracy": attrs.get("accuracy"),
                "fold_values": list(attrs.get("fold_values", [])),
                "epochs_trained": attrs.get("epochs_trained", 0),
                "seconds": attrs.get("seconds", 0.0),
                "optuna_s": attrs.get("optuna_s", 0.0),
                "started": _iso(trial.datetime_start),
                "finished": _iso(trial.datetime_complete),
                "pruned": attrs.get("pruned", ""),
                "retry_of": attrs.get("retry_of"),
                "settings": settings,
                "intermediate": dict(trial.intermediate_values),
            }
        )
    return rows


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat()


def tune_kfold(
    dataset: DigitDataset,
    base: RunConfig,
    space: SearchSpace,
    settings: TuneConfig | None = None,
    out: str | Path = "results/tune",
    quiet: bool = True,
    replace: bool = False,
    executor: RayExecutor | None = None,
) -> TuneResult:
    """Search ``space`` around ``base`` with K-fold trials on ``dataset``; see the module.

    Args:
        base: the settings every trial starts from (its seed and folds are every trial's).
        space: what to search; ``settings``: how (trials, pruner, jobs, storage, ...).
        out: the study folder: new, or holding this same study, which is continued.
        quiet: no line per trial on stderr.
        replace: delete a study of the same name in ``settings.storage`` first (a new
            study folder whose study lives in a database).
        executor: a :class:`~digitcnn.cv.distributed.RayExecutor`: each trial a Ray task,
            ``settings.jobs`` of them at once (:mod:`digitcnn.tuning.distributed`), and the
            confirmation's folds Ray tasks too; None: trials on this machine.
    """
    settings = settings or TuneConfig()
    out = Path(out)
    if settings.jobs > 1 and executor is None:
        single_threaded_before_fork()
    study_name, record, existing = prepare_study(base, space, settings, out)
    if executor is None:
        trials_base = trial_base(base, dataset, settings.jobs)
    else:
        trials_base = ray_trial_base(base, executor)
    out.mkdir(parents=True, exist_ok=True)
    if not existing:
        write_study_record(out, record)
    storage = open_storage(settings.storage, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if replace and settings.storage is not None:
            try:
                optuna.delete_study(study_name=study_name, storage=storage)
            except KeyError:  # no such study yet
                pass
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction=settings.direction,  # type: ignore[arg-type]  # "maximize"/"minimize"
            load_if_exists=True,
        )
        stale = fail_stale_trials(study)
    del study, storage  # each trial process opens its own (a database connection is not forked)
    search = make_search(dataset, trials_base, space, settings, study_name, out, quiet)
    if executor is None:
        run_trials(search)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            run_trials_on_ray(search, executor)
    return finish_study(
        dataset, trials_base, base, space, settings, study_name, out, stale, executor
    )


def finish_study(
    dataset: DigitDataset,
    trials_base: RunConfig,
    base: RunConfig,
    space: SearchSpace,
    settings: TuneConfig,
    study_name: str,
    out: Path,
    stale: list[int],
    executor: RayExecutor | None = None,
) -> TuneResult:
    """Write ``trials.csv`` and ``best.toml``, confirm the winner, draw ``report.html``."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(settings.storage, out))
    rows = trial_rows(study, space)
    folds = max((len(row["fold_values"]) for row in rows), default=0)
    write_trials_csv(out / "trials.csv", rows, space.names, folds)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(
            f"no trial of the study in {out} completed (all were pruned or refused; see "
            "trials.csv); widen the space or use --pruner none"
        )
    best = study.best_trial
    best_value = float(best.values[0])
    best_settings = space.from_params(best.params)
    best_config = trials_base.replace(**best_settings, quiet=False)
    write_best_toml(
        out / "best.toml",
        best_config,
        f"the best trial ({best.number}) of study {study_name}: fold-mean validation "
        f"{settings.metric} {best_value:.6g}\n"
        f"reproduce it: python -m digitcnn.kfold --config {out / 'best.toml'}",
    )
    confirmation = None
    if settings.confirm_seeds:
        confirmation = confirm_best(
            dataset,
            best_config,
            trials_base.replace(quiet=False),
            settings.confirm_seeds,
            out,
            best_value,
            settings.metric,
            executor,
        )
        confirmation["best_trial"] = best.number
        write_json(out / "confirm.json", confirmation)
    result = TuneResult(
        out,
        study_name,
        best.number,
        best_value,
        best_settings,
        best_config,
        rows,
        confirmation,
        stale,
    )
    importances = _importances(study)
    write_study_report(result, settings, base, importances)
    return result


def _importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA), or none where too few trials completed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}
