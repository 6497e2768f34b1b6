"""Optional torch ``Dataset``/``DataLoader`` helpers over the numpy loaders.

Needs torch (the ``[train]`` extra); ``compressor.data`` itself never imports this module.
Images become float32 ``[C, H, W]`` tensors scaled to [0, 1] and normalised per channel.
Training augmentation is the standard CIFAR recipe (random 32x32 crop from the 4-pixel
zero-padded image, then a horizontal flip with probability 1/2); MNIST-style data is not
augmented. Randomness comes from torch's global generator, which ``DataLoader`` seeds per
worker, so ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from compressor.errors import UsageError

try:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise UsageError("compressor.data.torch_data needs torch: pip install 'compressor[train]'") from exc

from .datasets import PathLike, Split, load_cifar, load_fashion_mnist, load_mnist

Augment = Literal["cifar", "none"]


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation of pixel values scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# Training-set statistics (MNIST/Fashion-MNIST measured on the installed files).
NORMALIZATION: dict[str, Normalization] = {
    "mnist": Normalization((0.1307,), (0.3081,)),
    "fashion-mnist": Normalization((0.2860,), (0.3530,)),
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASET_NAMES = tuple(NORMALIZATION)


class ArrayDataset(Dataset):
    """Images ``uint8 [N, H, W]`` or ``[N, H, W, C]`` and int labels as a torch Dataset.

    ``__getitem__`` returns ``(float32 [C, H, W] normalised, int64 scalar label)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        normalization: Normalization | None = None,
        augment: Augment = "none",
        pad: int = 4,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise UsageError(f"images must be uint8 [N, H, W] or [N, H, W, C], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise UsageError(f"{len(images)} images but {len(labels)} labels")
        if augment not in ("cifar", "none"):
            raise UsageError(f"augment must be 'cifar' or 'none', got {augment!r}")
        chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(np.ascontiguousarray(chw))  # uint8 [N, C, H, W]
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        channels = self.images.shape[1]
        norm = normalization or Normalization((0.0,) * channels, (1.0,) * channels)
        if len(norm.mean) != channels or len(norm.std) != channels:
            raise UsageError(f"normalization has {len(norm.mean)} channels, images have {channels}")
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.pad = pad

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float().div_(255.0)
        if self.augment == "cifar":
            x = random_crop_flip(x, self.pad)
        return (x - self.mean) / self.std, self.labels[index]


def random_crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ``H x W`` crop of the zero-padded ``[C, H, W]`` image, then a random horizontal flip."""
    _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top, left, flip = (int(v) for v in torch.randint(0, 2 * pad + 1, (3,), generator=generator))
    out = padded[:, top : top + h, left : left + w]
    return out.flip(-1) if flip % 2 else out


def make_dataset(
    name: str,
    split: Split = "train",
    *,
    root: PathLike | None = None,
    augment: Augment | None = None,
    search_paths: Sequence[PathLike] | None = None,
    limit: int | None = None,
    verify: bool = True,
) -> ArrayDataset:
    """A normalised torch Dataset for ``mnist``, ``fashion-mnist``, ``cifar10`` or ``cifar100``.

    ``augment`` defaults to the CIFAR recipe for CIFAR training sets and to none otherwise.
    ``root`` is required for CIFAR (user-supplied files); ``limit`` keeps the first N samples.
    """
    if name not in NORMALIZATION:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    if name.startswith("cifar"):
        if root is None:
            raise UsageError(f"{name} needs root=, the folder holding the extracted python release")
        images, labels = load_cifar(root, int(name[5:]), split, verify=verify)
        default_augment: Augment = "cifar" if split == "train" else "none"
    else:
        loader = load_mnist if name == "mnist" else load_fashion_mnist
        images, labels = loader(split, search_paths=search_paths, verify=verify)
        default_augment = "none"
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ArrayDataset(images, labels, NORMALIZATION[name], augment or default_augment)


def make_loader(
    dataset: ArrayDataset,
    batch_size: int = 128,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset``; ``seed`` fixes the shuffling order."""
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
    )
