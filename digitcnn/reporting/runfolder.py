"""How a run's results are written to its folder; for now the end of a CLI run
(:func:`finish_run`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from digitcnn.config import RunConfig
from digitcnn.results import KFoldResult

if TYPE_CHECKING:
    from digitcnn.datasets.base import DigitDataset

__all__ = ["finish_run"]


def finish_run(result: KFoldResult, out: Path, config: RunConfig, dataset: DigitDataset,
               what: str) -> None:
    """Write the final files of a CLI run and, unless quiet, print its summary.

    At a terminal the report (evaluation.json, the plots, report.html) is drawn in the
    background after metrics.json, so the person gets the prompt back at once; elsewhere (or
    with ``$DIGITCNN_REPORT``) see :func:`digitcnn.reporting.report.report_in_background`."""
    from digitcnn.reporting.report import REPORT_LOG, report_in_background

    background = report_in_background()
    result.write_final(out, plots=config.plots, images=dataset.images, background=background)
    if not config.quiet:
        print(result.summary())
        print(f"{what} written to {out}")
        if background:
            print(f"report.html{' and the plots' if config.plots else ''}: being drawn in the "
                  f"background into {out} ({REPORT_LOG} there until done)")
