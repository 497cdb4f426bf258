"""The registry of named spaces (``register_space`` / ``get_space`` / ``list_spaces``)."""

from __future__ import annotations

from collections.abc import Callable

from ._space import SearchSpace

_FACTORIES: dict[str, Callable[[], SearchSpace]] = {}


class UnknownSpaceError(KeyError):
    """A space name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def register_space(factory: Callable[[], SearchSpace]) -> Callable[[], SearchSpace]:
    """Decorator: register a zero-argument function returning a space, under the space's name."""
    space = factory()
    if space.name in _FACTORIES:
        raise ValueError(f"space {space.name!r} is already registered")
    _FACTORIES[space.name] = factory
    return factory


def list_spaces() -> list[str]:
    """Registered space names, sorted."""
    return sorted(_FACTORIES)


def get_space(name: str | SearchSpace) -> SearchSpace:
    """The registered space called ``name`` (a space passes through unchanged)."""
    if isinstance(name, SearchSpace):
        return name
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise UnknownSpaceError(f"unknown space {name!r}; registered: {', '.join(list_spaces())}") from None
