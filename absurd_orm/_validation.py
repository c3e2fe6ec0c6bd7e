"""Internal: checks applied to every input before anything is written.

Each function raises the error the public API documents (``ValueError`` subclasses for
bad names and numbers, :class:`NotJSONSerializable` for values that are not strict JSON)
and returns a normalised value.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

from .errors import NotJSONSerializable, ValidationError

MAX_QUEUE_NAME_BYTES = 57
MAX_NAME_LENGTH = 255
# Checkpoint names get a "#k" suffix for repeats; keep room for it in the 255 columns.
MAX_STEP_NAME_LENGTH = 240
# Larger waits would overflow datetime arithmetic; a century is already absurd.
MAX_SECONDS = 100 * 365 * 24 * 3600.0

_JSON_SCALARS = (str, int, float, bool, type(None))


def queue_name(name: Any) -> str:
    """Validate a queue name: a non-empty string of at most 57 UTF-8 bytes."""
    if not isinstance(name, str):
        raise ValidationError(f"Queue name must be a string, got {type(name).__name__}")
    if name == "":
        raise ValidationError("Queue name must be provided (empty string given)")
    if len(name.encode("utf-8")) > MAX_QUEUE_NAME_BYTES:
        raise ValidationError(
            f"Queue name {name[:20]!r}... is too long (max {MAX_QUEUE_NAME_BYTES} bytes)."
        )
    if "\x00" in name:
        raise ValidationError("Queue name must not contain NUL characters")
    return name


def name(value: Any, what: str) -> str:
    """Validate a task, event, step or worker name: non-blank text of bounded length."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(f"{what} is too long ({len(value)} > {MAX_NAME_LENGTH} characters)")
    if "\x00" in value:
        raise ValidationError(f"{what} must not contain NUL characters")
    return value


def step_name(value: Any) -> str:
    """Validate a step name (shorter than other names: "#k" may be appended)."""
    name(value, "step name")
    if len(value) > MAX_STEP_NAME_LENGTH:
        raise ValidationError(
            f"step name is too long ({len(value)} > {MAX_STEP_NAME_LENGTH} characters)")
    return value


def default_step_name(prefix: str, subject: str) -> str:
    """The automatic step name of a wait or spawn; long subjects are replaced by a digest."""
    full = prefix + subject
    if len(full) <= MAX_STEP_NAME_LENGTH:
        return full
    import hashlib

    return prefix + "sha256:" + hashlib.sha256(subject.encode("utf-8")).hexdigest()


def seconds(value: Any, what: str, *, allow_zero: bool = True) -> float:
    """Validate a duration in seconds: a finite, non-negative real number of sane size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{what} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or math.isinf(value):
        raise ValidationError(f"{what} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValidationError(f"{what} must be {bound}, got {value!r}")
    if value > MAX_SECONDS:
        raise ValidationError(f"{what} is absurdly large ({value!r} s; max {MAX_SECONDS:.0f})")
    return float(value)


def positive_int(value: Any, what: str) -> int:
    """Validate an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValidationError(f"{what} must be >= 1, got {value}")
    if value > 2**31 - 1:
        raise ValidationError(f"{what} is too large ({value})")
    return value


def when(value: Any, what: str) -> datetime:
    """Validate an aware datetime or UNIX seconds and return it in UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValidationError(f"{what} must be timezone-aware, got naive {value!r}")
        return value.astimezone(timezone.utc)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{what} must be an aware datetime or UNIX seconds")
    if math.isnan(value) or math.isinf(value):
        raise ValidationError(f"{what} must be finite, got {value!r}")
    try:
        return datetime.fromtimestamp(value, timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValidationError(f"{what} is out of range: {value!r}") from exc


def json_value(value: Any, what: str, max_bytes: int | None = None) -> Any:
    """Check that ``value`` is strict standard JSON; return it unchanged.

    Rejects what ``json.dumps`` would silently coerce (non-string keys) or emit as
    non-standard tokens (NaN, Infinity), so a replay sees exactly what was stored.
    """
    _walk(value, what, 0)
    if max_bytes is not None:
        import json

        size = len(json.dumps(value, separators=(",", ":")).encode("utf-8"))
        if size > max_bytes:
            raise ValidationError(f"{what} is too large ({size} bytes; limit {max_bytes})")
    return value


def _walk(value: Any, what: str, depth: int) -> None:
    if depth > 200:
        raise NotJSONSerializable(f"{what} is nested too deeply (more than 200 levels)")
    cls = type(value)
    if cls is str:
        _check_text(value, what)
        return
    if cls is int or cls is bool or value is None:
        return
    if cls is float:
        if math.isnan(value) or math.isinf(value):
            raise NotJSONSerializable(f"{what} contains {value!r}, which is not valid JSON")
        return
    if cls is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise NotJSONSerializable(
                    f"{what} has a dict key of type {type(key).__name__}; JSON keys must be str"
                )
            _check_text(key, what)
            _walk(item, what, depth + 1)
        return
    if cls is list:
        for item in value:
            _walk(item, what, depth + 1)
        return
    if cls is tuple:
        # Stored as a JSON array, a tuple would come back as a list on replay.
        raise NotJSONSerializable(f"{what} contains a tuple; use a list (JSON arrays are lists)")
    raise NotJSONSerializable(
        f"{what} contains a value of type {cls.__module__}.{cls.__qualname__}, "
        "which is not JSON (allowed: dict, list, str, int, float, bool, None)"
    )


def _check_text(value: str, what: str) -> None:
    # PostgreSQL's json types refuse NUL and unpaired surrogates; refuse them everywhere
    # so that both backends accept exactly the same values.
    if "\x00" in value:
        raise NotJSONSerializable(f"{what} contains a NUL character, which JSON storage refuses")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise NotJSONSerializable(
                f"{what} contains an unpaired surrogate, which is not valid Unicode text") from None


_RETRY_KINDS = ("none", "fixed", "exponential")


def retry_strategy(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate and normalise a retry strategy dict (``None`` or ``{}`` means none)."""
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(f"retry_strategy must be a dict, got {type(value).__name__}")
    unknown = set(value) - {"kind", "base_seconds", "factor", "max_seconds"}
    if unknown:
        raise ValidationError(f"retry_strategy has unknown keys: {sorted(unknown)}")
    kind = value.get("kind", "none")
    if kind not in _RETRY_KINDS:
        raise ValidationError(f"retry_strategy kind must be one of {_RETRY_KINDS}, got {kind!r}")
    out: dict[str, Any] = {"kind": kind}
    for key in ("base_seconds", "factor", "max_seconds"):
        if value.get(key) is not None:
            out[key] = seconds(value[key], f"retry_strategy.{key}")
    return out


def cancellation(value: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Validate a cancellation policy ``{"max_delay": s, "max_duration": s}``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(f"cancellation must be a dict, got {type(value).__name__}")
    unknown = set(value) - {"max_delay", "max_duration"}
    if unknown:
        raise ValidationError(f"cancellation has unknown keys: {sorted(unknown)}")
    out = {
        key: seconds(value[key], f"cancellation.{key}", allow_zero=False)
        for key in ("max_delay", "max_duration")
        if value.get(key) is not None
    }
    return out or None


def headers(value: Any) -> dict[str, Any] | None:
    """Validate task headers: a JSON object (or ``None``)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(f"headers must be a dict, got {type(value).__name__}")
    value = dict(value)
    json_value(value, "headers")
    return value
