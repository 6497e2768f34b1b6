"""Reference PyTorch architectures for compression experiments, behind a name registry.

    >>> import models
    >>> models.list_models("resnet*")
    ['resnet20', 'resnet32', 'resnet56']
    >>> net = models.create_model("resnet20", in_channels=1, num_classes=10, input_size=28)

Every constructor accepts ``num_classes``, ``in_channels``, ``input_size`` (side length in
pixels; 32 for CIFAR, 28 for MNIST-style) and ``width`` (channel multiplier). Importing this
package needs torch; ``models.export`` additionally needs onnx (and onnxscript for dynamo).
"""

from __future__ import annotations

from . import densenet, mobilenet, resnet_cifar, vgg  # noqa: F401  (registers the models)
from ._registry import ModelEntry, ModelRegistry, UnknownModelError, create_model, is_model, list_models, register_model

__all__ = [
    "ModelEntry",
    "ModelRegistry",
    "UnknownModelError",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
]
