"""Retries: automatic retries per strategy, attempt accounting, and manual retry_task."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from absurd_orm import Engine, InvalidTaskState, ManualClock, TaskNotFound


def _register_failing(engine: Engine, name: str = "flaky"):
    calls = {"n": 0}

    @engine.register_task(name=name)
    def flaky(params, ctx):
        calls["n"] += 1
        raise RuntimeError(f"boom {ctx.attempt}")

    return calls


def test_failing_handler_is_retried_immediately_until_max_attempts(engine: Engine) -> None:
    calls = _register_failing(engine)
    spawned = engine.spawn("flaky", {"x": 1}, max_attempts=3)

    for attempt in (1, 2, 3):
        # retry strategy "none": the next attempt is claimable at once, no clock movement
        assert engine.work_batch() == 1
        info = engine.get_task(spawned.task_id)
        assert info.runs[attempt - 1].attempt == attempt
        assert info.runs[attempt - 1].state == "failed"
        if attempt < 3:
            assert info.state == "pending"
            assert info.attempts == attempt + 1
            assert info.runs[attempt].state == "pending"  # the next run already exists
    assert engine.work_batch() == 0
    assert calls["n"] == 3

    info = engine.get_task(spawned.task_id)
    assert info.state == "failed"
    assert info.attempts == 3
    assert [r.attempt for r in info.runs] == [1, 2, 3]
    assert [r.state for r in info.runs] == ["failed", "failed", "failed"]
    assert all(r.failed_at is not None for r in info.runs)
    assert info.failure["name"] == "RuntimeError"
    assert info.failure["message"] == "boom 3"
    assert "boom 3" in info.failure["traceback"]
    assert "RuntimeError" in info.failure["traceback"]

    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "failed"
    assert snap.failure["name"] == "RuntimeError"
    assert snap.failure["message"] == "boom 3"
    assert snap.result is None


def test_each_run_keeps_its_own_failure(engine: Engine) -> None:
    _register_failing(engine)
    spawned = engine.spawn("flaky", None, max_attempts=2)
    engine.work_batch()
    engine.work_batch()
    info = engine.get_task(spawned.task_id)
    assert [r.failure["message"] for r in info.runs] == ["boom 1", "boom 2"]


def test_engine_default_max_attempts_is_five(engine: Engine) -> None:
    calls = _register_failing(engine)
    spawned = engine.spawn("flaky", None)
    for _ in range(10):
        engine.work_batch()
    info = engine.get_task(spawned.task_id)
    assert calls["n"] == 5
    assert info.state == "failed"
    assert info.attempts == 5
    assert info.max_attempts == 5
    assert len(info.runs) == 5


def test_max_attempts_one_fails_without_retry(engine: Engine) -> None:
    calls = _register_failing(engine)
    spawned = engine.spawn("flaky", None, max_attempts=1)
    assert engine.work_batch() == 1
    assert engine.work_batch() == 0
    info = engine.get_task(spawned.task_id)
    assert calls["n"] == 1
    assert info.state == "failed"
    assert len(info.runs) == 1


def _delays(engine: Engine, clock: ManualClock, strategy: dict, failures: int) -> list[float]:
    """Fail ``failures`` attempts and return the observed backoff before each retry.

    Each delay is checked two ways: the next run is not claimable one second before it
    is due, and is claimable exactly when due.
    """
    _register_failing(engine)
    spawned = engine.spawn("flaky", None, max_attempts=failures + 1, retry_strategy=strategy)
    assert engine.work_batch() == 1
    delays = []
    for i in range(failures):
        failed_at = clock()
        info = engine.get_task(spawned.task_id)
        nxt = info.runs[-1]
        assert nxt.attempt == i + 2
        assert nxt.state == "sleeping"
        assert info.state == "sleeping"
        delay = (nxt.available_at - failed_at).total_seconds()
        delays.append(delay)
        clock.advance(delay - 1)
        assert engine.work_batch() == 0, f"retry {i + 1} claimable before its backoff"
        clock.advance(1)
        assert engine.work_batch() == 1, f"retry {i + 1} not claimable when due"
    return delays


def test_fixed_strategy_waits_base_seconds(engine: Engine, clock: ManualClock) -> None:
    _register_failing(engine)
    spawned = engine.spawn("flaky", None, max_attempts=3,
                           retry_strategy={"kind": "fixed", "base_seconds": 10})
    start = clock()
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "sleeping"
    assert info.attempts == 2
    assert info.runs[1].state == "sleeping"
    assert info.runs[1].available_at == start + timedelta(seconds=10)

    clock.advance(9)
    assert engine.work_batch() == 0
    clock.advance(1)
    assert engine.work_batch() == 1
    assert engine.get_task(spawned.task_id).runs[2].available_at == start + timedelta(seconds=20)


def test_fixed_strategy_delays(engine: Engine, clock: ManualClock) -> None:
    assert _delays(engine, clock, {"kind": "fixed", "base_seconds": 10}, 3) == [10, 10, 10]


def test_exponential_base_40_factor_2(engine: Engine, clock: ManualClock) -> None:
    assert _delays(engine, clock, {"kind": "exponential", "base_seconds": 40, "factor": 2},
                   2) == [40, 80]


def test_exponential_capped_by_max_seconds(engine: Engine, clock: ManualClock) -> None:
    assert _delays(engine, clock, {"kind": "exponential", "base_seconds": 40, "factor": 3,
                                   "max_seconds": 90}, 2) == [40, 90]


def test_fixed_default_base_is_60_seconds(engine: Engine, clock: ManualClock) -> None:
    assert _delays(engine, clock, {"kind": "fixed"}, 2) == [60, 60]


def test_exponential_defaults_30_60_120(engine: Engine, clock: ManualClock) -> None:
    assert _delays(engine, clock, {"kind": "exponential"}, 3) == [30, 60, 120]


def test_explicit_none_strategy_retries_at_once(engine: Engine) -> None:
    _register_failing(engine)
    spawned = engine.spawn("flaky", None, max_attempts=2, retry_strategy={"kind": "none"})
    assert engine.work_batch() == 1
    assert engine.get_task(spawned.task_id).runs[1].state == "pending"
    assert engine.work_batch() == 1
    assert engine.get_task(spawned.task_id).state == "failed"


def test_checkpoints_survive_retries(engine: Engine) -> None:
    calls = {"a": 0, "b": 0}

    @engine.register_task(name="twostep")
    def twostep(params, ctx):
        def a():
            calls["a"] += 1
            return {"a": calls["a"]}

        first = ctx.step("a", a)
        if ctx.attempt == 1:
            raise RuntimeError("crash after step a")

        def b():
            calls["b"] += 1
            return 2

        return {"first": first, "b": ctx.step("b", b), "attempt": ctx.attempt}

    spawned = engine.spawn("twostep", None, max_attempts=3)
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "pending"
    assert info.checkpoints == {"a": {"a": 1}}
    assert engine.work_batch() == 1
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "completed"
    assert snap.result == {"first": {"a": 1}, "b": 2, "attempt": 2}
    assert calls == {"a": 1, "b": 1}


# ---------------------------------------------------------------------- retry_task


def _failed_task_with_step(engine: Engine, max_attempts: int = 2, **spawn_opts):
    state = {"fail": True, "a": 0}

    @engine.register_task(name="manual")
    def manual(params, ctx):
        def a():
            state["a"] += 1
            return "A"

        ctx.step("a", a)
        if state["fail"]:
            raise ValueError("not yet")
        return {"attempt": ctx.attempt, "params": params}

    spawned = engine.spawn("manual", {"p": 1}, max_attempts=max_attempts, **spawn_opts)
    for _ in range(max_attempts):
        assert engine.work_batch() == 1
    assert engine.get_task(spawned.task_id).state == "failed"
    return spawned, state


def test_retry_task_in_place(engine: Engine) -> None:
    spawned, state = _failed_task_with_step(engine, max_attempts=2)
    state["fail"] = False

    res = engine.retry_task(spawned.task_id)
    assert res.task_id == spawned.task_id
    assert res.attempt == 3
    assert res.created is False
    assert res["attempt"] == 3

    info = engine.get_task(spawned.task_id)
    assert info.state == "pending"
    assert info.attempts == 3
    assert info.max_attempts == 3  # old max_attempts + 1
    assert info.checkpoints == {"a": "A"}
    assert len(info.runs) == 3
    assert info.runs[-1].run_id == res.run_id
    assert info.runs[-1].state == "pending"
    assert info.failure is None

    assert engine.work_batch() == 1
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap == type(snap)(state="completed", result={"attempt": 3, "params": {"p": 1}})
    assert state["a"] == 1  # the checkpointed step did not run again


def test_retry_task_in_place_with_max_attempts(engine: Engine) -> None:
    spawned, _ = _failed_task_with_step(engine, max_attempts=2)
    res = engine.retry_task(spawned.task_id, max_attempts=10)
    assert res.attempt == 3
    info = engine.get_task(spawned.task_id)
    assert info.max_attempts == 10
    # still failing: retried automatically up to the new limit
    for _ in range(20):
        engine.work_batch()
    info = engine.get_task(spawned.task_id)
    assert info.state == "failed"
    assert info.attempts == 10
    assert len(info.runs) == 10


def test_retry_task_spawn_new(engine: Engine) -> None:
    spawned, state = _failed_task_with_step(
        engine, max_attempts=1, headers={"trace": "t1"}, idempotency_key="order-1",
        retry_strategy={"kind": "fixed", "base_seconds": 5},
        cancellation={"max_delay": 3600})
    res = engine.retry_task(spawned.task_id, spawn_new=True)
    assert res.created is True
    assert res.attempt == 1
    assert res.task_id != spawned.task_id

    old = engine.get_task(spawned.task_id)
    assert old.state == "failed"
    assert old.attempts == 1
    assert old.idempotency_key == "order-1"

    new = engine.get_task(res.task_id)
    assert new.state == "pending"
    assert new.attempts == 1
    assert new.task_name == "manual"
    assert new.params == {"p": 1}
    assert new.headers == {"trace": "t1"}
    assert new.max_attempts == 1
    assert new.retry_strategy == old.retry_strategy == {"kind": "fixed", "base_seconds": 5}
    assert new.cancellation == {"max_delay": 3600}
    assert new.idempotency_key is None
    assert new.checkpoints == {}
    assert [r.run_id for r in new.runs] == [res.run_id]

    state["fail"] = False
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).state == "completed"
    assert state["a"] == 2  # a new task re-runs its steps


def test_retry_task_spawn_new_with_max_attempts(engine: Engine) -> None:
    spawned, _ = _failed_task_with_step(engine, max_attempts=1)
    res = engine.retry_task(spawned.task_id, spawn_new=True, max_attempts=7)
    assert engine.get_task(res.task_id).max_attempts == 7


def test_retry_task_on_non_failed_task_is_invalid(engine: Engine) -> None:
    @engine.register_task(name="ok")
    def ok(params, ctx):
        return 1

    pending = engine.spawn("ok", None)
    with pytest.raises(InvalidTaskState):
        engine.retry_task(pending.task_id)
    with pytest.raises(ValueError):  # InvalidTaskState is a ValueError
        engine.retry_task(pending.task_id, spawn_new=True)
    engine.work_batch()
    assert engine.fetch_task_result(pending.task_id).state == "completed"
    with pytest.raises(InvalidTaskState):
        engine.retry_task(pending.task_id)
    info = engine.get_task(pending.task_id)
    assert info.state == "completed"
    assert len(info.runs) == 1


def test_retry_task_max_attempts_must_exceed_attempts(engine: Engine) -> None:
    spawned, _ = _failed_task_with_step(engine, max_attempts=2)
    with pytest.raises(InvalidTaskState):
        engine.retry_task(spawned.task_id, max_attempts=2)
    with pytest.raises(InvalidTaskState):
        engine.retry_task(spawned.task_id, max_attempts=1)
    info = engine.get_task(spawned.task_id)
    assert info.state == "failed"
    assert len(info.runs) == 2
    assert info.max_attempts == 2


def test_retry_task_unknown_task(engine: Engine) -> None:
    with pytest.raises(TaskNotFound):
        engine.retry_task(str(uuid.uuid4()))
    with pytest.raises(LookupError):
        engine.retry_task(str(uuid.uuid4()), spawn_new=True)


def test_retry_task_malformed_task_id_is_not_found(engine: Engine, backend: str,
                                                   request: pytest.FixtureRequest) -> None:
    with pytest.raises(TaskNotFound):
        engine.retry_task("not-a-task-id")
