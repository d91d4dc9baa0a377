"""Registries of dataset formats: a DataModule finds a format by its config name here.

Each data kind (point clouds, LiDAR sweeps, caption data) keeps one :class:`Registry`; a format
module registers itself with that kind's decorator, so adding a format is one new module (plus
its ``conf/data`` yaml) and no edit to the DataModule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F")


def _one_of(names: tuple[str, ...]) -> str:
    return f"one of {names}"


class Registry(Generic[F]):
    """Formats by name, in registration order.

    ``choices`` words the registered names in the "unknown dataset" error
    (``dataset must be <choices>, got 'name'``).
    """

    def __init__(self, kind: str, choices: Callable[[tuple[str, ...]], str] = _one_of) -> None:
        self.kind = kind
        self._choices = choices
        self._formats: dict[str, F] = {}

    def add(self, name: str, fmt: F) -> F:
        if name in self._formats:
            raise ValueError(f"{self.kind} dataset {name!r} is already registered")
        self._formats[name] = fmt
        return fmt

    def decorator(self, name: str, fmt_type: Callable[..., F], **fields: Any) -> Callable:
        """A decorator registering its function as ``fmt_type(name, function, **fields)``."""

        def register(make: Callable) -> Callable:
            self.add(name, fmt_type(name, make, **fields))
            return make

        return register

    def module_getattr(self, module: str) -> Callable[[str], tuple[str, ...]]:
        """A module ``__getattr__`` serving ``DATASETS`` (the registered names, as the former
        constant of that module)."""

        def __getattr__(name: str) -> tuple[str, ...]:
            if name == "DATASETS":
                return self.names()
            raise AttributeError(f"module {module!r} has no attribute {name!r}")

        return __getattr__

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests registering a format for a while)."""
        self._formats.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._formats)

    def check(self, name: str) -> str:
        """``name`` if registered, else ValueError listing the registered names."""
        if name not in self._formats:
            raise ValueError(f"dataset must be {self._choices(self.names())}, got {name!r}")
        return name

    def __getitem__(self, name: str) -> F:
        return self._formats[self.check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._formats
