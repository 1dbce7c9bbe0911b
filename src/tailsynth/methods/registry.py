"""The one method registry: ``METHODS.get("logex")`` is a :class:`~tailsynth.methods.base.Method` instance."""
from __future__ import annotations

from ..errors import UnknownNameError
from ..registry import Registry
from .base import Method, SyntheticGenerator

METHODS: Registry[Method] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    METHODS.register(cls.name)(cls())
    return cls


def generator_named(name: str) -> SyntheticGenerator:
    """The synthetic generator called ``name`` (the ``synthesis.params`` key), from the method that owns it."""
    found = {m.generator.name: m.generator for m in (METHODS.get(n) for n in METHODS.names()) if m.generator}
    if name not in found:
        raise UnknownNameError(f"unknown synthetic generator {name!r}; valid generator names: "
                               f"{', '.join(sorted(found))}")
    return found[name]
