"""``python -m digitcnn.tune``: a hyperparameter study of K-fold trials (see
:mod:`digitcnn.tuning`).

A tune file holds the base settings (as ``--config`` takes them) and a ``[space]`` table;
flags override the base settings. Running the same command again continues the study in its
folder. This module reads the command line and checks the space without importing torch or
Optuna; the study is imported once the input is checked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digitcnn.commands._flags import EXECUTOR_ARGUMENTS, executor_settings
from digitcnn.commands._session import Session, load_quietly, run_session
from digitcnn.config import Argument, RunConfig, config_from_args
from digitcnn.errors import ConfigError, cli_entry, warnings_as_lines
from digitcnn.runstore.folder import inspect_folder
from digitcnn.tuning.space import SearchSpace, load_tune_file

__all__ = ["TUNE_ARGUMENTS", "settings_from_args", "main"]

PROG = "python -m digitcnn.tune"


def _count(what: str, least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: give {least} {what} or more")
        return value

    parse.__name__ = "int"
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0")
    return value


TUNE_ARGUMENTS: list[Argument] = [
    (
        ("--space",),
        {
            "metavar": "FILE.toml",
            "required": True,
            "help": "tune file: a [space] table of what to search (ranges {low, high, log, "
            "step} or lists of choices) and base settings as in --config",
        },
    ),
    (
        ("--trials",),
        {
            "type": _count("trial", 1),
            "default": 20,
            "metavar": "N",
            "help": "finished trials (complete or pruned) the study ends with, counting "
            "those of earlier runs of the command",
        },
    ),
    (
        ("--timeout",),
        {
            "type": _seconds,
            "default": None,
            "metavar": "S",
            "help": "start no new trial after S seconds (default: no limit)",
        },
    ),
    (
        ("--metric",),
        {
            "choices": ("accuracy", "loss"),
            "default": "accuracy",
            "help": "what a trial scores: the fold mean of validation accuracy (maximised) "
            "or loss (minimised)",
        },
    ),
    (
        ("--pruner",),
        {
            "choices": ("median", "hyperband", "none"),
            "default": "median",
            "help": "stop trials early on their fold mean after each epoch: Optuna's "
            "MedianPruner, HyperbandPruner, or none",
        },
    ),
    (
        ("--jobs",),
        {
            "type": _count("process", 1),
            "default": 1,
            "metavar": "N",
            "help": "trial processes on this machine, sharing the study; with --executor "
            "ray, trials out at once as Ray tasks",
        },
    ),
    (
        ("--storage",),
        {
            "metavar": "URL",
            "default": None,
            "help": "a database for the study (PostgreSQL or MySQL for several machines; "
            "SQLite for one process); default: OUT/study.journal",
        },
    ),
    (
        ("--study-name",),
        {
            "metavar": "NAME",
            "default": None,
            "help": "the study's name in its storage (default: the --out folder's name)",
        },
    ),
    (
        ("--confirm-seeds",),
        {
            "type": _count("seed", 0),
            "default": 3,
            "metavar": "K",
            "help": "rerun the best and the base settings on K fresh seeds (new folds) "
            "and compare them with the corrected t-test; 0 skips it",
        },
    ),
    (
        ("--overwrite",),
        {
            "action": "store_true",
            "help": "replace the study in --out (moved to OUT.old-<UTC time> until the new "
            "one has finished; with --storage, its study of that name is deleted)",
        },
    ),
]


def settings_from_args(
    argv: Sequence[str] | None = None,
) -> tuple[RunConfig, SearchSpace, Any, Path, bool]:
    """(base config, space, tune settings, study folder, overwrite?) from the command line,
    checked, with nothing imported beyond the settings."""
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--space", default=None)
    space_file = early.parse_known_args(argv)[0].space
    base_values, table = load_tune_file(space_file) if space_file else ({}, {})
    config, extras = config_from_args(
        argv,
        PROG,
        "A hyperparameter study of K-fold trials on Optuna: pruned on the fold mean after "
        "every epoch, resumable, with the winner confirmed on fresh seeds.",
        extra_arguments=[*TUNE_ARGUMENTS, *EXECUTOR_ARGUMENTS],
        defaults=base_values,
    )
    space = SearchSpace.from_table(table, config, origin=str(extras.space))
    out = Path(config.out) if config.out else Path("results") / f"tune-{Path(extras.space).stem}"
    return config.replace(out=str(out)), space, extras, out, extras.overwrite


def _require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(
            "python -m digitcnn.tune needs Optuna, an optional extra: pip install 'digitcnn[tune]'"
        ) from None


@cli_entry("digitcnn.tune")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.tune``: a K-fold hyperparameter study (see the module)."""
    config, space, extras, out, overwrite = settings_from_args(argv)
    executor = executor_settings(extras)
    _require_optuna()
    # why here: the study imports Optuna and torch, which --help and bad input must not
    from digitcnn.cv.distributed import RayExecutor, connected
    from digitcnn.cv.folds import check_model
    from digitcnn.tuning.runner import prepare_study, tune_kfold
    from digitcnn.tuning.study import TuneConfig, single_threaded_before_fork

    settings = TuneConfig(
        trials=extras.trials,
        timeout=extras.timeout,
        metric=extras.metric,
        pruner=extras.pruner,
        jobs=extras.jobs,
        storage=extras.storage,
        study_name=extras.study_name,
        confirm_seeds=extras.confirm_seeds,
    )
    ray = None if executor is None else RayExecutor(**executor)  # Ray's absence said now
    resume = inspect_folder(out).kind == "study" and not overwrite
    session = Session("digitcnn.tune", out, resume, overwrite)

    def prepare() -> Any:
        if settings.jobs > 1 and ray is None:
            single_threaded_before_fork()  # before the model's check runs a forward pass
        if not overwrite:
            prepare_study(config, space, settings, out)  # the study there is this one
        dataset = load_quietly(config, "digitcnn.tune")
        check_model(config, dataset)
        return dataset

    def run(dataset: Any) -> None:
        with warnings_as_lines("digitcnn.tune"), connected(ray):
            result = tune_kfold(
                dataset,
                config,
                space,
                settings,
                out,
                quiet=config.quiet,
                replace=overwrite,
                executor=ray,
            )
        if config.quiet:
            return
        metric = settings.metric
        value = result.best_value
        shown = f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"
        print(f"best trial {result.best_trial}: fold-mean validation {metric} {shown}")
        for name, value in result.best_settings.items():
            print(f"  {name} = {value}")
        if result.confirmation is not None:
            c = result.confirmation
            test = c["comparison"]
            print(
                f"on {len(c['seeds'])} fresh seeds: best {100 * c['best_fresh_mean']:.2f}% "
                f"against base {100 * c['base_fresh_mean']:.2f}% (p = {test['p']:.3g}); "
                f"selection bias {100 * c['selection_bias']:+.2f} points"
                if metric == "accuracy"
                else f"on {len(c['seeds'])} fresh seeds: best loss {c['best_fresh_mean']:.4f} "
                f"against base {c['base_fresh_mean']:.4f} (p = {test['p']:.3g})"
            )
        print(
            f"study written to {out}; reproduce the best trial with: python -m digitcnn.kfold "
            f"--config {out / 'best.toml'}"
        )

    return run_session(session, prepare, run)
