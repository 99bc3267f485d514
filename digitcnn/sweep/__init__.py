"""Sweeps: one K-fold run per cell of a grid of settings, all on the same folds, compared.

:mod:`~digitcnn.sweep.grid` holds the axes, the cells and the stored plan,
:mod:`~digitcnn.sweep.runner` runs and resumes the cells, and ``_outputs`` writes the
summaries and the paired t-tests; the command line is :mod:`digitcnn.commands.sweep`. The
grid syntax and the files a sweep writes are in the user guide (docs/guide/sweeps.md).
Importing the package imports neither torch nor NumPy.
"""

from digitcnn.sweep.grid import (
    NOT_SWEEPABLE,
    SPLIT_KEYS,
    Cell,
    GridAxis,
    expand_grid,
    grid_from_table,
    load_grid_file,
    parse_grid,
    parse_value,
    stored_cells,
    toml_value,
    value_label,
    varied_setting,
    write_plan,
)

__all__ = [
    "GridAxis",
    "Cell",
    "SPLIT_KEYS",
    "NOT_SWEEPABLE",
    "parse_grid",
    "parse_value",
    "toml_value",
    "value_label",
    "varied_setting",
    "load_grid_file",
    "grid_from_table",
    "expand_grid",
    "write_plan",
    "stored_cells",
]
