"""The one method registry: ``METHODS.get("logex")`` is a :class:`~tailsynth.methods.base.Method` instance; and the
command-line commands methods add (``COMMANDS``: factories the CLI calls with its experiment opener)."""
from __future__ import annotations

from typing import Any, Callable

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


# factory(open_graph) -> a click command or group; open_graph(config, overrides, runs, log) -> the experiment's
# stage graph (what `tailsynth run` would build), so a method's commands reuse and extend the same artifacts
COMMANDS: list[Callable[[Callable[..., Any]], Any]] = []


def register_command(factory: Callable[[Callable[..., Any]], Any]) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: a method package's command-line command (see ``COMMANDS``)."""
    COMMANDS.append(factory)
    return factory
