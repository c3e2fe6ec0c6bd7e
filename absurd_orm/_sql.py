"""Internal: hot-path statements compiled once per dialect, executed on the driver cursor.

Statements are ordinary SQLAlchemy Core expressions on the models' tables. Executing
them through ``Connection.execute`` costs a cache-key computation and a compiled-cache
lookup on every call, several times the cost of the statement itself on SQLite. A
:class:`Prepared` statement is compiled once; each call only converts its parameters and
result columns with the same type processors SQLAlchemy would use, so values look
exactly as they do through Core. Driver errors are re-raised as SQLAlchemy's
``DBAPIError`` subclasses, so callers handle one family of exceptions.

Restrictions: no "expanding" (``IN`` list) parameters; bound defaults must be literals.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

__all__ = ["Prepared"]

_Processor = Callable[[Any], Any] | None


class Prepared:
    """A Core statement compiled for one dialect, run with minimal per-call overhead."""

    __slots__ = ("sql", "_names", "_binds", "_defaults", "_positional", "_types", "_columns",
                 "_row", "_dbapi_error", "_dialect")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self._dialect = dialect
        self._positional = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if self._positional else list(compiled.binds)
        self._names = names
        self._binds: list[tuple[str, _Processor]] = []
        self._defaults: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"expanding parameter {name!r} cannot be prepared")
            if not bind.required:
                self._defaults[name] = bind.value
            self._binds.append((name, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        descriptions = self._describe(statement)
        self._types = [typ.dialect_impl(dialect) for _, typ in descriptions]
        # Some processors depend on the driver's type code: built on the first result.
        self._columns: list[_Processor] | None = None
        self._row = namedtuple("Row", [n for n, _ in descriptions], rename=True) if descriptions else None
        self._dbapi_error = dialect.loaded_dbapi.Error

    @staticmethod
    def _describe(statement: ClauseElement) -> list[tuple[str, Any]]:
        desc = getattr(statement, "returning_column_descriptions", None)
        if desc is None:
            desc = getattr(statement, "column_descriptions", None)
        if not desc:
            return []
        return [(d["name"], d["type"]) for d in desc]

    def _params(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values: dict[str, Any] = {}
        defaults = self._defaults
        for name, proc in self._binds:
            value = params[name] if name in params else defaults[name]
            values[name] = proc(value) if proc is not None and value is not None else value
        if self._positional:
            return [values[n] for n in self._names]
        return values

    def _wrap(self, exc: Exception, args: Any) -> DBAPIError:
        """The driver's error as SQLAlchemy's (callers handle one family of errors)."""
        return DBAPIError.instance(self.sql, args, exc, self._dbapi_error, dialect=self._dialect)

    def _run(self, conn: Connection, params: Mapping[str, Any],
             fetch: Callable[[Any], Any]) -> Any:
        args = self._params(params)
        try:
            cursor = conn.connection.cursor()  # raises too when the connection is gone
            try:
                cursor.execute(self.sql, args)
                return fetch(cursor)
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            raise self._wrap(exc, args) from exc

    def _processors(self, cursor: Any) -> list[_Processor]:
        if self._columns is None:
            codes = [d[1] for d in cursor.description]
            self._columns = [typ.result_processor(self._dialect, code)
                             for typ, code in zip(self._types, codes)]
        return self._columns

    def _convert(self, procs: list[_Processor], raw: Sequence[Any]) -> Any:
        assert self._row is not None
        return self._row(*[proc(v) if proc is not None else v for proc, v in zip(procs, raw)])

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]],
             common: Mapping[str, Any] | None = None) -> None:
        """Execute once per parameter set, in one driver call (``executemany``).

        ``common`` holds values shared by every row: they are converted only once.
        """
        if common:
            shared = {name: (proc(common[name]) if proc is not None and common[name] is not None
                             else common[name])
                      for name, proc in self._binds if name in common}
            varying = [(name, proc) for name, proc in self._binds if name not in common]
            defaults = self._defaults
            args = []
            for p in rows:
                values = dict(shared)
                for name, proc in varying:
                    value = p[name] if name in p else defaults[name]
                    values[name] = proc(value) if proc is not None and value is not None else value
                args.append([values[n] for n in self._names] if self._positional else values)
        else:
            args = [self._params(p) for p in rows]
        try:
            cursor = conn.connection.cursor()
            try:
                cursor.executemany(self.sql, args)
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            raise self._wrap(exc, args[:1]) from exc

    def rowcount(self, conn: Connection, params: Mapping[str, Any] = {}) -> int:  # noqa: B006
        """Execute; return the number of rows affected."""
        return self._run(conn, params, lambda cursor: cursor.rowcount)

    def all(self, conn: Connection, params: Mapping[str, Any] = {}) -> list[Any]:  # noqa: B006
        """Execute; return every result row as a named tuple."""
        def fetch(cursor: Any) -> list[Any]:
            rows = cursor.fetchall()
            if not rows:
                return []
            procs = self._processors(cursor)
            return [self._convert(procs, r) for r in rows]
        return self._run(conn, params, fetch)

    def first(self, conn: Connection, params: Mapping[str, Any] = {}) -> Any:  # noqa: B006
        """Execute; return the first result row (or None)."""
        def fetch(cursor: Any) -> Any:
            raw = cursor.fetchone()
            return None if raw is None else self._convert(self._processors(cursor), raw)
        return self._run(conn, params, fetch)
