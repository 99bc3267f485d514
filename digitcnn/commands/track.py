"""``python -m digitcnn.track``: log a finished run folder to TensorBoard or MLflow afterwards.

Reads the folder's records (settings, each fold's history, the pooled metrics, the files)
and logs them as ``--track`` would have during the run: the same values, the same layout
(:mod:`digitcnn.tracking`). A run already logged to that MLflow store is completed, not
repeated; its TensorBoard folder is written anew.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from digitcnn.config import TRACKERS
from digitcnn.errors import cli_entry

__all__ = ["main"]


@cli_entry("digitcnn.track")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m digitcnn.track",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folder", metavar="DIR", help="a finished run's folder (its --out)")
    parser.add_argument(
        "--to",
        action="append",
        choices=TRACKERS,
        required=True,
        help="where to log it (repeat for both)",
    )
    parser.add_argument(
        "--mlflow-uri",
        default=None,
        help="MLflow tracking URI (default: the run's own --mlflow-uri, then "
        "$MLFLOW_TRACKING_URI, then sqlite:///mlflow.db in the current folder)",
    )
    parser.add_argument(
        "--experiment", default=None, help="MLflow experiment (default: the run's own)"
    )
    parser.add_argument(
        "--after-report",
        action="store_true",
        help="first wait for the report being drawn in the background (how a run at a "
        "terminal logs its files to MLflow); then remove DIR/tracking.log",
    )
    args = parser.parse_args(argv)
    # why here: the tracking backends import their libraries and the run store NumPy
    from digitcnn.tracking.runs import TRACKING_LOG, track_folder, wait_for_report

    if args.after_report:
        wait_for_report(args.folder)
    track_folder(args.folder, list(dict.fromkeys(args.to)), args.mlflow_uri, args.experiment)
    if args.after_report:
        (Path(args.folder) / TRACKING_LOG).unlink(missing_ok=True)
    print(f"{args.folder}: logged to {', '.join(dict.fromkeys(args.to))}")
    return 0
