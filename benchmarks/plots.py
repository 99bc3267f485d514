"""The benchmark's figures (matplotlib, from benchmarks/requirements.txt, is imported inside
each function; digitcnn itself draws its figures as SVG without it)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_scaling"]


def plot_scaling(table: dict, path: Path) -> None:
    """``scaling.png``: training wall time against folds (one line per mode) and against rows,
    from the scaling case's ``table`` (``{"folds": [...], "rows": [...]}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in dict.fromkeys(r["mode"] for r in table["folds"]):
        points = [r for r in table["folds"] if r["mode"] == mode]
        left.plot([r["folds"] for r in points], [r["train_s"] for r in points], "o-", label=mode)
    left.set(
        xlabel="folds (S5 recipe, 10 epochs)",
        ylabel="training wall time (s)",
        title="time against folds",
    )
    left.legend()
    right.plot([r["rows"] for r in table["rows"]], [r["train_s"] for r in table["rows"]], "o-")
    right.set(xlabel="rows (4 folds)", ylabel="training wall time (s)", title="time against rows")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
