"""torch Dataset/DataLoader helpers: layout, normalisation, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compressor.data import datasets as ds  # noqa: E402
from compressor.data.torch_data import (  # noqa: E402
    NORMALIZATION,
    ArrayDataset,
    Normalization,
    make_dataset,
    make_loader,
    random_crop_flip,
)
from compressor.errors import UsageError  # noqa: E402


def test_grayscale_images_become_normalised_chw_tensors():
    images = np.full((4, 28, 28), 255, dtype=np.uint8)
    data = ArrayDataset(images, np.arange(4), Normalization((0.5,), (0.25,)))
    x, y = data[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 2.0)), "(1 - 0.5) / 0.25"
    assert y.item() == 2 and y.dtype == torch.int64


def test_channel_last_color_images_become_chw():
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    images[..., 1] = 255  # green
    x, _ = ArrayDataset(images, np.zeros(2))[0]
    assert x.shape == (3, 32, 32)
    assert x[1].eq(1).all() and x[0].eq(0).all() and x[2].eq(0).all()


def test_cifar_augmentation_keeps_shape_and_content_is_a_shifted_crop():
    torch.manual_seed(0)
    img = torch.rand(3, 32, 32)
    outs = [random_crop_flip(img) for _ in range(20)]
    assert all(o.shape == img.shape for o in outs)
    assert any(not torch.equal(o, img) for o in outs), "20 random crops should not all be the identity"
    g = torch.Generator().manual_seed(1)
    a = random_crop_flip(img, generator=g)
    g.manual_seed(1)
    assert torch.equal(a, random_crop_flip(img, generator=g)), "same seed, same crop"


def test_pad_zero_crop_is_identity_or_flip():
    img = torch.arange(12.0).view(1, 3, 4)
    out = random_crop_flip(img, pad=0)
    assert torch.equal(out, img) or torch.equal(out, img.flip(-1))


def test_loader_batches_and_seeded_shuffle():
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(10))
    first = [y.tolist() for _, y in make_loader(data, 4, shuffle=True, seed=3)]
    again = [y.tolist() for _, y in make_loader(data, 4, shuffle=True, seed=3)]
    assert first == again and sorted(sum(first, [])) == list(range(10))
    x, _ = next(iter(make_loader(data, 4)))
    assert x.shape == (4, 1, 28, 28)


def test_bad_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="uint8"):
        ArrayDataset(np.zeros((2, 8, 8), np.float32), np.zeros(2))
    with pytest.raises(UsageError, match="normalization has 3 channels"):
        ArrayDataset(np.zeros((2, 8, 8), np.uint8), np.zeros(2), NORMALIZATION["cifar10"])
    with pytest.raises(UsageError, match="needs root="):
        make_dataset("cifar10")
    with pytest.raises(UsageError, match="unknown dataset"):
        make_dataset("svhn")


@pytest.mark.skipif(not ds.is_available("fashion-mnist"), reason="Fashion-MNIST is not installed (make data)")
def test_real_fashion_mnist_is_roughly_standardised():
    data = make_dataset("fashion-mnist", "test", limit=2000)
    assert data.augment == "none"
    x = torch.stack([data[i][0] for i in range(0, 2000, 4)])
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
