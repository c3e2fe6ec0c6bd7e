"""Workflow: a registered task definition and its spawn helper."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from .types import SpawnResult

if TYPE_CHECKING:
    from .context import TaskContext
    from .engine import Engine

__all__ = ["Workflow"]


class Workflow:
    """A task registered with ``Engine.register_task``; call it to run the handler directly."""

    def __init__(self, engine: Engine, name: str, queue: str, handler: Callable[..., Any],
                 default_max_attempts: int | None,
                 default_cancellation: Mapping[str, float] | None) -> None:
        self.engine = engine
        self.name = name
        self.queue = queue
        self.handler = handler
        self.default_max_attempts = default_max_attempts
        self.default_cancellation = default_cancellation
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler

    def spawn(self, params: Any = None, **options: Any) -> SpawnResult:
        """Enqueue this task (same options as ``Engine.spawn``)."""
        return self.engine.spawn(self.name, params, **options)

    def __call__(self, params: Any, ctx: TaskContext) -> Any:
        return self.handler(params, ctx)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} on queue {self.queue!r}>"
