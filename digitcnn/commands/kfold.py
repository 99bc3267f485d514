"""``python -m digitcnn.kfold``: K-fold cross-validation of a digit CNN from flags and/or a
TOML config (``--help`` lists every flag); defaults are pipeline S5's recipe on UCI optdigits.

The Python API is :func:`digitcnn.run_kfold`. This module imports no torch at its top: the
runner is imported when a run starts, so ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digitcnn.commands._flags import (
    EXECUTOR_ARGUMENTS,
    RUN_FLAGS,
    default_out_dir,
    executor_flags,
    executor_settings,
    resumed_config,
)
from digitcnn.commands._session import (
    Session,
    load_quietly,
    print_summary,
    run_session,
    tracked,
)
from digitcnn.config import RunConfig, config_from_args
from digitcnn.errors import cli_entry, warnings_as_lines
from digitcnn.tracking.runs import TRACKING_LOG

__all__ = ["main", "run_command"]


def run_command(
    config: RunConfig,
    command: str,
    resume: bool = False,
    overwrite: bool = False,
    what: str = "results",
    executor: dict | None = None,
) -> int:
    """A K-fold (or single) run of ``command``, as its CLI does it (see
    :func:`digitcnn.commands._session.run_session`); ``executor``: the Ray settings from
    :func:`~digitcnn.commands._flags.executor_settings`, None on this machine. Returns the exit
    status."""
    out = Path(config.out) if config.out else default_out_dir(config)
    session = Session(command, out, resume, overwrite, executor_flags(executor))
    # why here: Ray's executor (its settings checked before any data are read) imports torch
    from digitcnn.cv.distributed import RayExecutor, connected

    ray = None if executor is None else RayExecutor(**executor)

    def prepare() -> Any:
        # why here: the trainer and the data readers import torch, which --help must not
        from digitcnn.cv.folds import check_model
        from digitcnn.tracking import make_tracker

        tracker = make_tracker(config)  # a missing extra is refused before any data are read
        dataset = load_quietly(config, command)
        check_model(config, dataset)
        return dataset, tracker

    def run(prepared: Any) -> None:
        dataset, tracker = prepared
        with warnings_as_lines(command), tracked(tracker):
            result, background = _train_and_write(dataset, tracker)
        if not config.quiet:
            print_summary(result, out, what, background, config.plots)

    def _train_and_write(dataset: Any, tracker: Any) -> tuple[Any, bool]:
        """The run, its files written; whether the report is being drawn in the background."""
        # why here: the runner imports torch, which --help must not
        from digitcnn.cv.runner import run_kfold
        from digitcnn.reporting.report import report_in_background
        from digitcnn.runstore.files import write_final

        callbacks = [] if tracker is None else [tracker]
        with connected(ray):
            result = run_kfold(
                dataset,
                config,
                out_dir=out,
                resume=resume,
                command=command,
                executor=ray,
                callbacks=callbacks,
            )
        background = report_in_background()
        write_final(result, out, plots=config.plots, images=dataset.images, background=background)
        if tracker is not None and tracker.keeps_files and background:
            # the files, report included, are logged once the background report is drawn
            log_files_after_report(config, out)
        elif tracker is not None:
            tracker.log_files(out)
        return result, background

    return run_session(session, prepare, run)


def log_files_after_report(config: RunConfig, out: Path) -> None:
    """Start ``python -m digitcnn.track OUT --to mlflow --after-report`` in the background
    (its own session, errors in ``OUT/tracking.log``, which it removes when done)."""
    command = [sys.executable, "-m", "digitcnn.track", str(out), "--to", "mlflow"]
    command += ["--after-report", "--experiment", config.experiment]
    if config.mlflow_uri:
        command += ["--mlflow-uri", config.mlflow_uri]
    with open(out / TRACKING_LOG, "w", encoding="utf-8") as log:
        subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


@cli_entry("digitcnn.kfold")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.kfold``: a K-fold run from flags and/or a TOML config."""
    prog = "python -m digitcnn.kfold"
    flags = [*RUN_FLAGS, *EXECUTOR_ARGUMENTS]
    config, extras = config_from_args(
        argv,
        prog,
        "K-fold cross-validation of a digit CNN; defaults are pipeline S5's recipe on UCI "
        "optdigits.",
        extra_arguments=flags,
    )
    executor = executor_settings(extras)
    if extras.resume is not None:
        config = resumed_config(
            argv, prog, "digitcnn.kfold", extras.resume, extras.overwrite, extra_arguments=flags
        )
    return run_command(
        config, "digitcnn.kfold", extras.resume is not None, extras.overwrite, executor=executor
    )
