"""``python -m digitcnn.sweep``: the command line of a sweep (see :mod:`digitcnn.sweep`).

This module reads the command line and plans the cells without importing torch or NumPy;
:func:`main` imports the runner only once the plan is made, so that ``--help`` and every
error in the grid or the settings answer at once.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digitcnn.commands._flags import (
    EXECUTOR_ARGUMENTS,
    default_out_dir,
    executor_flags,
    executor_from_argv,
    given_settings,
)
from digitcnn.commands._session import Session, run_session, tracked
from digitcnn.config import PRESENTATION_KEYS, Argument, RunConfig, config_from_args
from digitcnn.errors import ConfigError, DigitCNNError, cli_entry, warnings_as_lines
from digitcnn.runstore.folder import check_out_dir
from digitcnn.runstore.resume import refuse_changed_settings
from digitcnn.settings import flag_name
from digitcnn.sweep.grid import Cell, expand_grid, load_grid_file, parse_grid, stored_cells

__all__ = ["GRID_ARGUMENTS", "default_sweep_dir", "plan_from_args", "main"]


def default_sweep_dir(config: RunConfig, root: str | Path = "results") -> Path:
    """``results/sweep-<dataset>-<model>-<UTC timestamp>``, never an existing folder."""
    return default_out_dir(config, root, prefix="sweep-")


GRID_ARGUMENTS: list[Argument] = [
    (
        ("--grid",),
        {
            "nargs": "+",
            "action": "extend",
            "metavar": "NAME=V1,V2",
            "default": None,
            "help": "an axis of the grid: a setting and its values (tie settings with "
            "':', e.g. optimizer:lr=sgd:0.01,adam:0.001)",
        },
    ),
    (
        ("--grid-file",),
        {
            "metavar": "FILE.toml",
            "default": None,
            "help": "TOML file with a [grid] table of lists; its other keys are "
            "base settings as in --config",
        },
    ),
    (
        ("--resume",),
        {
            "metavar": "DIR",
            "default": None,
            "help": "finish the sweep in DIR: run its cells without metrics.json",
        },
    ),
    (
        ("--overwrite",),
        {
            "action": "store_true",
            "help": "replace the sweep already in --out: it is moved to "
            "OUT.old-<UTC time> and deleted once the new sweep has finished",
        },
    ),
    *EXECUTOR_ARGUMENTS,
]


def plan_from_args(argv: Sequence[str] | None = None) -> tuple[list[Cell], Path, bool]:
    """(cells, sweep folder, resume?) from the command line, without running anything."""
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--grid-file", default=None)
    grid_file = early.parse_known_args(argv)[0].grid_file
    base_settings, file_axes = load_grid_file(grid_file) if grid_file else ({}, [])
    config, extras = config_from_args(
        argv,
        "python -m digitcnn.sweep",
        "K-fold runs of every cell of a grid of settings on the same folds, with a paired "
        "comparison of the best cell against the others.",
        extra_arguments=GRID_ARGUMENTS,
        defaults=base_settings,
    )
    if extras.resume is not None:
        return (
            _resumed_cells(argv, Path(extras.resume), extras.overwrite, base_settings),
            Path(extras.resume),
            True,
        )
    cli_axes = parse_grid(extras.grid or [])
    names = {axis.name for axis in cli_axes}
    axes = [axis for axis in file_axes if axis.name not in names] + cli_axes
    out = Path(config.out) if config.out else default_sweep_dir(config)
    if config.cv == "full":
        raise ConfigError(
            "--cv full has no validation rows, so there is nothing to compare; "
            "use --cv kfold, stratified, writers or holdout"
        )
    cells = expand_grid(config.replace(out=str(out)), axes, out)
    check_out_dir(out, "digitcnn.sweep", overwrite=extras.overwrite)
    return cells, out, False


def _resumed_cells(
    argv: Sequence[str], out: Path, overwrite: bool, file_settings: dict
) -> list[Cell]:
    """The stored cells of the sweep in ``out``; a grid, or a setting that differs from the
    cells' own, given on the command line is refused (presentation settings are applied)."""
    if overwrite:
        raise ConfigError(
            "--resume and --overwrite exclude each other: --resume continues the "
            "sweep in its folder, --overwrite replaces it"
        )
    check_out_dir(out, "digitcnn.sweep", resume=True)
    given = given_settings(
        argv, "python -m digitcnn.sweep", extra_arguments=GRID_ARGUMENTS, keep=("grid", "grid_file")
    )
    for flag in ("grid", "grid_file"):
        if given.pop(flag, None) is not None:
            raise ConfigError(
                f"--{flag_name(flag)} with --resume {out}: a resumed sweep "
                "runs its own grid; drop it, or start a new sweep with a fresh --out"
            )
    given = {**file_settings, **given}
    cells = stored_cells(
        out, **{k: v for k, v in given.items() if k in PRESENTATION_KEYS and k != "out"}
    )
    for cell in cells:
        refuse_changed_settings(cell.config.to_dict(), given, out)
    return cells


class _SweepTracking:
    """A tracked sweep: each finished cell logged as a run of its own, from its folder (the
    same on this machine and on Ray, where the folds of all cells train at once), under the
    sweep's MLflow parent run, which the first finished cell starts (once the sweep's plan is
    in its folder)."""

    def __init__(self, config: RunConfig, out: Path) -> None:
        self.config, self.out = config, out
        self.tracker: Any = None
        self.parent_run_id: str | None = None

    def cell_end(self, cell: Cell) -> None:
        # why here: the trackers import their libraries (extras) and the run store NumPy
        from digitcnn.tracking import track_folder, track_sweep

        if self.tracker is None:
            self.tracker, self.parent_run_id = track_sweep(self.out, self.config)
        try:
            track_folder(cell.out, self.config.track, parent_run_id=self.parent_run_id)
        except DigitCNNError as err:  # tracking never fails the sweep: one line
            warnings.warn(f"tracking cell {cell.name}: {err}", RuntimeWarning, stacklevel=1)

    def close(self, status: str) -> None:
        if self.tracker is not None:
            if status == "FINISHED":
                self.tracker.log_files(self.out)
            self.tracker.close(status)


@cli_entry("digitcnn.sweep")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.sweep``: K-fold runs over a grid of settings, compared."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cells, out, resume = plan_from_args(argv)
    executor = executor_from_argv(argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--overwrite", action="store_true")
    overwrite = early.parse_known_args(argv)[0].overwrite
    quiet = cells[0].config.quiet
    started = time.perf_counter()
    # why here, once the plan is read: --help and a wrong grid must not import torch (Ray's
    # executor does; its settings are checked before the sweep starts)
    from digitcnn.cv.distributed import RayExecutor, connected
    from digitcnn.sweep.runner import run_sweep

    ray = None if executor is None else RayExecutor(**executor)

    def run(_: None) -> None:
        if not quiet:
            print(f"digitcnn.sweep: {len(cells)} cells into {out}", file=sys.stderr)
        config = cells[0].config
        tracking = _SweepTracking(config, out) if config.track else None
        with connected(ray), warnings_as_lines("digitcnn.sweep"), tracked(tracking):
            cell_end = None if tracking is None else tracking.cell_end
            run_sweep(cells, out, resume, quiet, ray, on_cell_end=cell_end)

    def prepare() -> None:
        if cells[0].config.track:
            # why here: the trackers import their libraries; a missing extra is refused
            # before the sweep starts
            from digitcnn.tracking import make_backends

            make_backends(cells[0].config.track)

    session = Session("digitcnn.sweep", out, resume, overwrite, executor_flags(executor))
    status = run_session(session, prepare, run)
    if status == 0 and not quiet:
        print((out / "sweep.md").read_text())
        print(f"sweep written to {out} in {time.perf_counter() - started:.1f} s")
    return status
