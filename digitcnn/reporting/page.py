"""``report.html`` of a run directory: one self-contained page.

It shows the settings, the per-fold table, the pooled and per-fold-averaged metrics, the
per-class table and every figure, its SVG inlined (sharp at any zoom; hovering a cell, curve,
bar or marker shows its values). It needs no network, no JavaScript and no other file, so it
can be mailed or opened from an archive.
:func:`digitcnn.reporting.report.write_run_report` writes it, last, once the figures are drawn.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from digitcnn.reporting.plots import run_title
from digitcnn.settings import flag_name

__all__ = ["render_report", "flag_text", "FIGURE_CAPTIONS", "CSS"]

# File name -> caption, in the order the page shows them.
FIGURE_CAPTIONS = {
    "training_curves.svg": "Loss and accuracy per epoch: each fold thin, the mean over folds "
    "bold with a +-1 std band (train blue, validation orange). Training "
    "accuracy is measured with dropout and augmentation on.",
    "loss_curves.svg": "Train (solid) and validation (dashed) loss of every fold.",
    "confusion.svg": "Confusion matrix of all validation rows (fold counts summed), counts and "
    "normalised by true class.",
    "roc.svg": "One-vs-rest ROC curves of the pooled out-of-fold predictions.",
    "precision_recall.svg": "Precision-recall curves of the pooled out-of-fold predictions.",
    "per_class_f1.svg": "F1 per class with precision and recall.",
    "misclassified.svg": "Misclassified validation digits, most confident mistakes first: true "
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
figure { margin: 18px 0; } figure svg { max-width: 100%; height: auto;
        border: 1px solid #e3e7ee; }
figcaption { color: #5b6475; font-size: 0.9em; }
code { font-size: 0.9em; background: #f1f3f7; padding: 0 3px; }
"""


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


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    text_columns: int = 1,
    row_classes: Sequence[str] | None = None,
) -> str:
    """A table of already-escaped cells; the first ``text_columns`` are left-aligned."""

    def cells(values, tag):
        return "".join(
            f"<{tag}{' class=text' if i < text_columns else ''}>{v}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(
        f"<tr{f' class={row_classes[i]}' if row_classes and row_classes[i] else ''}>"
        f"{cells(row, 'td')}</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def _card(value: str, label: str) -> str:
    return (
        f'<div class="card"><div class="value">{value}</div><div class="label">{label}</div></div>'
    )


def _changed_settings(config) -> dict[str, Any]:
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if getattr(config, f.name) != f.default
    }


def flag_text(name: str, value: Any) -> str:
    """A setting as the command-line flag that gives it (``--no-verify``, ``--epochs 4``)."""
    flag = flag_name(name)
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _config_section(config) -> str:
    rows = []
    changed = _changed_settings(config)
    for f in fields(config):
        value = getattr(config, f.name)
        shown = f'<span class="changed">{_e(value)}</span>' if f.name in changed else _e(value)
        rows.append([_e(flag_name(f.name)), shown])
    half = (len(rows) + 1) // 2
    return (
        '<p>Every setting of this run; <span class="changed">bold</span> ones differ from '
        'the defaults.</p><div class="columns">'
        + _table(["setting", "value"], rows[:half], 2)
        + _table(["setting", "value"], rows[half:], 2)
        + "</div>"
    )


def _folds_section(result, evaluation: dict | None) -> str:
    by_fold = {f["fold"]: f for f in (evaluation or {}).get("folds", [])}
    header = [
        "fold",
        "train rows",
        "val rows",
        "val accuracy",
        "val loss",
        "train accuracy",
        "train loss",
        "epochs",
        "best epoch",
        "last lr",
        "wall s",
        "macro F1",
        "macro AUC",
    ]
    rows = []
    for fold in result.folds:
        scores = by_fold.get(fold.fold)
        last = lambda values: values[-1] if len(values) else float("nan")  # noqa: E731
        rows.append(
            [
                str(fold.fold),
                f"{fold.n_train:,}",
                f"{fold.n_val:,}",
                _percent(fold.accuracy),
                _number(fold.loss if fold.n_val else None),
                _percent(last(fold.train_accuracy)),
                _number(last(fold.train_loss)),
                str(fold.epochs_run or len(fold.train_loss)),
                str(fold.best_epoch + 1) if fold.best_epoch >= 0 and fold.n_val else "&mdash;",
                f"{fold.lr:.3g}",
                f"{fold.wall_s:.1f}",
                _number(scores["macro"]["f1"] if scores else None),
                _number(scores["macro"]["roc_auc"] if scores else None),
            ]
        )
    return _table(header, rows)


AGGREGATE_ROWS = (
    ("accuracy", None, "accuracy"),
    ("precision, macro", "macro", "precision"),
    ("recall, macro", "macro", "recall"),
    ("F1, macro", "macro", "f1"),
    ("precision, weighted", "weighted", "precision"),
    ("recall, weighted", "weighted", "recall"),
    ("F1, weighted", "weighted", "f1"),
    ("ROC AUC, macro", "macro", "roc_auc"),
    ("ROC AUC, micro", "micro", "roc_auc"),
    ("average precision, macro", "macro", "average_precision"),
    ("average precision, micro", "micro", "average_precision"),
)


def _aggregate_section(evaluation: dict) -> str:
    pooled, folds = evaluation["pooled"], evaluation["folds"]
    rows = []
    for label, group, metric in AGGREGATE_ROWS:
        value = pooled[metric] if group is None else pooled[group][metric]
        per_fold = [f[metric] if group is None else f[group][metric] for f in folds]
        per_fold = [v for v in per_fold if v is not None and not math.isnan(v)]
        spread = (
            f"{_number(np.mean(per_fold))} &plusmn; "
            f"{_number(np.std(per_fold, ddof=1) if len(per_fold) > 1 else 0.0)}"
            if per_fold
            else "&mdash;"
        )
        rows.append([_e(label), _number(value), spread])
    return (
        "<p>Pooled: computed once over all out-of-fold rows. Per fold: mean &plusmn; std "
        "(ddof=1) of the folds' values.</p>"
        + _table(
            ["metric", f"pooled ({evaluation['n']:,} rows)", f"per fold ({len(folds)} folds)"], rows
        )
    )


def _per_class_section(evaluation: dict) -> str:
    pooled = evaluation["pooled"]
    per_class, confusion = pooled["per_class"], np.asarray(pooled["confusion"])
    f1 = np.asarray(per_class["f1"], dtype=float)
    worst = int(np.nanargmin(f1)) if np.isfinite(f1).any() else -1
    rows, classes = [], []
    for label in range(len(f1)):
        off = confusion[label].copy()
        off[label] = 0
        confused = f"{int(off.argmax())} ({int(off.max())}&times;)" if off.max() > 0 else "&mdash;"
        rows.append(
            [
                str(label),
                f"{per_class['support'][label]:,}",
                _number(per_class["precision"][label]),
                _number(per_class["recall"][label]),
                _number(per_class["f1"][label]),
                _number(per_class["roc_auc"][label]),
                _number(per_class["average_precision"][label]),
                confused,
            ]
        )
        classes.append("worst" if label == worst else "")
    return (
        "<p>Pooled over all out-of-fold rows; the class with the lowest F1 is highlighted."
        "</p>"
        + _table(
            [
                "class",
                "support",
                "precision",
                "recall",
                "F1",
                "ROC AUC",
                "average precision",
                "most often predicted as",
            ],
            rows,
            row_classes=classes,
        )
    )


def _figure(path: Path) -> str:
    """A figure drawn as SVG, inlined as it is (its own title, tooltips and data URIs)."""
    caption = FIGURE_CAPTIONS.get(Path(path).name, "")
    return (
        f'<figure id="{_e(Path(path).stem)}">{Path(path).read_text(encoding="utf-8")}'
        f"<figcaption><code>{_e(Path(path).name)}</code> {_e(caption)}</figcaption></figure>"
    )


def _figures_section(figures: Sequence[Path], plots: bool) -> str:
    if not plots:
        return '<p class="note">Figures were turned off for this run (<code>--no-plots</code>).</p>'
    order = list(FIGURE_CAPTIONS)
    ranked = sorted(
        {Path(p) for p in figures},
        key=lambda p: order.index(p.name) if p.name in order else len(order),
    )
    return "".join(_figure(p) for p in ranked if p.is_file())


def _cards(result, evaluation: dict | None) -> str:
    """The headline numbers: accuracy, loss, macro F1 and AUC, folds, rows, wall time."""
    cards = [_card(f"{len(result.folds)}", "folds"), _card(f"{result.n:,}", "validation rows")]
    if result.n:
        cards[:0] = [
            _card(_percent(result.accuracy), "accuracy (pooled)"),
            _card(
                f"{_percent(result.accuracy_mean)} &plusmn; {_percent(result.accuracy_std)}",
                "accuracy per fold",
            ),
            _card(_number(result.loss), "validation loss"),
        ]
    if evaluation is not None:
        cards.insert(3, _card(_number(evaluation["pooled"]["macro"]["f1"]), "macro F1"))
        cards.insert(4, _card(_number(evaluation["pooled"]["macro"]["roc_auc"]), "macro ROC AUC"))
    cards.append(_card(f"{result.wall_s:.1f} s", f"on {_e(result.ran_on)}"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _environment_section(result) -> str:
    """Where the data came from (and their checksums), the device and the library versions."""
    dataset = result.dataset
    checksums = "".join(
        f"<li><code>{_e(name)}</code> {_e(digest)}</li>"
        for name, digest in sorted(dataset.get("sha256", {}).items())
    )
    return (
        f"<p>source: {_e(dataset.get('source', ''))}; input shape "
        f"{_e(dataset.get('input_shape', ''))}; device {_e(result.device)}; versions: "
        + ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(result.versions.items()))
        + "</p>"
        + ("\n" + f"<ul>{checksums}</ul>" if checksums else "\n")
    )


def render_report(
    result, evaluation: dict | None, figures: Sequence[Path] = (), plots: bool = True
) -> str:
    """The HTML text of ``report.html`` (see the module docstring)."""
    title = run_title(result)
    config, dataset = result.config, result.dataset
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="subtitle">dataset <b>{_e(dataset["name"])}</b> ({dataset.get("n", 0):,} rows, '
        f"{_e(dataset.get('source', ''))}), model <b>{_e(config.model)}</b>, "
        f"cv <b>{_e(config.cv)}</b>, splits sha256 "
        f"<code>{_e(result.splits_sha256[:16])}</code></p>",
        _cards(result, evaluation),
        "<p>Settings that differ from the defaults: "
        + (
            ", ".join(
                f"<code>{_e(flag_text(k, v))}</code>" for k, v in _changed_settings(config).items()
            )
            or "none"
        )
        + " (all settings at the end of the page).</p>",
    ]
    if not result.n:
        parts.append(
            '<p class="note">This run trained on every row without validation '
            "(<code>--cv full</code>): there are no out-of-fold predictions, so no "
            "validation metrics, per-class table, confusion matrix or ROC/PR curves."
            "</p>"
        )
    parts += ["<h2>Folds</h2>", _folds_section(result, evaluation)]
    if evaluation is not None:
        parts += [
            "<h2>Metrics</h2>",
            _aggregate_section(evaluation),
            "<h2>Per class</h2>",
            _per_class_section(evaluation),
        ]
    parts += [
        "<h2>Figures</h2>",
        _figures_section(figures, plots),
        "<h2>Settings</h2>",
        _config_section(config),
        "<h2>Data and environment</h2>",
        _environment_section(result),
        "</body></html>\n",
    ]
    return "\n".join(parts)
