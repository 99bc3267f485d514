"""What a CLI run does once its flags are parsed: check ``--out``, load the data (warnings as
plain lines), claim the folder, train, write the final files; and on Ctrl-C or SIGTERM, one
line on how to resume.

Used by ``digitcnn.kfold`` and ``.train`` (through :func:`digitcnn.cli.run_from_cli`);
``.baselines`` and ``.sweep`` load their data with :func:`load_quietly`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from digitcnn.cli import default_out_dir, executor_flags
from digitcnn.config import RunConfig
from digitcnn.cv.distributed import RayExecutor, connected
from digitcnn.cv.folds import check_model
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.datasets.base import DigitDataset
from digitcnn.errors import OutputError, warnings_as_lines
from digitcnn.reporting.rundir import check_out_dir, claim_out_dir
from digitcnn.reporting.runcontrol import sigterm_as_interrupt
from digitcnn.reporting.runfolder import finish_run

__all__ = ["load_quietly", "run_command"]


def load_quietly(config: RunConfig, prog: str) -> DigitDataset:
    """Load the run's data; adapter warnings (e.g. the UCI fallback) become one plain line."""
    with warnings_as_lines(prog):
        return load_for_config(config)


def run_command(config: RunConfig, prog: str, command: str, resume: bool = False,
                overwrite: bool = False, what: str = "results",
                executor: RayExecutor | dict | None = None) -> int:
    """A CLI run: check ``--out`` before loading anything, load and validate, claim the folder
    (lock, ``--overwrite``), train (``executor``: None on this machine, else a
    :class:`RayExecutor` or its settings), write the final files. SIGTERM and Ctrl-C leave the
    finished folds and one line on how to resume; returns the exit status."""
    if isinstance(executor, dict):
        executor = RayExecutor(**executor)
    out = Path(config.out) if config.out else default_out_dir(config)
    with sigterm_as_interrupt() as received:
        check_out_dir(out, command, resume, overwrite)
        dataset = load_quietly(config, prog)
        check_model(config, dataset)
        try:
            with claim_out_dir(out, prog, command, resume, overwrite):
                try:
                    with connected(executor):
                        result = run_kfold(dataset, config, out_dir=out, resume=resume,
                                           command=command, executor=executor)
                    finish_run(result, out, config, dataset, what)
                except OutputError as err:  # e.g. the disk filled up in the middle of the run
                    if not (out / "config.json").is_file():
                        raise
                    raise OutputError(f"{err}; then continue with: python -m {command} --resume "
                                      f"{out}") from None
        except KeyboardInterrupt as interrupt:
            if (out / "config.json").is_file() and not (out / "metrics.json").is_file():
                finished = len(list((out / "folds").glob("fold*.json")))
                print(f"{prog}: interrupted; {finished} finished fold(s) are saved in {out}; "
                      f"continue with: python -m {command} --resume {out}"
                      f"{executor_flags(executor)}", file=sys.stderr)
            else:
                print(f"{prog}: interrupted before the run started; nothing was written",
                      file=sys.stderr)
            return received.exit_code(interrupt)
    return 0
