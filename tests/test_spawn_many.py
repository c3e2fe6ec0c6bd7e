"""Bulk spawn: many tasks in one transaction, all or nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from absurd_orm import Engine, NotJSONSerializable, QueueNotFound
from absurd_orm.models import runs, tasks


def _rows(sa_engine: sa.Engine) -> tuple[int, int]:
    with sa_engine.connect() as conn:
        return (conn.scalar(sa.select(sa.func.count()).select_from(tasks)),
                conn.scalar(sa.select(sa.func.count()).select_from(runs)))


def test_spawn_many_creates_runnable_tasks(engine: Engine) -> None:
    @engine.register_task(name="double")
    def double(params, ctx):
        return ctx.step("x2", lambda: params["n"] * 2)

    results = engine.spawn_many("double", [{"n": n} for n in range(25)], max_attempts=2,
                                headers={"batch": "b1"})
    assert len(results) == 25 and len({r.task_id for r in results}) == 25
    assert all(r.created and r.attempt == 1 for r in results)
    info = engine.get_task(results[0].task_id)
    assert (info.max_attempts, info.headers, info.state) == (2, {"batch": "b1"}, "pending")
    while engine.work_batch(batch_size=10):
        pass
    assert [engine.fetch_task_result(r.task_id).result for r in results] == [
        2 * n for n in range(25)]


def test_spawn_many_is_all_or_nothing(engine: Engine, sa_engine: sa.Engine) -> None:
    with pytest.raises(NotJSONSerializable):
        engine.spawn_many("t", [{"ok": 1}, {"bad": {1, 2}}], queue="default")
    with pytest.raises(QueueNotFound):
        engine.spawn_many("t", [{"ok": 1}, {"ok": 2}], queue="missing")
    assert _rows(sa_engine) == (0, 0)
    assert engine.spawn_many("t", [], queue="default") == []
