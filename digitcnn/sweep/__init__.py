"""Sweeps: one K-fold run per cell of a grid of settings, all on the same folds, compared.

CLI::

    python -m digitcnn.sweep --dataset uci --grid optimizer=sgd,rmsprop,adam dropout=0.2,0.3
    python -m digitcnn.sweep --grid-file experiments/s2_optimizers.toml --epochs 5
    python -m digitcnn.sweep --resume results/sweep-uci-s5-20250101T000000Z

Every ``python -m digitcnn.kfold`` flag sets the base settings of all cells. The grid:

* ``--grid NAME=V1,V2 ...``: one axis per entry; NAME is a setting (dashes or underscores),
  the values are parsed with the setting's type (``none`` is None for optional numbers).
  Settings that must change together form one axis with ``:``:
  ``--grid optimizer:lr=sgd:0.01,adam:0.001``.
* ``--grid-file FILE.toml``: a ``[grid]`` table whose keys are axes; the rest of the file are
  base settings, as in ``--config`` (flags override them, ``--config`` too). An axis is a list
  of values of that setting, or a list of tables of settings that change together, each with
  an optional ``name`` for the cell names::

      epochs = 15
      [grid]
      dropout = [0.2, 0.3]
      recipe = [{name = "sgd", optimizer = "sgd", lr = 0.01},
                {name = "adam", optimizer = "adam", lr = 0.001}]

  ``--grid`` axes are added to the file's (and replace a file axis of the same name).

The cells are the Cartesian product of the axes (the last axis varies fastest). Each is a
K-fold run written to ``OUT/cells/<cell>/`` like any run directory; the settings that decide
the folds (dataset, rows, cv, folds, random_state) cannot be swept, and every cell's
``splits_sha256`` is checked to be the same, so that the cells can be compared fold by fold.

``OUT/sweep.md`` and ``OUT/sweep.csv`` hold per cell the mean +- std of the per-fold
validation accuracy, the pooled accuracy, the training accuracy of the last epoch (mean over
folds) and the wall time, and the comparison of the best cell (highest mean) with each other
cell; ``OUT/comparisons.csv`` has the per-fold differences; ``OUT/sweep.svg`` draws the
accuracies. The comparison is the corrected resampled t-test of Nadeau and Bengio (2003),
see :func:`digitcnn.metrics.corrected_resampled_ttest`. ``OUT/sweep.json`` holds the plan
(every cell's settings); ``--resume OUT`` runs the cells without ``metrics.json`` and
continues the unfinished folds of an interrupted cell.

The package: :mod:`~digitcnn.sweep.grid` (axes, cells, the stored plan),
:mod:`~digitcnn.sweep.runner` (:func:`~digitcnn.sweep.runner.run_sweep`: the cells' K-fold
runs and resume), :mod:`~digitcnn.sweep._outputs` (summaries, the t-test table, the files) and
the command line, :mod:`digitcnn.commands.sweep`. Importing the package imports neither torch
nor NumPy: the runner and the outputs are imported from their modules.
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
    "load_grid_file",
    "grid_from_table",
    "expand_grid",
    "write_plan",
    "stored_cells",
]
