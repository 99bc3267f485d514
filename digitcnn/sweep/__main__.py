"""``python -m digitcnn.sweep``: runs :func:`digitcnn.commands.sweep.main`."""

from digitcnn.commands.sweep import main
from digitcnn.errors import exit_cli

if __name__ == "__main__":
    exit_cli(main())
