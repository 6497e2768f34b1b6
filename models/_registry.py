"""The model registry: names -> constructor functions, with duplicate names rejected.

Modelled on timm's ``_registry``: each family module decorates its public constructors with
``@register_model``; ``create_model(name, **kwargs)`` builds one; ``list_models()`` enumerates them
(tests parametrize over it). The registry object is a plain class so tests can make private ones.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch.nn as nn

from compressor.errors import UsageError

ModelFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered constructor and where it came from."""

    name: str
    fn: ModelFn
    family: str  # the defining module's short name, e.g. "resnet_cifar"


class UnknownModelError(UsageError, KeyError):
    """``create_model`` was asked for a name that nobody registered."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0]) if self.args else ""


@dataclass
class ModelRegistry:
    """Maps model names to constructor functions; a name can be registered once."""

    _entries: dict[str, ModelEntry] = field(default_factory=dict)

    def register(self, fn: ModelFn, name: str | None = None) -> ModelFn:
        key = name or fn.__name__
        if key in self._entries:
            prev = self._entries[key]
            raise ValueError(
                f"model name {key!r} is already registered by {prev.fn.__module__}.{prev.fn.__qualname__}; "
                "pick another name"
            )
        family = fn.__module__.rsplit(".", 1)[-1]
        self._entries[key] = ModelEntry(name=key, fn=fn, family=family)
        return fn

    def create(self, name: str, **kwargs) -> nn.Module:
        try:
            entry = self._entries[name]
        except KeyError:
            raise UnknownModelError(
                f"unknown model {name!r}; available: {', '.join(sorted(self._entries))}"
            ) from None
        return entry.fn(**kwargs)

    def names(self, pattern: str | None = None, family: str | None = None) -> list[str]:
        return sorted(
            e.name
            for e in self._entries.values()
            if (pattern is None or fnmatch.fnmatchcase(e.name, pattern))
            and (family is None or e.family == family)
        )

    def entry(self, name: str) -> ModelEntry:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


_REGISTRY = ModelRegistry()


def register_model(fn: ModelFn | None = None, *, name: str | None = None):
    """Decorator: register ``fn`` under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with a name (``@register_model(name="x")``).
    Raises ``ValueError`` if the name is taken.
    """
    if fn is None:
        return lambda f: _REGISTRY.register(f, name)
    return _REGISTRY.register(fn, name)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; kwargs go to its constructor.

    Every model accepts ``num_classes``, ``in_channels``, ``input_size`` and ``width``.
    """
    return _REGISTRY.create(name, **kwargs)


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally filtered by glob ``pattern`` or ``family``."""
    return _REGISTRY.names(pattern, family)


def is_model(name: str) -> bool:
    return name in _REGISTRY
