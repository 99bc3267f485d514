"""``python -m digitcnn.compare``: is one recipe better than another, fold by fold?

Pairs two sides' per-fold accuracies (several seeds of one recipe are averaged fold by fold;
runs made on different folds are refused) and gives the corrected resampled t-test
(:func:`digitcnn.comparison.compare_runs`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from digitcnn._io import write_json
from digitcnn.comparison import compare_runs, format_comparison
from digitcnn.errors import cli_entry

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
    parser.add_argument("--out", default=None, help="also write the comparison to this JSON")
    args = parser.parse_args(argv)
    comparison = compare_runs(args.runs, args.against)
    if args.out:
        write_json(args.out, comparison)
    print(format_comparison(comparison))
    return 0
