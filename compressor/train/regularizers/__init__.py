"""Registry of training-time pruning methods: name -> regularizer class (one module per method).

``create("csgd", model, example_input, **hyperparameters)`` builds one by name; ``names()`` lists
them. Registration rejects duplicates.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from compressor.errors import UsageError
from compressor.train.regularizers.base import Regularizer

_REGISTRY: dict[str, type[Regularizer]] = {}
T = TypeVar("T", bound=type[Regularizer])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a regularizer available under ``name``."""

    def deco(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"regularizer {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Regularizer]:
    if name not in _REGISTRY:
        raise UsageError(f"unknown regularizer {name!r}; choose one of: {', '.join(names())}")
    return _REGISTRY[name]


def create(name: str, model: Any, example_input: Any = None, **kwargs: Any) -> Regularizer:
    return get(name)(model, example_input, **kwargs)


# Import the method modules so they register themselves.
from compressor.train.regularizers import (  # noqa: E402,F401
    asrfp,
    csgd,
    dsa,
    gates,
    greg1,
    greg2,
    group_lasso,
    increg,
    l1_norm,
    orthoreg,
    sfp,
    slimming,
    srfp,
)
from compressor.train.regularizers.asrfp import ASRFP  # noqa: E402
from compressor.train.regularizers.csgd import CentripetalSGD  # noqa: E402
from compressor.train.regularizers.dsa import DSA  # noqa: E402
from compressor.train.regularizers.gates import GatedBatchNorm, GroupGates  # noqa: E402
from compressor.train.regularizers.greg1 import GReg1  # noqa: E402
from compressor.train.regularizers.greg2 import GReg2  # noqa: E402
from compressor.train.regularizers.group_lasso import GroupLasso  # noqa: E402
from compressor.train.regularizers.increg import IncReg  # noqa: E402
from compressor.train.regularizers.l1_norm import L1Norm  # noqa: E402
from compressor.train.regularizers.orthoreg import OrthoReg  # noqa: E402
from compressor.train.regularizers.sfp import SoftFilterPruning  # noqa: E402
from compressor.train.regularizers.slimming import NetworkSlimming  # noqa: E402
from compressor.train.regularizers.srfp import SRFP  # noqa: E402

__all__ = [
    "ASRFP", "CentripetalSGD", "DSA", "GReg1", "GReg2", "GatedBatchNorm", "GroupGates", "GroupLasso", "IncReg",
    "L1Norm", "NetworkSlimming", "OrthoReg", "Regularizer", "SRFP", "SoftFilterPruning",
    "create", "get", "names", "register",
]
