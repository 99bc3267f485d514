"""``python -m digitcnn.compare``: is one recipe better than another, fold by fold?

Pairs two sides' per-fold accuracies (several seeds of one recipe are averaged fold by fold;
runs made on different folds are refused) and gives the corrected resampled t-test
(:func:`digitcnn.comparison.compare_runs`). With ``--repeated`` the k-th run of each side is
one repetition on its own folds (e.g. a fresh ``--random-state`` each): every repetition's
fold differences are pooled into the corrected repeated k-fold t-test
(:func:`digitcnn.comparison.compare_repeated`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from digitcnn._io import write_json
from digitcnn.comparison import (
    compare_repeated,
    compare_runs,
    format_comparison,
    format_repeated,
)
from digitcnn.errors import ConfigError, cli_entry

__all__ = ["main"]


@cli_entry("digitcnn.compare")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m digitcnn.compare",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "runs",
        nargs="+",
        help="run folders of the first side (seeds of one recipe are averaged fold by fold)",
    )
    parser.add_argument(
        "--against", nargs="+", required=True, help="run folders of the second side"
    )
    parser.add_argument(
        "--repeated",
        action="store_true",
        help="pair the k-th run of each side as one repetition on its own folds (each "
        "pair on the same folds) and pool the repetitions into the corrected repeated "
        "k-fold t-test",
    )
    parser.add_argument("--out", default=None, help="also write the comparison to this JSON")
    args = parser.parse_args(argv)
    if args.repeated:
        if len(args.runs) != len(args.against):
            raise ConfigError(
                f"--repeated pairs the runs in order: {len(args.runs)} run(s) against "
                f"{len(args.against)}; give each side one run per repetition"
            )
        comparison = compare_repeated(list(zip(args.runs, args.against)))
        text = format_repeated(comparison)
    else:
        comparison = compare_runs(args.runs, args.against)
        text = format_comparison(comparison)
    if args.out:
        write_json(args.out, comparison)
    print(text)
    return 0
