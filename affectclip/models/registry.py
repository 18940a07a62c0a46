"""Name -> constructor registries for towers and temporal heads.

One registry per kind of component, filled by decorators where the component is defined, so that configs (JSON or
YAML) can name a component by a string and the factory never needs an if/else chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn


class Registry:
    """A named table of constructors with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = fn
            return fn

        return deco

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        return self.get(name)(**kwargs)

    def get(self, name: str) -> Callable[..., nn.Module]:
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; available: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


IMAGE_TOWERS = Registry("image tower")
TEXT_TOWERS = Registry("text tower")
TEMPORAL_HEADS = Registry("temporal head")
