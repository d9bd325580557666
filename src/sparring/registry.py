"""A small name → class registry (timm-style) so contract tests reach every component.

Domains register themselves. The core never imports ``sparring.points``, ``sparring.recsys`` or
``sparring.language``: a registry that is asked for a name it does not hold, or for all its names, first imports
every domain package once (:data:`DOMAINS`, then any package installed under the ``sparring.domains`` entry-point
group), and the domains' modules register their models, attacks, objectives, threat models, data sources, tasks
and report views as they are imported. So ``build_model("pointnet")`` works without importing the point-cloud
package first, and importing the core loads no domain.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from sparring.errors import ConfigError

T = TypeVar("T")

#: The modules that register components when imported, loaded on the first lookup a registry cannot answer: the
#: domain packages shipped with sparring, and the core's own run task (so that no core module imports another
#: merely to register it).
DOMAINS = ("sparring.classification", "sparring.points", "sparring.recsys", "sparring.language")
#: Third-party domains: ``[project.entry-points."sparring.domains"] mydomain = "mypackage.sparring_domain"``.
ENTRY_POINT_GROUP = "sparring.domains"

_domains_loaded = False


def load_domains() -> None:
    """Import every domain once so that its components are registered (idempotent, cheap after the first call)."""
    global _domains_loaded
    if _domains_loaded:
        return
    _domains_loaded = True  # first: a domain's own imports may look a name up while it loads
    for name in DOMAINS:
        importlib.import_module(name)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(entry.value)


class Registry(Generic[T]):
    """Maps a short name to a class or factory; ``register`` is a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            load_domains()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def names(self) -> list[str]:
        load_domains()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_domains()
        return name in self._entries
