"""Registries by name: ``@LOSSES.register("ldam")`` and ``LOSSES.get("ldam")``.

An unknown name raises :class:`~tailsynth.errors.UnknownNameError` that lists the valid names.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import TailsynthError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table for one kind of component (losses, scores, models, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise TailsynthError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid {self.kind} names: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
