"""``python -m digitcnn.sweep``: runs :func:`digitcnn.sweep.cli.main`."""
from digitcnn.errors import exit_cli
from digitcnn.sweep.cli import main

if __name__ == "__main__":
    exit_cli(main())
