"""``evaluation.json``, the evaluation figures and ``report.html`` of a run directory.

``report.html`` is one self-contained page: the settings, the per-fold table, the pooled and
per-fold-averaged metrics, the per-class table and every figure, embedded as base64 PNG data
URIs. It needs no network, no JavaScript and no other file, so it can be mailed or opened from
an archive.

:meth:`digitcnn.results.KFoldResult.write_final` writes ``metrics.json`` first (a finished
run) and then the report, with :func:`write_run_report` in its own process or, for the CLIs
at a terminal, with :func:`start_report` in a background process, so that a person gets the
run's numbers without waiting for the figures (matplotlib's import and the drawing take
seconds; see ``python -m digitcnn.bench --cases startup``). ``evaluation.json`` is computed
with ``sklearn.metrics``, which the run has already imported.
While a background report is being drawn the run folder holds ``report.log``; it is removed
when ``report.html`` is in place and keeps the error if drawing failed. Every file is written
atomically and ``report.html`` last, so a folder holding it has its whole report.
"""
from __future__ import annotations

import base64
import html
import math
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from digitcnn.errors import DataError
from digitcnn._io import atomic_write_text, write_json

__all__ = ["write_run_report", "draw_evaluation_figures", "render_report", "flag_text",
           "start_report", "report_in_background", "REPORT_ENV", "REPORT_LOG", "FIGURE_CAPTIONS"]

# ``background`` or ``wait``: overrides the CLIs' choice (background exactly when stdout is a
# terminal, where a person waits; scripts, pipes and tests get the whole report on return).
REPORT_ENV = "DIGITCNN_REPORT"
# Present in a run folder while its report is drawn in the background; kept with the error if
# drawing failed.
REPORT_LOG = "report.log"

# File name -> caption, in the order the page shows them.
FIGURE_CAPTIONS = {
    "training_curves.png": "Loss and accuracy per epoch: each fold thin, the mean over folds "
                           "bold with a +-1 std band (train blue, validation orange). Training "
                           "accuracy is measured with dropout and augmentation on.",
    "loss_curves.png": "Train (solid) and validation (dashed) loss of every fold.",
    "confusion.png": "Confusion matrix of all validation rows (fold counts summed), counts and "
                     "normalised by true class.",
    "roc.png": "One-vs-rest ROC curves of the pooled out-of-fold predictions.",
    "precision_recall.png": "Precision-recall curves of the pooled out-of-fold predictions.",
    "per_class_f1.png": "F1 per class with precision and recall.",
    "misclassified.png": "Misclassified validation digits, most confident mistakes first: true "
                         "class -> predicted class, the predicted class's probability, the "
                         "dataset row.",
}

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1320px; color: #1d2330; background: #fff; line-height: 1.4; }
h1 { font-size: 1.55em; margin-bottom: 0.1em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 2px solid #d8dde6; padding-bottom: 0.15em; }
.subtitle { color: #5b6475; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #d8dde6; border-radius: 6px; padding: 10px 16px; min-width: 140px;
        background: #f6f8fb; }
.card .value { font-size: 1.45em; font-weight: 600; } .card .label { color: #5b6475;
        font-size: 0.85em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #d8dde6; padding: 3px 9px; text-align: right; }
th { background: #eef1f6; } td.text, th.text { text-align: left; }
tr:nth-child(even) td { background-color: #fafbfd; }
tr.worst td { background-color: #ffe3cc; font-weight: 600; }
.columns { display: flex; gap: 32px; align-items: flex-start; }
.columns table { flex: 1; }
.changed { font-weight: 700; color: #0b5394; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; }
figure { margin: 18px 0; } figure img { max-width: 100%; border: 1px solid #e3e7ee; }
figcaption { color: #5b6475; font-size: 0.9em; }
code { font-size: 0.9em; background: #f1f3f7; padding: 0 3px; }
"""


def write_run_report(result, directory: str | Path, oof: dict, figures: Sequence[Path] = (),
                     plots: bool = True, images=None) -> dict | None:
    """Write ``evaluation.json`` (when there are out-of-fold rows with labels), the figures
    (when ``plots``) and, last, ``report.html``. Returns the evaluation, or None.

    Args:
        result: the :class:`~digitcnn.results.KFoldResult`.
        oof: its ``out_of_fold()`` dict (empty for a run without validation rows).
        figures: further figures already drawn for this run, shown too.
        images: the dataset's (N, 1, H, W) uint8 images, indexed like ``oof["row"]``, for the
            grid of misclassified digits (left out when None).
    """
    from digitcnn.reporting.evaluation import evaluate_run, without_curves

    directory = Path(directory)
    _check_images(oof, images)
    evaluation = None
    if oof and "true" in oof:
        evaluation = evaluate_run(oof, curves=plots)
        write_json(directory / "evaluation.json", without_curves(evaluation))
    drawn = list(figures)
    if plots:
        drawn += draw_evaluation_figures(result, directory, evaluation, oof, images)
    atomic_write_text(directory / "report.html",
                      render_report(result, evaluation, drawn, plots=plots))
    return evaluation


def draw_evaluation_figures(result, directory: Path, evaluation: dict | None, oof: dict,
                            images=None) -> list[Path]:
    """confusion.png for a run with validation rows; loss_curves.png and training_curves.png
    for a run with epochs; roc, precision_recall, per_class_f1 with an evaluation;
    misclassified.png with an evaluation and the images."""
    from digitcnn.reporting.plots import (plot_confusion, plot_loss_curves, plot_misclassified, plot_per_class_f1,
                        plot_precision_recall, plot_roc, plot_training_curves, run_title)

    title = run_title(result)
    folds = result.folds
    drawn = []
    if result.n:  # a --full run has no validation rows to tabulate
        drawn.append(plot_confusion(result.confusion, directory / "confusion.png", title))
    if result.trained_by_epochs:
        drawn.append(plot_loss_curves([f.train_loss for f in folds], [f.val_loss for f in folds],
                                      directory / "loss_curves.png", title))
    # a fold without validation rows records placeholder validation values: leave them out
    if result.trained_by_epochs:
        drawn.append(plot_training_curves([f.train_loss for f in folds],
                                          [f.val_loss if f.n_val else [] for f in folds],
                                          [f.train_accuracy for f in folds],
                                          [f.val_accuracy if f.n_val else [] for f in folds],
                                          directory / "training_curves.png", title))
    if evaluation is None:
        return drawn
    pooled = evaluation["pooled"]
    per_class, macro, micro = pooled["per_class"], pooled["macro"], pooled["micro"]
    drawn.append(plot_roc(pooled["curves"]["roc"],
                          {"per_class": per_class["roc_auc"], "micro": micro["roc_auc"],
                           "macro": macro["roc_auc"]}, directory / "roc.png", title))
    drawn.append(plot_precision_recall(
        pooled["curves"]["pr"], {"per_class": per_class["average_precision"],
                                 "micro": micro["average_precision"],
                                 "macro": macro["average_precision"]},
        directory / "precision_recall.png", title))
    drawn.append(plot_per_class_f1(per_class, macro["f1"], directory / "per_class_f1.png", title))
    if images is not None:
        drawn.append(plot_misclassified(images, oof["row"], oof["true"], oof["predicted"],
                                        _predicted_probability(oof),
                                        directory / "misclassified.png", title))
    return drawn


def _predicted_probability(oof: dict) -> np.ndarray:
    return np.exp(np.take_along_axis(oof["log_probs"], oof["predicted"][:, None], axis=1)[:, 0])


def _check_images(oof: dict, images) -> None:
    if images is not None and oof and len(oof["row"]) and int(oof["row"].max()) >= len(images):
        raise DataError(f"{len(images)} images given for the misclassified grid but the "
                        f"predictions refer to row {int(oof['row'].max())}; pass the "
                        "images of the dataset the run was trained on")


# ----------------------------------------------------------------------------- background


def report_in_background() -> bool:
    """Whether a CLI draws its report in the background: ``$DIGITCNN_REPORT`` (``background``
    or ``wait``) when set, else exactly when stdout is a terminal."""
    from digitcnn.errors import ConfigError

    chosen = os.environ.get(REPORT_ENV, "").strip().lower()
    if chosen not in ("", "background", "wait"):
        raise ConfigError(f"${REPORT_ENV}={chosen!r}: use 'background' or 'wait', or unset it")
    if chosen:
        return chosen == "background"
    return sys.stdout.isatty()


def start_report(result, directory: str | Path, oof: dict, plots: bool = True,
                 images=None) -> subprocess.Popen:
    """Draw the report of ``result`` (``metrics.json`` already written) in a background process
    and return it at once.

    The process gets the result in a temporary file, with only the images that the grid of
    misclassified digits shows; it runs at lower priority in its own session (Ctrl-C and
    closing the terminal leave it alone), writes its errors to ``report.log`` and removes that
    log once ``report.html`` is in place.
    """
    from digitcnn.reporting.plots import misclassified_order

    directory = Path(directory)
    _check_images(oof, images)
    shown = None
    if images is not None and oof and "true" in oof:
        order = misclassified_order(oof["true"], oof["predicted"], _predicted_probability(oof))
        rows = np.asarray(oof["row"])[order]
        shown = {"count": len(images), "rows": rows,
                 "images": np.asarray(images[rows] if len(rows) else images[:0])}
    # Handed over in an unlinked temporary file, not a pipe: a pipe would hold this process
    # until the new one has started up and read it all.
    payload = tempfile.TemporaryFile()
    pickle.dump({"result": result, "directory": str(directory), "oof": oof, "plots": plots,
                 "images": shown}, payload, protocol=pickle.HIGHEST_PROTOCOL)
    payload.seek(0)
    log = directory / REPORT_LOG
    with payload, open(log, "w", encoding="utf-8") as stream:
        process = subprocess.Popen([sys.executable, "-m", "digitcnn.reporting.report"],
                                   stdin=payload, stdout=subprocess.DEVNULL,
                                   stderr=stream, start_new_session=True, close_fds=True)
        stream.write(f"drawing the report of {directory} in process {process.pid} since "
                     f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        stream.flush()
    return process


def _draw_from_stdin() -> int:
    """The background process of :func:`start_report`."""
    if sys.stdin.isatty():
        print("python -m digitcnn.reporting.report: draws a run's report for digitcnn's CLIs; it reads "
              "its input from them, not from a terminal", file=sys.stderr)
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
        write_run_report(payload["result"], directory, payload["oof"], plots=payload["plots"],
                         images=images)
    except BaseException as error:
        print(f"digitcnn.reporting.report: the report of {directory} could not be drawn ({error}); "
              "metrics.json and the other results are complete", file=sys.stderr)
        raise
    (directory / REPORT_LOG).unlink(missing_ok=True)
    return 0


# ----------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&mdash;"
    return f"{value:.{digits}f}"


def _percent(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&mdash;"
    return f"{100 * value:.{digits}f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1,
           row_classes: Sequence[str] | None = None) -> str:
    """A table of already-escaped cells; the first ``text_columns`` are left-aligned."""
    def cells(values, tag):
        return "".join(f'<{tag}{" class=text" if i < text_columns else ""}>{v}</{tag}>'
                       for i, v in enumerate(values))
    body = "".join(f'<tr{f" class={row_classes[i]}" if row_classes and row_classes[i] else ""}>'
                   f"{cells(row, 'td')}</tr>" for i, row in enumerate(rows))
    return f"<table><thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def _card(value: str, label: str) -> str:
    return (f'<div class="card"><div class="value">{value}</div>'
            f'<div class="label">{label}</div></div>')


def _changed_settings(config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)
            if getattr(config, f.name) != f.default}


def flag_text(name: str, value: Any) -> str:
    """A setting as the command-line flag that gives it (``--no-verify``, ``--epochs 4``)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _config_section(config) -> str:
    rows = []
    changed = _changed_settings(config)
    for f in fields(config):
        value = getattr(config, f.name)
        shown = f'<span class="changed">{_e(value)}</span>' if f.name in changed else _e(value)
        rows.append([_e(f.name.replace("_", "-")), shown])
    half = (len(rows) + 1) // 2
    return ('<p>Every setting of this run; <span class="changed">bold</span> ones differ from '
            'the defaults.</p><div class="columns">'
            + _table(["setting", "value"], rows[:half], 2)
            + _table(["setting", "value"], rows[half:], 2) + "</div>")


def _folds_section(result, evaluation: dict | None) -> str:
    by_fold = {f["fold"]: f for f in (evaluation or {}).get("folds", [])}
    header = ["fold", "train rows", "val rows", "val accuracy", "val loss", "train accuracy",
              "train loss", "epochs", "best epoch", "last lr", "wall s", "macro F1",
              "macro AUC"]
    rows = []
    for fold in result.folds:
        scores = by_fold.get(fold.fold)
        last = lambda values: values[-1] if len(values) else float("nan")  # noqa: E731
        rows.append([str(fold.fold), f"{fold.n_train:,}", f"{fold.n_val:,}",
                     _percent(fold.accuracy), _number(fold.loss if fold.n_val else None),
                     _percent(last(fold.train_accuracy)), _number(last(fold.train_loss)),
                     str(fold.epochs_run or len(fold.train_loss)),
                     str(fold.best_epoch + 1) if fold.best_epoch >= 0 and fold.n_val
                     else "&mdash;",
                     f"{fold.lr:.3g}", f"{fold.wall_s:.1f}",
                     _number(scores["macro"]["f1"] if scores else None),
                     _number(scores["macro"]["roc_auc"] if scores else None)])
    return _table(header, rows)


AGGREGATE_ROWS = (("accuracy", None, "accuracy"), ("precision, macro", "macro", "precision"),
                  ("recall, macro", "macro", "recall"), ("F1, macro", "macro", "f1"),
                  ("precision, weighted", "weighted", "precision"),
                  ("recall, weighted", "weighted", "recall"), ("F1, weighted", "weighted", "f1"),
                  ("ROC AUC, macro", "macro", "roc_auc"), ("ROC AUC, micro", "micro", "roc_auc"),
                  ("average precision, macro", "macro", "average_precision"),
                  ("average precision, micro", "micro", "average_precision"))


def _aggregate_section(evaluation: dict) -> str:
    pooled, folds = evaluation["pooled"], evaluation["folds"]
    rows = []
    for label, group, metric in AGGREGATE_ROWS:
        value = pooled[metric] if group is None else pooled[group][metric]
        per_fold = [f[metric] if group is None else f[group][metric] for f in folds]
        per_fold = [v for v in per_fold if v is not None and not math.isnan(v)]
        spread = (f"{_number(np.mean(per_fold))} &plusmn; "
                  f"{_number(np.std(per_fold, ddof=1) if len(per_fold) > 1 else 0.0)}"
                  if per_fold else "&mdash;")
        rows.append([_e(label), _number(value), spread])
    return ("<p>Pooled: computed once over all out-of-fold rows. Per fold: mean &plusmn; std "
            "(ddof=1) of the folds' values.</p>"
            + _table(["metric", f"pooled ({evaluation['n']:,} rows)",
                      f"per fold ({len(folds)} folds)"], rows))


def _per_class_section(evaluation: dict) -> str:
    pooled = evaluation["pooled"]
    per_class, confusion = pooled["per_class"], np.asarray(pooled["confusion"])
    f1 = np.asarray(per_class["f1"], dtype=float)
    worst = int(np.nanargmin(f1)) if np.isfinite(f1).any() else -1
    rows, classes = [], []
    for label in range(len(f1)):
        off = confusion[label].copy()
        off[label] = 0
        confused = (f"{int(off.argmax())} ({int(off.max())}&times;)" if off.max() > 0
                    else "&mdash;")
        rows.append([str(label), f"{per_class['support'][label]:,}",
                     _number(per_class["precision"][label]), _number(per_class["recall"][label]),
                     _number(per_class["f1"][label]), _number(per_class["roc_auc"][label]),
                     _number(per_class["average_precision"][label]), confused])
        classes.append("worst" if label == worst else "")
    return ("<p>Pooled over all out-of-fold rows; the class with the lowest F1 is highlighted."
            "</p>" + _table(["class", "support", "precision", "recall", "F1", "ROC AUC",
                             "average precision", "most often predicted as"], rows,
                            row_classes=classes))


def _figure(path: Path) -> str:
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = FIGURE_CAPTIONS.get(Path(path).name, "")
    return (f'<figure><img alt="{_e(Path(path).name)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption><code>{_e(Path(path).name)}</code> {_e(caption)}</figcaption></figure>")


def _figures_section(figures: Sequence[Path], plots: bool) -> str:
    if not plots:
        return '<p class="note">Figures were turned off for this run (<code>--no-plots</code>).</p>'
    order = list(FIGURE_CAPTIONS)
    ranked = sorted({Path(p) for p in figures},
                    key=lambda p: order.index(p.name) if p.name in order else len(order))
    return "".join(_figure(p) for p in ranked if p.is_file())


def render_report(result, evaluation: dict | None, figures: Sequence[Path] = (),
                  plots: bool = True) -> str:
    """The HTML text of ``report.html`` (see the module docstring)."""
    from digitcnn.reporting.plots import run_title

    title = run_title(result)
    config = result.config
    cards = [_card(f"{len(result.folds)}", "folds"), _card(f"{result.n:,}", "validation rows")]
    if result.n:
        cards[:0] = [_card(_percent(result.accuracy), "accuracy (pooled)"),
                     _card(f"{_percent(result.accuracy_mean)} &plusmn; "
                           f"{_percent(result.accuracy_std)}", "accuracy per fold"),
                     _card(_number(result.loss), "validation loss")]
    if evaluation is not None:
        cards.insert(3, _card(_number(evaluation["pooled"]["macro"]["f1"]), "macro F1"))
        cards.insert(4, _card(_number(evaluation["pooled"]["macro"]["roc_auc"]), "macro ROC AUC"))
    cards.append(_card(f"{result.wall_s:.1f} s", f"on {_e(result.ran_on)}"))
    dataset = result.dataset
    checksums = "".join(f"<li><code>{_e(name)}</code> {_e(digest)}</li>"
                        for name, digest in sorted(dataset.get("sha256", {}).items()))
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="subtitle">dataset <b>{_e(dataset["name"])}</b> ({dataset.get("n", 0):,} rows, '
        f'{_e(dataset.get("source", ""))}), model <b>{_e(config.model)}</b>, '
        f"cv <b>{_e(config.cv)}</b>, splits sha256 "
        f"<code>{_e(result.splits_sha256[:16])}</code></p>",
        f'<div class="cards">{"".join(cards)}</div>',
        "<p>Settings that differ from the defaults: "
        + (", ".join(f"<code>{_e(flag_text(k, v))}</code>"
                     for k, v in _changed_settings(config).items()) or "none")
        + " (all settings at the end of the page).</p>",
    ]
    if not result.n:
        parts.append('<p class="note">This run trained on every row without validation '
                     "(<code>--cv full</code>): there are no out-of-fold predictions, so no "
                     "validation metrics, per-class table, confusion matrix or ROC/PR curves."
                     "</p>")
    parts += ["<h2>Folds</h2>", _folds_section(result, evaluation)]
    if evaluation is not None:
        parts += ["<h2>Metrics</h2>", _aggregate_section(evaluation),
                  "<h2>Per class</h2>", _per_class_section(evaluation)]
    parts += ["<h2>Figures</h2>", _figures_section(figures, plots),
              "<h2>Settings</h2>", _config_section(config),
              "<h2>Data and environment</h2>",
              f"<p>source: {_e(dataset.get('source', ''))}; input shape "
              f"{_e(dataset.get('input_shape', ''))}; device {_e(result.device)}; versions: "
              + ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(result.versions.items()))
              + "</p>",
              f"<ul>{checksums}</ul>" if checksums else "",
              "</body></html>\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(_draw_from_stdin())
