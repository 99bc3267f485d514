"""``python -m digitcnn.kfold``: K-fold cross-validation of a digit CNN from flags and/or a
TOML config (``--help`` lists every flag); defaults are pipeline S5's recipe on UCI optdigits.

The Python API is :func:`digitcnn.run_kfold`. This module imports no torch at its top: the
runner is imported when a run starts, so ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

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
from digitcnn.commands._session import Session, load_quietly, print_summary, run_session
from digitcnn.config import RunConfig, config_from_args
from digitcnn.errors import cli_entry

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

        dataset = load_quietly(config, command)
        check_model(config, dataset)
        return dataset

    def run(dataset: Any) -> None:
        # why here: the runner imports torch, which --help must not
        from digitcnn.cv.runner import run_kfold
        from digitcnn.reporting.report import report_in_background
        from digitcnn.runstore.files import write_final

        with connected(ray):
            result = run_kfold(
                dataset, config, out_dir=out, resume=resume, command=command, executor=ray
            )
        background = report_in_background()
        write_final(result, out, plots=config.plots, images=dataset.images, background=background)
        if not config.quiet:
            print_summary(result, out, what, background, config.plots)

    return run_session(session, prepare, run)


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
