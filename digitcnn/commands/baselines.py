"""``python -m digitcnn.baselines``: an sklearn baseline (SVC or kNN) cross-validated on exactly
the folds a K-fold run uses (:func:`digitcnn.cv.baselines.run_baseline`), written as a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digitcnn._io import read_json
from digitcnn.commands._flags import RUN_FLAGS, default_out_dir, given_settings, resumed_config
from digitcnn.commands._session import Session, load_quietly, print_summary, run_session
from digitcnn.config import BASELINE_SETTINGS, Argument, RunConfig, config_from_args
from digitcnn.cv.baselines import ESTIMATORS, check_baseline_settings, make_estimator, run_baseline
from digitcnn.errors import cli_entry
from digitcnn.runstore.resume import refuse_changed_settings

__all__ = ["main"]

PROG = "python -m digitcnn.baselines"
# The baseline's own flags, besides the run settings of BASELINE_SETTINGS and RUN_FLAGS.
ESTIMATOR_ARGUMENTS: list[Argument] = [
    (
        ("--estimator",),
        {
            "choices": ESTIMATORS,
            "default": "svm",
            "help": "svm: SVC with an RBF kernel; knn: k nearest neighbours",
        },
    ),
    (("--C",), {"dest": "c", "type": float, "default": 10.0, "help": "the SVC's C"}),
    (("--neighbors",), {"type": int, "default": 3, "help": "kNN's k"}),
    *RUN_FLAGS,
]
# the stored name (in config.json) of each of those flags' settings
_STORED_NAMES = {"estimator": "estimator", "c": "C", "neighbors": "n_neighbors"}


def _excluded() -> list[str]:
    return [name for name in RunConfig.__dataclass_fields__ if name not in BASELINE_SETTINGS]


def _resumed(argv: Sequence[str] | None, extras) -> tuple[RunConfig, str, float, int]:
    """(config, estimator, C, k) of the baseline run being resumed in ``extras.resume``; a
    setting given on the command line that differs from the run's is refused."""
    config = resumed_config(
        argv,
        PROG,
        "digitcnn.baselines",
        extras.resume,
        extras.overwrite,
        exclude=_excluded(),
        extra_arguments=ESTIMATOR_ARGUMENTS,
    )
    stored = read_json(Path(extras.resume) / "config.json", "start the run again with --overwrite")
    given = given_settings(argv, PROG, _excluded(), ESTIMATOR_ARGUMENTS, keep=tuple(_STORED_NAMES))
    refuse_changed_settings(
        {key: stored.get(key) for key in _STORED_NAMES.values()},
        {_STORED_NAMES[k]: v for k, v in given.items() if k in _STORED_NAMES},
        Path(extras.resume),
    )
    return (
        config,
        stored.get("estimator", config.model),
        stored.get("C", extras.c),
        stored.get("n_neighbors", extras.neighbors),
    )


@cli_entry("digitcnn.baselines")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.baselines``: an sklearn baseline on a K-fold run's folds."""
    config, extras = config_from_args(
        argv,
        PROG,
        "Cross-validate an sklearn baseline (SVC or kNN) on the folds digitcnn.kfold uses.",
        exclude=_excluded(),
        extra_arguments=ESTIMATOR_ARGUMENTS,
    )
    estimator, c, neighbors = extras.estimator, extras.c, extras.neighbors
    resume = extras.resume is not None
    if resume:
        config, estimator, c, neighbors = _resumed(argv, extras)
    config = config.replace(model=estimator)
    check_baseline_settings(c, neighbors)  # before the data are read
    out = Path(config.out) if config.out else default_out_dir(config)
    make_estimator(estimator, c, neighbors)  # an unknown name fails before any work

    def run(dataset: Any) -> None:
        # why here: the writers import the plotting and NumPy stack, which --help must not
        from digitcnn.reporting.report import report_in_background
        from digitcnn.runstore.files import write_final, write_run_start

        result = run_baseline(dataset, config, estimator, c, neighbors)
        write_run_start(
            out,
            config,
            result.splits_sha256,
            result.versions,
            [(f.fold, f.seed, f.val_indices) for f in result.folds],
            command="digitcnn.baselines",
            extra=result.extra["baseline"],
        )
        background = report_in_background()
        write_final(result, out, plots=config.plots, images=dataset.images, background=background)
        if not config.quiet:
            print_summary(result, out, "results", background, config.plots)

    session = Session("digitcnn.baselines", out, resume, extras.overwrite)
    return run_session(session, lambda: load_quietly(config, "digitcnn.baselines"), run)
