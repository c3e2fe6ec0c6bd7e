"""Portable column types: aware UTC datetimes and JSON (JSONB on PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = ["UTCDateTime", "JSONType", "IdType"]

#: JSON everywhere, JSONB on PostgreSQL (indexable, compact, compared by value).
JSONType = JSON().with_variant(JSONB(), "postgresql")

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
