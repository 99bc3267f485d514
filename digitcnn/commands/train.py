"""``python -m digitcnn.train``: one model on a holdout split, or on every row with ``--full``.

S1 trained on a 90/10 split and S3 on 70/30 (``--val-fraction 0.3``); both are one "fold" of
the same runner that does K-fold, so a single run writes the same results files, and the
trained model (``folds/fold0/model.safetensors`` + ``.json``) is kept for
``python -m digitcnn.predict``.
"""

from __future__ import annotations

from collections.abc import Sequence

from digitcnn.commands._flags import RUN_FLAGS, resumed_config
from digitcnn.commands.kfold import run_command
from digitcnn.config import Argument, config_from_args
from digitcnn.errors import cli_entry

__all__ = ["main"]

TRAIN_DEFAULTS = {"cv": "holdout", "save_models": True}


@cli_entry("digitcnn.train")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.train``: one model, trained and saved."""
    prog = "python -m digitcnn.train"
    arguments: list[Argument] = [
        (("--full",), {"action": "store_true", "help": "train on every row, without validation"}),
        *RUN_FLAGS,
    ]
    config, extras = config_from_args(
        argv,
        prog,
        "Train one model on a stratified holdout split (--val-fraction; S1 0.1, S3 0.3) or on "
        "every row (--full), and save it.",
        exclude=("folds",),
        defaults=TRAIN_DEFAULTS,
        extra_arguments=arguments,
    )
    if extras.full:
        config = config.replace(cv="full")
    if extras.resume is not None:
        config = resumed_config(
            argv,
            prog,
            "digitcnn.train",
            extras.resume,
            extras.overwrite,
            exclude=("folds",),
            extra_arguments=arguments,
            given={"cv": "full"} if extras.full else None,
        )
    return run_command(
        config, "digitcnn.train", extras.resume is not None, extras.overwrite, "model and results"
    )
