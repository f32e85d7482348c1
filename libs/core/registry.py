"""Name -> class registries for pluggable parts (datasets, backbones, necks, ...)."""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterable, TypeVar

T = TypeVar("T")


class Registry:
    """A mapping from a config name to a class (or factory function).

    >>> BACKBONES = Registry("backbone")
    >>> @BACKBONES.register("convTransformer")
    ... class ConvTransformerBackbone: ...
    >>> BACKBONES.get("convTransformer")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name may be registered once."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise KeyError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable:
        """Return the entry for ``name``; an unknown name lists the registered ones."""
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise KeyError(f"unknown {self.kind} '{name}'{hint} registered {self.kind}s: {known}")
        return self._entries[name]

    def build(self, name: str, *args, **kwargs):
        """Instantiate the entry registered as ``name``."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> Iterable[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
