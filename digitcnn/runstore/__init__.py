"""The run store: everything about a run folder, in one place.

* :mod:`~digitcnn.runstore.folder`: what a folder holds, which run may write it, its lock,
  and how a run claims it (``--out``, ``--resume``, ``--overwrite``);
* :mod:`~digitcnn.runstore.files`: the records a run writes, atomically (``config.json``,
  ``splits.json``, each fold, ``oof.npz``, ``folds.csv``, ``metrics.json``, then the report)
  and reads back;
* :mod:`~digitcnn.runstore.resume`: a resumed run's stored settings and finished folds.

The results objects (:mod:`digitcnn.results`) know nothing of it: the store reads and writes
them.
"""

from digitcnn.runstore.files import read_fold, save_run, write_final, write_fold, write_run_start
from digitcnn.runstore.folder import check_out_dir, claim_out_dir, inspect_folder
from digitcnn.runstore.resume import finished_folds, resume_config

__all__ = [
    "save_run",
    "write_run_start",
    "write_fold",
    "read_fold",
    "write_final",
    "check_out_dir",
    "claim_out_dir",
    "inspect_folder",
    "resume_config",
    "finished_folds",
]
