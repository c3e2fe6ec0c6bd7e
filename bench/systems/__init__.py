"""One adapter per benchmarked system; imported lazily so that peers are optional."""

from __future__ import annotations

import importlib
from typing import Any

from ..harness import System

#: system name -> (module, class, config defaults)
SYSTEMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "absurd-orm-sqlite": ("absurd_orm_sys", "AbsurdOrmSystem", {"backend": "sqlite"}),
    "absurd-orm-pg": ("absurd_orm_sys", "AbsurdOrmSystem", {"backend": "postgresql"}),
    # The same with Engine(durable_commits=False): commits are not flushed to disk.
    "absurd-orm-sqlite-nosync": ("absurd_orm_sys", "AbsurdOrmSystem",
                                 {"backend": "sqlite", "durable": False}),
    "absurd-orm-pg-nosync": ("absurd_orm_sys", "AbsurdOrmSystem",
                             {"backend": "postgresql", "durable": False}),
    "absurd-sdk-pg": ("absurd_sdk_sys", "AbsurdSdkSystem", {}),
    "dbos-sqlite": ("dbos_sys", "DbosSystem", {"backend": "sqlite"}),
    "dbos-pg": ("dbos_sys", "DbosSystem", {"backend": "postgresql"}),
}

OURS = ("absurd-orm-sqlite", "absurd-orm-pg")
PEERS = ("absurd-sdk-pg", "dbos-sqlite", "dbos-pg")


def make_system(name: str, config: dict[str, Any]) -> System:
    """Build the adapter ``name`` (see ``SYSTEMS``) with ``config``."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    module, cls, defaults = SYSTEMS[name]
    mod = importlib.import_module(f"{__name__}.{module}")
    return getattr(mod, cls)({**defaults, **config})
