"""Offline datasets as numpy arrays (no torch needed): Fashion-MNIST, MNIST, CIFAR-10/100.

Nothing is downloaded at run time; see ``compressor.data.datasets`` for where data is looked
for and how to install it (``make data``). ``compressor.data.torch_data`` adds optional torch
``Dataset``/``DataLoader`` helpers and imports torch only when used.
"""

from __future__ import annotations

from .datasets import (
    CIFAR_LAYOUTS,
    DATA_ENV_VAR,
    FASHION_MNIST,
    IDX_DATASETS,
    MNIST,
    ChecksumError,
    DatasetNotFoundError,
    IdxDataset,
    IdxFile,
    candidate_dirs,
    cifar_classes,
    default_data_roots,
    is_available,
    load_cifar,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
    locate,
)
from .idx import IdxFormatError, encode_idx, parse_idx, read_idx, write_idx

__all__ = [
    "CIFAR_LAYOUTS",
    "DATA_ENV_VAR",
    "FASHION_MNIST",
    "IDX_DATASETS",
    "MNIST",
    "ChecksumError",
    "DatasetNotFoundError",
    "IdxDataset",
    "IdxFile",
    "IdxFormatError",
    "candidate_dirs",
    "cifar_classes",
    "default_data_roots",
    "encode_idx",
    "is_available",
    "load_cifar",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
    "locate",
    "parse_idx",
    "read_idx",
    "write_idx",
]
