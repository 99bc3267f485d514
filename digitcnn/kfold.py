"""``python -m digitcnn.kfold``: K-fold cross-validation of a digit CNN from flags and/or a
TOML config (``--help`` lists every flag); defaults are pipeline S5's recipe on UCI optdigits.

The Python API is :func:`digitcnn.run_kfold` (:mod:`digitcnn.cv.runner`). This module imports
no torch: the runner is imported when a run starts (:func:`digitcnn.cli.run_from_cli`), so
``--help`` and a bad flag answer at once.
"""
from __future__ import annotations

from typing import Sequence

from digitcnn.cli import (EXECUTOR_ARGUMENTS, RUN_FLAGS, executor_settings, resumed_config,
                          run_from_cli)
from digitcnn.config import config_from_args
from digitcnn.errors import cli_entry, exit_cli

__all__ = ["main"]


@cli_entry("digitcnn.kfold")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.kfold``: a K-fold run from flags and/or a TOML config."""
    prog = "python -m digitcnn.kfold"
    flags = [*RUN_FLAGS, *EXECUTOR_ARGUMENTS]
    config, extras = config_from_args(
        argv, prog,
        "K-fold cross-validation of a digit CNN; defaults are pipeline S5's recipe on UCI "
        "optdigits.",
        extra_arguments=flags)
    executor = executor_settings(extras)
    if extras.resume is not None:
        config = resumed_config(argv, prog, "digitcnn.kfold", extras.resume, extras.overwrite,
                                extra_arguments=flags)
    return run_from_cli(config, "digitcnn.kfold", "digitcnn.kfold", extras.resume is not None,
                        extras.overwrite, executor=executor)


if __name__ == "__main__":
    exit_cli(main())
