"""report.html, evaluation.json and the evaluation figures of a run directory."""

import io
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from conftest import REPO_ROOT

from digitcnn import kfold, train
from digitcnn.config import RunConfig
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.errors import ConfigError, DataError
from digitcnn.reporting import report
from digitcnn.reporting.page import FIGURE_CAPTIONS
from digitcnn.reporting.plots import plot_misclassified, plot_training_curves
from digitcnn.runstore.files import write_final

FAST = ["--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-verify", "--quiet"]
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def write_order(monkeypatch):
    """Names of the files renamed into place, in order (every write is atomic)."""
    order = []
    real_replace = os.replace

    def recording(source, destination, *args, **kwargs):
        order.append(os.path.basename(destination))
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording)
    return order


def inline_charts(page):
    """(file name, SVG text) of every figure report.html inlines, in page order."""
    return [
        (f"{name}.svg", svg)
        for name, svg in re.findall(r'<figure id="([^"]+)">(<svg .*?</svg>\n)', page, re.S)
    ]


def parsed(svg_text):
    """The SVG parsed as XML (a malformed chart fails here), with its drawn marks."""
    root = ElementTree.fromstring(svg_text)
    assert root.tag == f"{SVG}svg"
    return root, [e for e in root.iter() if e.get("class") in ("series", "mark")]


def test_kfold_run_writes_evaluation_figures_and_a_self_contained_report(
    optdigits_dir, tmp_path, write_order
):
    out = tmp_path / "run"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 0
    figures = [
        "confusion.svg",
        "loss_curves.svg",
        "training_curves.svg",
        "roc.svg",
        "precision_recall.svg",
        "per_class_f1.svg",
        "misclassified.svg",
    ]
    for name in figures + ["evaluation.json", "report.html", "oof.npz"]:
        assert (out / name).is_file(), name
    # metrics.json marks a finished run: written before the report, which cannot lose it;
    # report.html comes last, so a folder holding it has every figure
    assert write_order.index("metrics.json") < min(write_order.index(f) for f in figures)
    assert write_order.index("metrics.json") < write_order.index("evaluation.json")
    assert write_order[-1] == "report.html"
    assert write_order.index("evaluation.json") < write_order.index("report.html")
    assert not (out / "report.log").exists()  # not a terminal: the CLI waited for the report

    metrics = json.loads((out / "metrics.json").read_text())
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["pooled"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert evaluation["pooled"]["confusion"] == metrics["confusion"]

    page = (out / "report.html").read_text()
    # self-contained: no scripts, no external resource, every image a data URI (the SVG
    # namespace is a name, never fetched)
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:)', page)
    without_namespace = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_namespace and "https://" not in without_namespace
    charts = inline_charts(page)
    assert [name for name, _ in charts] == [n for n in FIGURE_CAPTIONS if n in figures]
    for name, svg in charts:
        assert svg == (out / name).read_text()
        _, marks = parsed(svg)
        assert len(marks) >= 4, name  # curves, cells, bars or digits: never an empty frame
    assert f"counts (n = {metrics['n']:,})" in page
    # the numbers people look for
    assert f"{100 * metrics['accuracy']:.2f}%" in page
    assert f"{evaluation['pooled']['macro']['f1']:.4f}" in page
    for fold in metrics["folds"]:
        assert f"{100 * fold['accuracy']:.2f}%" in page
    assert page.count("<tr") >= 4 + 1 + 11 + 1 + 10  # folds, metrics and per-class rows
    assert "<code>--epochs 1</code>" in page  # settings that differ from the defaults
    assert "splits sha256" in page and metrics["splits_sha256"][:16] in page


def test_full_run_report_has_no_validation_parts(optdigits_dir, tmp_path):
    out = tmp_path / "full"
    assert train.main(["--full", "--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 0
    page = (out / "report.html").read_text()
    assert "no validation rows" in page
    assert "there are no out-of-fold predictions" in page
    assert not (out / "evaluation.json").exists()
    for absent in ("roc.svg", "confusion.svg", "misclassified.svg", "per_class_f1.svg"):
        assert not (out / absent).exists()
    assert [name for name, _ in inline_charts(page)] == ["training_curves.svg", "loss_curves.svg"]
    assert "<h2>Per class</h2>" not in page and "nan" not in page.lower()
    assert (out / "metrics.json").is_file()


def test_no_plots_still_writes_tables(optdigits_dir, tmp_path):
    out = tmp_path / "plain"
    assert (
        kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), "--no-plots", *FAST]) == 0
    )
    page = (out / "report.html").read_text()
    assert not list(out.glob("*.svg"))
    assert inline_charts(page) == [] and "<svg" not in page
    assert "Figures were turned off" in page and "<h2>Per class</h2>" in page
    assert (out / "evaluation.json").is_file()


def test_training_curves_with_folds_of_different_lengths(tmp_path):
    """Early stopping ends folds at different epochs; the mean uses the folds still running."""
    path = plot_training_curves(
        [[1.0, 0.5, 0.4], [1.2, 0.6]],
        [[0.9, 0.6, 0.5], [1.0, 0.7]],
        [[0.5, 0.8, 0.9], [0.4, 0.7]],
        [[0.6, 0.8, 0.85], [0.5, 0.75]],
        tmp_path / "curves.svg",
        "title",
    )
    root, marks = parsed(path.read_text())
    tips = [e.findtext(f"{SVG}title") for e in marks]
    # per panel and split: two folds thin, the mean bold, the band
    assert tips.count("fold 1 validation") == 2 and tips.count("validation (mean of 2)") == 2
    means = [e.get("d") for e in marks if e.findtext(f"{SVG}title") == "train (mean of 2)"]
    # epoch 3 is the mean of the one fold that reached it: three points, no gap
    assert [d.count("L") for d in means] == [2, 2] and all(d.count("M") == 1 for d in means)
    alone = plot_training_curves([[1.0, 0.5]], [[]], [[0.5, 0.8]], [[]], tmp_path / "full.svg")
    _, marks = parsed(alone.read_text())
    assert not [e for e in marks if "validation" in (e.findtext(f"{SVG}title") or "")]


def test_misclassified_grid_without_mistakes_and_with_wrong_images(tmp_path, optdigits_dir):
    images = np.zeros((3, 1, 8, 8), dtype=np.uint8)
    path = plot_misclassified(
        images, [0, 1, 2], [1, 2, 3], [1, 2, 3], [0.9, 0.8, 0.7], tmp_path / "none.svg"
    )
    root, marks = parsed(path.read_text())
    assert marks == [] and "no misclassified rows" in path.read_text()

    config = RunConfig(data_dir=str(optdigits_dir), epochs=1, quiet=True, verify=False, threads=1)
    dataset = load_for_config(config)
    result = run_kfold(dataset, config)
    with pytest.raises(
        DataError,
        match="10 images given for the misclassified grid but the predictions refer to row 179",
    ):
        write_final(result, tmp_path / "run", images=dataset.images[:10])


def wait_for_report(out, timeout=300):
    """Seconds until report.log is gone (the background report done), failing on its error."""
    started = time.monotonic()
    while (out / "report.log").exists():
        log = (out / "report.log").read_text()
        if "could not be drawn" in log or "Traceback" in log:
            pytest.fail(log)
        assert time.monotonic() - started < timeout, log
        time.sleep(0.1)
    return time.monotonic() - started


def test_background_report_arrives_after_the_metrics(optdigits_dir, tmp_path):
    """At a terminal (here forced with $DIGITCNN_REPORT) the CLI returns once metrics.json is
    written and says where the report will appear; a background process draws it."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), report.REPORT_ENV: "background"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--data-dir",
            str(optdigits_dir),
            "--out",
            str(out),
            *FAST[:-1],
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.json").is_file()
    assert f"being drawn in the background into {out} (report.log there until done)" in done.stdout
    wait_for_report(out)
    page = (out / "report.html").read_text()
    # the same figures as a report drawn in the foreground, the grid of mistakes included
    assert [name for name, _ in inline_charts(page)] == list(FIGURE_CAPTIONS)
    metrics = json.loads((out / "metrics.json").read_text())
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["pooled"]["confusion"] == metrics["confusion"]
    assert f"{100 * metrics['accuracy']:.2f}%" in page
    assert not list(out.glob(".*.tmp"))


def test_background_report_failure_keeps_metrics_and_says_why(optdigits_dir, tmp_path):
    config = RunConfig(
        data_dir=str(optdigits_dir), epochs=1, quiet=True, verify=False, threads=1, folds=2
    )
    dataset = load_for_config(config)
    result = run_kfold(dataset, config)
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.html").mkdir()  # report.html cannot be written: drawing must fail
    process = report.start_report(result, out, result.out_of_fold(), images=dataset.images)
    assert process.wait(timeout=300) != 0
    log = (out / "report.log").read_text()
    assert f"digitcnn.reporting.report: the report of {out} could not be drawn" in log
    assert "metrics.json and the other results are complete" in log
    assert (out / "confusion.svg").is_file()  # figures drawn before the failure are whole


def test_report_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv(report.REPORT_ENV, "wait")
    assert report.report_in_background() is False
    monkeypatch.setenv(report.REPORT_ENV, "background")
    assert report.report_in_background() is True
    monkeypatch.setenv(report.REPORT_ENV, "later")
    with pytest.raises(
        ConfigError,
        match=r"\$DIGITCNN_REPORT='later': use 'background' or "
        r"'wait', or unset it",
    ):
        report.report_in_background()
    monkeypatch.delenv(report.REPORT_ENV)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a pipe or a file: not a terminal
    assert report.report_in_background() is False


def test_a_report_imports_no_plotting_library(optdigits_dir, tmp_path):
    """The figures are SVG text: a run that draws its whole report (as a sweep's cell does)
    never imports matplotlib or seaborn."""
    out = tmp_path / "run"
    probe = (
        "import sys\nfrom digitcnn import kfold\n"
        f"code = kfold.main(['--data-dir', {str(optdigits_dir)!r}, '--out', {str(out)!r}, "
        f"*{FAST!r}])\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'seaborn'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, check=True
    )
    assert done.stdout.split("\n")[-2] == "0 []", done.stdout + done.stderr
    assert len(list(out.glob("*.svg"))) == 7
