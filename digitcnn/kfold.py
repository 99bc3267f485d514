"""``python -m digitcnn.kfold``: see :mod:`digitcnn.commands.kfold`."""

from digitcnn.commands.kfold import main
from digitcnn.errors import exit_cli

__all__ = ["main"]

if __name__ == "__main__":
    exit_cli(main())
