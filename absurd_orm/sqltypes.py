"""Portable column types: aware UTC datetimes, ids, and JSON kept as written."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Text, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = ["UTCDateTime", "JSONType", "IdType", "JSONText"]


class JSONText(TypeDecorator[Any]):
    """JSON stored as TEXT.

    A SQLite column declared ``JSON`` has NUMERIC affinity: a value that is a bare
    number would be converted (2**70 to a float, 1.0 to 1). TEXT affinity keeps the
    JSON text exactly as written.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


#: Stored values (params, step results, payloads) must come back exactly as written on
#: replay, so they are kept as JSON text: ``json`` on PostgreSQL (``jsonb`` would print
#: 1e300 back as an integer and -0.0 as 0), TEXT on SQLite (see :class:`JSONText`).
JSONType = JSON().with_variant(JSONText(), "sqlite")

#: Ids are UUIDs in the database (native ``uuid`` on PostgreSQL) and strings in Python.
IdType = Uuid(as_uuid=False)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored in UTC that refuses naive values and always returns aware ones.

    Backends without a zoned timestamp type (SQLite) store UTC wall time; every value is
    converted to UTC on the way in, so comparisons in SQL stay correct.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(f"naive datetime {value!r} refused: use an aware UTC datetime")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
