"""``python -m digitcnn.predict``: see :mod:`digitcnn.commands.predict`."""

from digitcnn.commands.predict import main
from digitcnn.errors import exit_cli

__all__ = ["main"]

if __name__ == "__main__":
    exit_cli(main())
