"""The run store: everything about a run folder, in one place.

* :mod:`~digitcnn.runstore.folder`: what a folder holds, which run may write it, its lock,
  and how a run claims it (``--out``, ``--resume``, ``--overwrite``);
* :mod:`~digitcnn.runstore.files`: the records a run writes, atomically (``config.json``,
  ``splits.json``, each fold, ``oof.npz``, ``folds.csv``, ``metrics.json``, then the report),
  and reads back (the folds a resumed run finished);
* :mod:`~digitcnn.runstore.resume`: a resumed run's stored settings.

The results objects (:mod:`digitcnn.results`) know nothing of it: the store reads and writes
them. The names are imported lazily: the command line imports the light folder and resume
modules at its start, the record writers (NumPy, the report) only when a run writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from digitcnn.runstore.files import finished_folds as finished_folds
    from digitcnn.runstore.files import read_fold as read_fold
    from digitcnn.runstore.files import save_run as save_run
    from digitcnn.runstore.files import write_final as write_final
    from digitcnn.runstore.files import write_fold as write_fold
    from digitcnn.runstore.files import write_run_start as write_run_start
    from digitcnn.runstore.folder import check_out_dir as check_out_dir
    from digitcnn.runstore.folder import claim_out_dir as claim_out_dir
    from digitcnn.runstore.folder import inspect_folder as inspect_folder
    from digitcnn.runstore.resume import resume_config as resume_config

_EXPORTS = {
    "save_run": "files",
    "write_run_start": "files",
    "write_fold": "files",
    "read_fold": "files",
    "write_final": "files",
    "finished_folds": "files",
    "check_out_dir": "folder",
    "claim_out_dir": "folder",
    "inspect_folder": "folder",
    "resume_config": "resume",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
