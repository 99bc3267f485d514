"""``python -m digitcnn.train``: one model on a holdout split, or on every row with ``--full``.

S1 trained on a 90/10 split and S3 on 70/30 (``--val-fraction 0.3``); both are one "fold" of
the same runner that does K-fold, so a single run writes the same results files, and the
trained model (``folds/fold0/model.safetensors`` + ``.json``) is kept for
``python -m digitcnn.predict``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .config import config_from_args
from .errors import cli_entry
from .kfold import default_out_dir, finish_run, load_quietly, run_kfold

__all__ = ["main"]

TRAIN_DEFAULTS = {"cv": "holdout", "save_models": True}


@cli_entry("digitcnn.train")
def main(argv: Sequence[str] | None = None) -> int:
    config, extras = config_from_args(
        argv, "python -m digitcnn.train",
        "Train one model on a stratified holdout split (--val-fraction; S1 0.1, S3 0.3) or on "
        "every row (--full), and save it.",
        exclude=("folds",), defaults=TRAIN_DEFAULTS,
        extra_arguments=[(("--full",), {"action": "store_true",
                                        "help": "train on every row, without validation"})])
    if extras.full:
        config = config.replace(cv="full")
    dataset = load_quietly(config, "digitcnn.train")
    out = Path(config.out) if config.out else default_out_dir(config)
    finish_run(run_kfold(dataset, config, out_dir=out), out, config, dataset,
               "model and results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
