"""Dataset adapters: the :class:`DigitDataset` type and its registry, the UCI optdigits, MNIST
IDX, Kaggle CSV and image-folder readers, and the validated readers they share.

Modules, in import order (each imports only those above it):

- ``utils``: validated CSV readers, checksum checks, network timeouts (no dataset type);
- ``base``: :class:`DigitDataset`, the adapter registry, :func:`load`;
- ``idx``: the IDX format (MNIST's files), read and checked;
- ``preprocess``: one picture decoded and brought to MNIST's (or optdigits') form;
- ``uci``, ``mnist``, ``kaggle``, ``images``: the adapters, each registered under its name.

The adapters are imported here so that they are registered whichever part of the package is
imported first: ``from digitcnn.datasets.base import load`` runs this file before ``base``.
"""

from digitcnn.datasets._idx import parse_idx_images, parse_idx_labels
from digitcnn.datasets.base import (
    DigitDataset,
    list_datasets,
    load,
    register_dataset,
    resolve_data_dir,
)
from digitcnn.datasets.images import load_images
from digitcnn.datasets.kaggle import load_kaggle
from digitcnn.datasets.mnist import load_mnist
from digitcnn.datasets.preprocess import mnist_style, open_image, optdigits_images, optdigits_style
from digitcnn.datasets.uci import load_uci
from digitcnn.datasets.utils import read_first_line, read_int_csv

__all__ = [
    "DigitDataset",
    "list_datasets",
    "load",
    "register_dataset",
    "resolve_data_dir",
    "load_uci",
    "load_mnist",
    "load_kaggle",
    "load_images",
    "parse_idx_images",
    "parse_idx_labels",
    "mnist_style",
    "open_image",
    "optdigits_images",
    "optdigits_style",
    "read_first_line",
    "read_int_csv",
]
