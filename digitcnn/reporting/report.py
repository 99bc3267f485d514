"""``evaluation.json``, the evaluation figures and ``report.html`` of a run directory.

:func:`digitcnn.runstore.files.write_final` writes ``metrics.json`` first (a finished
run) and then the report, with :func:`write_run_report` in its own process or, for the CLIs
at a terminal, with :func:`start_report` in a background process (``python -m
digitcnn.reporting.report``), so that a person gets the run's numbers without waiting for the
report. ``evaluation.json`` is computed with ``sklearn.metrics``, which the run has already
imported; the figures are SVG (:mod:`digitcnn.reporting.plots`), the page
:mod:`digitcnn.reporting.page`.
While a background report is being drawn the run folder holds ``report.log``; it is removed
when ``report.html`` is in place and keeps the error if drawing failed. Every file is written
atomically and ``report.html`` last, so a folder holding it has its whole report.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from digitcnn._io import atomic_write_text, write_json
from digitcnn.errors import ConfigError, DataError, exit_cli
from digitcnn.reporting.evaluation import evaluate_run, without_curves
from digitcnn.reporting.page import render_report
from digitcnn.reporting.plots import (
    misclassified_order,
    plot_confusion,
    plot_loss_curves,
    plot_misclassified,
    plot_per_class_f1,
    plot_precision_recall,
    plot_roc,
    plot_training_curves,
    run_title,
)

__all__ = [
    "write_run_report",
    "draw_evaluation_figures",
    "start_report",
    "report_in_background",
    "REPORT_ENV",
    "REPORT_LOG",
]


# ``background`` or ``wait``: overrides the CLIs' choice (background exactly when stdout is a
# terminal, where a person waits; scripts, pipes and tests get the whole report on return).
REPORT_ENV = "DIGITCNN_REPORT"
# Present in a run folder while its report is drawn in the background; kept with the error if
# drawing failed.
REPORT_LOG = "report.log"


def write_run_report(
    result,
    directory: str | Path,
    oof: dict,
    figures: Sequence[Path] = (),
    plots: bool = True,
    images=None,
) -> dict | None:
    """Write ``evaluation.json`` (when there are out-of-fold rows with labels), the figures
    (when ``plots``) and, last, ``report.html``. Returns the evaluation, or None.

    Args:
        result: the :class:`~digitcnn.results.KFoldResult`.
        oof: its ``out_of_fold()`` dict (empty for a run without validation rows).
        figures: further figures already drawn for this run, shown too.
        images: the dataset's (N, 1, H, W) uint8 images, indexed like ``oof["row"]``, for the
            grid of misclassified digits (left out when None).
    """
    directory = Path(directory)
    _check_images(oof, images)
    evaluation = None
    if oof and "true" in oof:
        evaluation = evaluate_run(oof, curves=plots)
        write_json(directory / "evaluation.json", without_curves(evaluation))
    drawn = list(figures)
    if plots:
        drawn += draw_evaluation_figures(result, directory, evaluation, oof, images)
    atomic_write_text(
        directory / "report.html", render_report(result, evaluation, drawn, plots=plots)
    )
    return evaluation


def draw_evaluation_figures(
    result, directory: Path, evaluation: dict | None, oof: dict, images=None
) -> list[Path]:
    """confusion.svg for a run with validation rows; loss_curves.svg and training_curves.svg
    for a run with epochs; roc, precision_recall, per_class_f1 with an evaluation;
    misclassified.svg with an evaluation and the images."""
    title = run_title(result)
    folds = result.folds
    drawn = []
    if result.n:  # a --full run has no validation rows to tabulate
        drawn.append(plot_confusion(result.confusion, directory / "confusion.svg", title))
    if result.trained_by_epochs:
        drawn.append(
            plot_loss_curves(
                [f.train_loss for f in folds],
                [f.val_loss for f in folds],
                directory / "loss_curves.svg",
                title,
            )
        )
    # a fold without validation rows records placeholder validation values: leave them out
    if result.trained_by_epochs:
        drawn.append(
            plot_training_curves(
                [f.train_loss for f in folds],
                [f.val_loss if f.n_val else [] for f in folds],
                [f.train_accuracy for f in folds],
                [f.val_accuracy if f.n_val else [] for f in folds],
                directory / "training_curves.svg",
                title,
            )
        )
    if evaluation is None:
        return drawn
    pooled = evaluation["pooled"]
    per_class, macro, micro = pooled["per_class"], pooled["macro"], pooled["micro"]
    drawn.append(
        plot_roc(
            pooled["curves"]["roc"],
            {
                "per_class": per_class["roc_auc"],
                "micro": micro["roc_auc"],
                "macro": macro["roc_auc"],
            },
            directory / "roc.svg",
            title,
        )
    )
    drawn.append(
        plot_precision_recall(
            pooled["curves"]["pr"],
            {
                "per_class": per_class["average_precision"],
                "micro": micro["average_precision"],
                "macro": macro["average_precision"],
            },
            directory / "precision_recall.svg",
            title,
        )
    )
    drawn.append(plot_per_class_f1(per_class, macro["f1"], directory / "per_class_f1.svg", title))
    if images is not None:
        drawn.append(
            plot_misclassified(
                images,
                oof["row"],
                oof["true"],
                oof["predicted"],
                _predicted_probability(oof),
                directory / "misclassified.svg",
                title,
            )
        )
    return drawn


def _predicted_probability(oof: dict) -> np.ndarray:
    return np.exp(np.take_along_axis(oof["log_probs"], oof["predicted"][:, None], axis=1)[:, 0])


def _check_images(oof: dict, images) -> None:
    if images is not None and oof and len(oof["row"]) and int(oof["row"].max()) >= len(images):
        raise DataError(
            f"{len(images)} images given for the misclassified grid but the "
            f"predictions refer to row {int(oof['row'].max())}; pass the "
            "images of the dataset the run was trained on"
        )


# ----------------------------------------------------------------------------- background


def report_in_background() -> bool:
    """Whether a CLI draws its report in the background: ``$DIGITCNN_REPORT`` (``background``
    or ``wait``) when set, else exactly when stdout is a terminal."""
    chosen = os.environ.get(REPORT_ENV, "").strip().lower()
    if chosen not in ("", "background", "wait"):
        raise ConfigError(f"${REPORT_ENV}={chosen!r}: use 'background' or 'wait', or unset it")
    if chosen:
        return chosen == "background"
    return sys.stdout.isatty()


def start_report(
    result, directory: str | Path, oof: dict, plots: bool = True, images=None
) -> subprocess.Popen:
    """Draw the report of ``result`` (``metrics.json`` already written) in a background process
    and return it at once.

    The process gets the result in a temporary file, with only the images that the grid of
    misclassified digits shows; it runs at lower priority in its own session (Ctrl-C and
    closing the terminal leave it alone), writes its errors to ``report.log`` and removes that
    log once ``report.html`` is in place.
    """
    directory = Path(directory)
    _check_images(oof, images)
    shown = None
    if images is not None and oof and "true" in oof:
        order = misclassified_order(oof["true"], oof["predicted"], _predicted_probability(oof))
        rows = np.asarray(oof["row"])[order]
        shown = {
            "count": len(images),
            "rows": rows,
            "images": np.asarray(images[rows] if len(rows) else images[:0]),
        }
    # Handed over in an unlinked temporary file, not a pipe: a pipe would hold this process
    # until the new one has started up and read it all.
    payload = tempfile.TemporaryFile()
    pickle.dump(
        {
            "result": result,
            "directory": str(directory),
            "oof": oof,
            "plots": plots,
            "images": shown,
        },
        payload,
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    payload.seek(0)
    log = directory / REPORT_LOG
    with payload, open(log, "w", encoding="utf-8") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "digitcnn.reporting.report"],
            stdin=payload,
            stdout=subprocess.DEVNULL,
            stderr=stream,
            start_new_session=True,
            close_fds=True,
        )
        stream.write(
            f"drawing the report of {directory} in process {process.pid} since "
            f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
        )
        stream.flush()
    return process


def _draw_from_stdin() -> int:
    """The background process of :func:`start_report`."""
    if sys.stdin.isatty():
        print(
            "python -m digitcnn.reporting.report: draws a run's report for digitcnn's CLIs; it "
            "reads its input from them, not from a terminal",
            file=sys.stderr,
        )
        return 2
    payload = pickle.load(sys.stdin.buffer)
    try:
        os.nice(5)  # a run started meanwhile gets the CPU first
    except OSError:  # pragma: no cover - not permitted
        pass
    directory = Path(payload["directory"])
    images, shown = None, payload["images"]
    if shown is not None:
        # zero pages cost no memory until written: only the rows shown are filled
        images = np.zeros((shown["count"], *shown["images"].shape[1:]), dtype=np.uint8)
        images[shown["rows"]] = shown["images"]
    try:
        write_run_report(
            payload["result"], directory, payload["oof"], plots=payload["plots"], images=images
        )
    except BaseException as error:
        print(
            f"digitcnn.reporting.report: the report of {directory} could not be drawn ({error}); "
            "metrics.json and the other results are complete",
            file=sys.stderr,
        )
        raise
    (directory / REPORT_LOG).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    exit_cli(_draw_from_stdin())
