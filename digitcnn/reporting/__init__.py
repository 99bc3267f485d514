"""Reporting: what a run shows. ``scores`` and ``curves`` (one group's scores and ROC/PR
curves, with ``sklearn.metrics``), ``evaluation`` (``evaluation.json``: per fold and pooled),
``svg`` (charts written as SVG text, without a plotting library), ``plots`` (the figures of a
run and of a sweep), ``report`` (drawing them after ``metrics.json``, at a terminal in a
background process) and ``page`` (``report.html``, the figures inlined). Writing a run
folder is :mod:`digitcnn.runstore`'s.

The public names below are imported lazily: importing the package imports no NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from digitcnn.reporting.evaluation import evaluate_run as evaluate_run
    from digitcnn.reporting.page import render_report as render_report
    from digitcnn.reporting.report import write_run_report as write_run_report

_EXPORTS = {
    "evaluate_run": "evaluation",
    "render_report": "page",
    "write_run_report": "report",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
