"""``python -m digitcnn.sweep``: runs :func:`digitcnn.sweep.cli.main`."""
from digitcnn.sweep.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
