"""Spawning: results, idempotency, queue resolution, defaults, validation and hooks."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

import absurd_orm
from absurd_orm import Engine, NotJSONSerializable, QueueNotFound, SpawnResult
from absurd_orm.models import runs, tasks


def row_counts(sa_engine: sa.Engine) -> tuple[int, int]:
    """(number of task rows, number of run rows)."""
    with sa_engine.connect() as conn:
        return (conn.scalar(sa.select(sa.func.count()).select_from(tasks)),
                conn.scalar(sa.select(sa.func.count()).select_from(runs)))


def noop(params, ctx):
    return None


# ---------------------------------------------------------------- SpawnResult


def test_spawn_result_fields_and_subscript(engine: Engine) -> None:
    engine.register_task(name="job")(noop)
    res = engine.spawn("job", {"a": 1})
    assert isinstance(res, SpawnResult)
    assert isinstance(res.task_id, str) and isinstance(res.run_id, str)
    assert res.task_id != res.run_id
    assert res.attempt == 1
    assert res.created is True
    assert res["task_id"] == res.task_id
    assert res["run_id"] == res.run_id
    assert res["attempt"] == 1
    assert res["created"] is True
    with pytest.raises(KeyError):
        res["nope"]


def test_spawn_stores_pending_task_with_params(engine: Engine) -> None:
    engine.register_task(name="job")(noop)
    res = engine.spawn("job", {"a": [1, 2, {"b": None}]})
    info = engine.get_task(res.task_id)
    assert info is not None
    assert info.state == "pending"
    assert info.task_name == "job"
    assert info.queue == "default"
    assert info.params == {"a": [1, 2, {"b": None}]}
    assert info.attempts == 1
    assert [r.run_id for r in info.runs] == [res.run_id]
    assert info.runs[0].state == "pending"


def test_workflow_spawn_helper(engine: Engine) -> None:
    wf = engine.register_task(name="job")(noop)
    assert wf.name == "job" and wf.queue == "default"
    res = wf.spawn({"x": 1}, max_attempts=2)
    info = engine.get_task(res.task_id)
    assert info.task_name == "job" and info.params == {"x": 1} and info.max_attempts == 2


# ---------------------------------------------------------------- idempotency


def test_idempotency_key_returns_existing_task(engine: Engine, sa_engine: sa.Engine) -> None:
    engine.register_task(name="job")(noop)
    first = engine.spawn("job", {"n": 1}, idempotency_key="k1")
    again = engine.spawn("job", {"n": 2}, idempotency_key="k1")
    assert first.created is True
    assert again.created is False
    assert (again.task_id, again.run_id, again.attempt) == (first.task_id, first.run_id, 1)
    assert row_counts(sa_engine) == (1, 1)
    info = engine.get_task(first.task_id)
    assert info.params == {"n": 1}  # the duplicate's params are ignored
    assert info.idempotency_key == "k1"


def test_idempotency_key_scope_is_queue_not_task_name(engine: Engine, sa_engine: sa.Engine) -> None:
    engine.register_task(name="first")(noop)
    engine.register_task(name="second")(noop)
    a = engine.spawn("first", {}, idempotency_key="shared")
    b = engine.spawn("second", {}, idempotency_key="shared")
    assert b.created is False
    assert b.task_id == a.task_id
    assert engine.get_task(a.task_id).task_name == "first"
    assert row_counts(sa_engine) == (1, 1)


def test_idempotency_keys_do_not_collide_across_queues(engine: Engine) -> None:
    engine.create_queue("other")
    a = engine.spawn("unreg", {}, queue="default", idempotency_key="k")
    b = engine.spawn("unreg", {}, queue="other", idempotency_key="k")
    assert a.created and b.created
    assert a.task_id != b.task_id
    assert engine.get_task(b.task_id, queue_name="other").queue == "other"


def test_idempotency_key_still_matches_after_completion(engine: Engine) -> None:
    engine.register_task(name="job")(lambda p, ctx: "done")
    first = engine.spawn("job", {}, idempotency_key="k")
    assert engine.work_batch() == 1
    again = engine.spawn("job", {}, idempotency_key="k")
    assert again.created is False and again.task_id == first.task_id
    assert engine.work_batch() == 0


# ---------------------------------------------------------------- queue resolution


def test_registered_queue_wins(engine: Engine) -> None:
    engine.create_queue("emails")
    engine.register_task(name="send", queue="emails")(noop)
    res = engine.spawn("send", {})
    assert engine.get_task(res.task_id) is None  # not in the engine's queue
    assert engine.get_task(res.task_id, queue_name="emails").queue == "emails"
    # naming the same queue explicitly is fine
    res2 = engine.spawn("send", {}, queue="emails")
    assert engine.get_task(res2.task_id, queue_name="emails") is not None


def test_unregistered_task_needs_queue(engine: Engine, sa_engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="not registered"):
        engine.spawn("ghost", {})
    assert row_counts(sa_engine) == (0, 0)
    res = engine.spawn("ghost", {}, queue="default")
    assert engine.get_task(res.task_id).task_name == "ghost"


def test_conflicting_queue_is_value_error(engine: Engine, sa_engine: sa.Engine) -> None:
    engine.create_queue("other")
    engine.register_task(name="job")(noop)  # registered on "default"
    with pytest.raises(ValueError, match="registered for queue"):
        engine.spawn("job", {}, queue="other")
    assert row_counts(sa_engine) == (0, 0)


def test_spawn_into_missing_queue_raises_queue_not_found(engine: Engine, sa_engine: sa.Engine) -> None:
    with pytest.raises(QueueNotFound, match="nowhere") as err:
        engine.spawn("ghost", {}, queue="nowhere")
    assert isinstance(err.value, ValueError)
    assert row_counts(sa_engine) == (0, 0)


def test_spawn_registered_task_into_missing_queue(engine: Engine, sa_engine: sa.Engine) -> None:
    engine.register_task(name="job", queue="not-created")(noop)
    with pytest.raises(QueueNotFound):
        engine.spawn("job", {}, idempotency_key="k")
    assert row_counts(sa_engine) == (0, 0)


# ---------------------------------------------------------------- max_attempts chain


def test_max_attempts_default_chain(engine: Engine) -> None:
    engine.register_task(name="plain")(noop)
    engine.register_task(name="three", default_max_attempts=3)(noop)
    explicit = engine.spawn("three", {}, max_attempts=7)
    registered = engine.spawn("three", {})
    default = engine.spawn("plain", {})
    assert engine.get_task(explicit.task_id).max_attempts == 7
    assert engine.get_task(registered.task_id).max_attempts == 3
    assert engine.get_task(default.task_id).max_attempts == 5


def test_engine_default_max_attempts_is_configurable(sa_engine: sa.Engine, engine: Engine, clock) -> None:
    other = Engine(sa_engine, clock=clock, default_max_attempts=2)
    try:
        other.register_task(name="plain")(noop)
        res = other.spawn("plain", {})
        assert other.get_task(res.task_id).max_attempts == 2
    finally:
        other.close()


# ---------------------------------------------------------------- stored options


def test_options_are_stored(engine: Engine) -> None:
    engine.register_task(name="job")(noop)
    res = engine.spawn(
        "job", {},
        cancellation={"max_delay": 30, "max_duration": 600},
        retry_strategy={"kind": "exponential", "base_seconds": 2, "factor": 3, "max_seconds": 60},
        headers={"trace": "abc", "n": [1, 2]},
    )
    info = engine.get_task(res.task_id)
    assert info.cancellation == {"max_delay": 30, "max_duration": 600}
    assert info.retry_strategy == {"kind": "exponential", "base_seconds": 2,
                                   "factor": 3, "max_seconds": 60}
    assert info.headers == {"trace": "abc", "n": [1, 2]}


def test_register_default_cancellation_applies(engine: Engine) -> None:
    engine.register_task(name="job", default_cancellation={"max_duration": 100})(noop)
    res = engine.spawn("job", {})
    assert engine.get_task(res.task_id).cancellation == {"max_duration": 100}
    res2 = engine.spawn("job", {}, cancellation={"max_delay": 5})
    assert engine.get_task(res2.task_id).cancellation == {"max_delay": 5}


# ---------------------------------------------------------------- validation, nothing written


class Opaque:
    pass


@pytest.mark.parametrize("params", [
    datetime(2030, 1, 1, tzinfo=timezone.utc),
    {"amount": Decimal("1.5")},
    b"bytes",
    {"tags": {1, 2}},
    Opaque(),
    {"x": math.nan},
    [math.inf],
    {"nested": [{"bad": -math.inf}]},
    {1: "int key"},
], ids=["datetime", "decimal", "bytes", "set", "object", "nan", "inf", "-inf", "int-key"])
def test_non_json_params_raise_type_error_and_write_nothing(
        engine: Engine, sa_engine: sa.Engine, params) -> None:
    engine.register_task(name="job")(noop)
    with pytest.raises(TypeError) as err:
        engine.spawn("job", params)
    assert isinstance(err.value, NotJSONSerializable)
    assert isinstance(err.value, absurd_orm.AbsurdError)
    assert row_counts(sa_engine) == (0, 0)


def test_non_json_error_names_the_type(engine: Engine) -> None:
    engine.register_task(name="job")(noop)
    with pytest.raises(NotJSONSerializable, match="Decimal"):
        engine.spawn("job", {"amount": Decimal("1")})


def test_non_json_headers_raise_type_error(engine: Engine, sa_engine: sa.Engine) -> None:
    engine.register_task(name="job")(noop)
    with pytest.raises(TypeError):
        engine.spawn("job", {}, headers={"when": datetime(2030, 1, 1, tzinfo=timezone.utc)})
    assert row_counts(sa_engine) == (0, 0)


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_blank_task_name_is_value_error(engine: Engine, sa_engine: sa.Engine, name: str) -> None:
    with pytest.raises(ValueError):
        engine.spawn(name, {}, queue="default")
    assert row_counts(sa_engine) == (0, 0)


@pytest.mark.parametrize("bad", [0, -1, "3", True, 2.5])
def test_bad_max_attempts_is_value_error(engine: Engine, sa_engine: sa.Engine, bad) -> None:
    engine.register_task(name="job")(noop)
    with pytest.raises(ValueError):
        engine.spawn("job", {}, max_attempts=bad)
    assert row_counts(sa_engine) == (0, 0)


def test_bad_register_default_max_attempts_is_value_error(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.register_task(name="job", default_max_attempts=0)


@pytest.mark.parametrize("strategy", [
    {"kind": "linear"},
    {"kind": "fixed", "base_seconds": -1},
    {"kind": "fixed", "bogus": 1},
])
def test_bad_retry_strategy_is_value_error(engine: Engine, sa_engine: sa.Engine, strategy) -> None:
    engine.register_task(name="job")(noop)
    with pytest.raises(ValueError):
        engine.spawn("job", {}, retry_strategy=strategy)
    assert row_counts(sa_engine) == (0, 0)


def test_bad_cancellation_is_value_error(engine: Engine, sa_engine: sa.Engine) -> None:
    engine.register_task(name="job")(noop)
    with pytest.raises(ValueError):
        engine.spawn("job", {}, cancellation={"max_delay": -5})
    assert row_counts(sa_engine) == (0, 0)


# ---------------------------------------------------------------- queue names


def test_empty_queue_name_is_value_error(engine: Engine, sa_engine: sa.Engine) -> None:
    with pytest.raises(ValueError):
        engine.create_queue("")
    with pytest.raises(ValueError):
        engine.spawn("ghost", {}, queue="")
    with pytest.raises(ValueError):
        engine.register_task(name="job", queue="")
    assert "" not in engine.list_queues()
    assert row_counts(sa_engine) == (0, 0)


def test_queue_name_byte_limit(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.create_queue("q" * 58)
    with pytest.raises(ValueError):
        engine.create_queue("é" * 29)  # 58 UTF-8 bytes, 29 characters
    ok = "q" * 57
    engine.create_queue(ok)
    assert ok in engine.list_queues()
    res = engine.spawn("ghost", {}, queue=ok)
    assert engine.get_task(res.task_id, queue_name=ok).queue == ok


@pytest.mark.parametrize("name", [
    "   ",
    "\t",
    "q'; DROP TABLE absurd_tasks; --",
    'with "double" quotes',
    "ünïcödé-队列-🚀",
    "-leading.dash_and.DOTS",
    "%_wild_%",
])
def test_unusual_queue_names_work(engine: Engine, name: str) -> None:
    engine.create_queue(name)
    assert name in engine.list_queues()
    res = engine.spawn("ghost", {"q": name}, queue=name)
    info = engine.get_task(res.task_id, queue_name=name)
    assert info is not None and info.queue == name and info.params == {"q": name}
    # the default queue and the tables are untouched
    assert engine.get_task(res.task_id) is None
    assert "default" in engine.list_queues()


# ---------------------------------------------------------------- hooks


def test_before_spawn_hook_injects_headers(sa_engine: sa.Engine, engine: Engine, clock) -> None:
    seen = []

    def before_spawn(task_name, params, options):
        seen.append((task_name, params, dict(options)))
        options = dict(options)
        options["headers"] = {**(options.get("headers") or {}), "trace_id": "t-1"}
        options["max_attempts"] = 9
        return options

    hooked = Engine(sa_engine, clock=clock, hooks={"before_spawn": before_spawn})
    try:
        hooked.register_task(name="job")(noop)
        res = hooked.spawn("job", {"p": 1}, headers={"user": "u"})
        info = hooked.get_task(res.task_id)
        assert info.headers == {"user": "u", "trace_id": "t-1"}
        assert info.max_attempts == 9  # the hook's returned options are the ones used
        assert seen == [("job", {"p": 1}, {"headers": {"user": "u"}})]
    finally:
        hooked.close()


def test_before_spawn_hook_runs_for_child_spawns(sa_engine: sa.Engine, engine: Engine, clock) -> None:
    def before_spawn(task_name, params, options):
        return {**options, "headers": {"via": "hook", "for": task_name}}

    hooked = Engine(sa_engine, clock=clock, hooks={"before_spawn": before_spawn})
    try:
        hooked.register_task(name="child")(noop)

        @hooked.register_task(name="parent")
        def parent(params, ctx):
            return ctx.spawn("child", {}).task_id

        res = hooked.spawn("parent", {})
        assert hooked.work_batch() == 1
        child_id = hooked.fetch_task_result(res.task_id).result
        assert hooked.get_task(child_id).headers == {"via": "hook", "for": "child"}
    finally:
        hooked.close()


def test_wrap_task_execution_wraps_the_handler(sa_engine: sa.Engine, engine: Engine, clock) -> None:
    log = []

    def wrap(ctx, execute):
        log.append(("before", dict(ctx.headers), ctx.task_name))
        result = execute()
        log.append(("after", result))
        return {"wrapped": result}

    hooked = Engine(sa_engine, clock=clock, hooks={"wrap_task_execution": wrap})
    try:
        @hooked.register_task(name="job")
        def job(params, ctx):
            log.append(("handler",))
            return params["n"] * 2

        res = hooked.spawn("job", {"n": 21}, headers={"trace": "x"})
        assert hooked.work_batch() == 1
        assert log == [("before", {"trace": "x"}, "job"), ("handler",), ("after", 42)]
        assert hooked.fetch_task_result(res.task_id).result == {"wrapped": 42}
    finally:
        hooked.close()


def test_unknown_hook_is_rejected(sa_engine: sa.Engine) -> None:
    with pytest.raises(ValueError):
        Engine(sa_engine, hooks={"after_spawn": lambda *a: None})


# ---------------------------------------------------------------- backend-portable strings


@pytest.mark.parametrize("params", [
    {"s": "a\x00b"}, {"key\x00": 1}, {"s": "\ud800"},
], ids=["nul-in-value", "nul-in-key", "lone-surrogate"])
def test_strings_postgres_cannot_store_are_refused_or_round_trip(
        engine: Engine, sa_engine: sa.Engine, backend: str, request: pytest.FixtureRequest,
        params) -> None:
    """Either the value is stored faithfully, or it is a TypeError raised before any write.

    Never a backend-specific database error (PostgreSQL's jsonb cannot hold ``\\u0000``
    or unpaired surrogates, SQLite's JSON text can).
    """
    engine.register_task(name="job")(noop)
    try:
        res = engine.spawn("job", params)
    except TypeError:
        assert row_counts(sa_engine) == (0, 0)
    else:
        assert engine.get_task(res.task_id).params == params


# ---------------------------------------------------------------- error hierarchy


@pytest.mark.parametrize("call", [
    lambda e: e.spawn("  ", {}, queue="default"),
    lambda e: e.spawn("ghost", {}),
    lambda e: e.spawn("job", {}, queue="other"),
    lambda e: e.spawn("job", {}, max_attempts=0),
    lambda e: e.spawn("job", {}, retry_strategy={"kind": "linear"}),
    lambda e: e.create_queue(""),
    lambda e: e.create_queue("q" * 58),
    lambda e: e.emit_event("", 1),
], ids=["blank-name", "unregistered", "queue-conflict", "max-attempts", "retry-kind",
        "empty-queue", "long-queue", "blank-event"])
def test_validation_errors_are_absurd_errors(engine: Engine, call) -> None:
    engine.create_queue("other")
    engine.register_task(name="job")(noop)
    with pytest.raises(ValueError) as err:
        call(engine)
    assert isinstance(err.value, absurd_orm.AbsurdError)


def test_idempotent_spawn_returns_latest_run_and_attempt(engine: Engine) -> None:
    @engine.register_task(name="flaky")
    def flaky(params, ctx):
        raise RuntimeError("again")

    first = engine.spawn("flaky", {}, idempotency_key="k", max_attempts=3)
    engine.work_batch()  # attempt 1 fails, attempt 2 is scheduled
    again = engine.spawn("flaky", {}, idempotency_key="k")
    info = engine.get_task(first.task_id)
    assert again.created is False
    assert again.task_id == first.task_id
    assert again.attempt == 2
    assert again.run_id == info.runs[1].run_id != first.run_id


def test_wrap_task_execution_sees_suspension(sa_engine: sa.Engine, engine: Engine, clock) -> None:
    outcomes = []

    def wrap(ctx, execute):
        try:
            return execute()
        except BaseException as exc:
            outcomes.append(type(exc).__name__)
            raise

    hooked = Engine(sa_engine, clock=clock, hooks={"wrap_task_execution": wrap})
    try:
        @hooked.register_task(name="job")
        def job(params, ctx):
            return ctx.await_event("go")

        res = hooked.spawn("job", {})
        hooked.work_batch()
        assert outcomes == ["SuspendTask"]
        assert hooked.fetch_task_result(res.task_id).state == "sleeping"
        hooked.emit_event("go", 1)
        hooked.work_batch()
        assert hooked.fetch_task_result(res.task_id).result == 1
        assert outcomes == ["SuspendTask"]
    finally:
        hooked.close()
