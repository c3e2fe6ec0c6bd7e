"""Workers that die (SIGKILL) or freeze (SIGSTOP) mid-task, on SQLite and on PostgreSQL.

Real worker processes, real leases (``--claim-timeout 2``): after the lease expires
another worker's claim fails the dead run and a new attempt resumes from the checkpoints.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from absurd_orm import Engine

from .conftest import (
    Workers,
    assert_exactly_once,
    checkpoint_rows,
    completed_count,
    read_log,
    run_rows,
    sa_engine_for,
    sigcont,
    sigstop,
    wait_for,
)

pytestmark = pytest.mark.slow

LEASE = 2


def _blocked(log: Path, n: int) -> list[str]:
    lines = [x for x in read_log(log) if x.event == "blocked"]
    return [x.task_id for x in lines] if len(lines) >= n else []


def test_sigkill_mid_task_resumes_from_checkpoints(engine: Engine, db_url: str,
                                                   workers: Workers) -> None:
    """Killed while in step s2 of 4: s0 and s1 never run again, the task completes once."""
    real = Engine(db_url)
    db = sa_engine_for(db_url)
    try:
        ids = [real.spawn("steps", {"n": 4, "block_step": 2}, queue="default").task_id
               for _ in range(3)]
        workers.start("A", concurrency=3, claim_timeout=LEASE)
        wait_for(lambda: _blocked(workers.log, 3), 60, "three tasks blocked in step s2")
        # s0 and s1 are committed before the crash: complete_step returned for them.
        before = {(c.task_id, c.checkpoint_name): c for c in checkpoint_rows(db)}
        assert {k for k in before} == {(t, s) for t in ids for s in ("s0", "s1")}
        workers.kill("A")

        workers.start("B", concurrency=2, claim_timeout=LEASE)
        results = [real.await_task_result(t, timeout=90) for t in ids]
        assert [r.state for r in results] == ["completed"] * 3
        for r in results:
            assert r.result["by"] == "B" and r.result["attempt"] == 2
            # s0, s1 replayed from attempt 1's checkpoints, s2 and s3 ran in attempt 2
            assert [s["attempt"] for s in r.result["steps"]] == [1, 1, 2, 2]
        assert workers.stop("B") == 0

        found = assert_exactly_once(db, workers.log, ids, {t: ["s0", "s1", "s2", "s3"] for t in ids})
        for t in ids:
            count = {s: len(found["executions"][(t, s)]) for s in ("s0", "s1", "s2", "s3")}
            # s2 was in flight when the worker died: the one step a crash may repeat.
            assert count == {"s0": 1, "s1": 1, "s2": 2, "s3": 1}
            task_runs = [r for r in found["runs"] if r.task_id == t]
            assert [(r.attempt, r.state) for r in task_runs] == [(1, "failed"), (2, "completed")]
            assert task_runs[0].failure["name"] == "$ClaimTimeout"
            assert task_runs[0].claimed_by == "A" and task_runs[1].claimed_by == "B"
            for s in ("s0", "s1"):  # the checkpoints written before the crash are untouched
                ck = found["checkpoints"][(t, s)]
                assert ck.owner_run_id == before[(t, s)].owner_run_id == task_runs[0].run_id
                assert ck.state == before[(t, s)].state
    finally:
        real.close()
        db.dispose()


def test_repeated_sigkill_at_random_points(engine: Engine, db_url: str, workers: Workers) -> None:
    """Kill a worker again and again wherever it happens to be (mid-transaction included)."""
    rng = random.Random(1234)
    real = Engine(db_url)
    db = sa_engine_for(db_url)
    n_tasks, n_steps = 100, 5
    try:
        ids = [real.spawn("steps", {"n": n_steps}, queue="default", max_attempts=50).task_id
               for _ in range(n_tasks)]
        kills = 0
        for round_ in range(4):
            name = f"victim{round_}"
            workers.start(name, concurrency=3, claim_timeout=LEASE)
            seen = len(read_log(workers.log))
            target = seen + rng.randint(5, 25)

            def progressed() -> bool:
                mine = [x for x in read_log(workers.log) if x.worker == name and x.event == "run"]
                return len(read_log(workers.log)) >= target and bool(mine) or \
                    completed_count(db) == n_tasks

            wait_for(progressed, 60, f"{name} to make progress")
            workers.kill(name)
            kills += 1
            if completed_count(db) == n_tasks:
                break
        assert kills == 4, "the work finished before the fourth kill: make it longer"
        workers.start("steady", concurrency=2, claim_timeout=LEASE)
        wait_for(lambda: completed_count(db) == n_tasks, 120, "every task to complete")
        assert workers.stop("steady") == 0
        for r in [real.fetch_task_result(t) for t in ids]:
            assert r.state == "completed"
            assert [s["step"] for s in r.result["steps"]] == list(range(n_steps))
        found = assert_exactly_once(db, workers.log, ids,
                                    {t: [f"s{i}" for i in range(n_steps)] for t in ids})
        # Only steps in flight at a kill may have run twice: at most 3 per kill.
        repeats = sum(len(v) - 1 for v in found["executions"].values())
        assert repeats <= 3 * kills
    finally:
        real.close()
        db.dispose()


@pytest.mark.parametrize("where", ["in_step", "before_completion"])
def test_frozen_worker_is_fenced_after_takeover(engine: Engine, db_url: str, workers: Workers,
                                                where: str) -> None:
    """SIGSTOP past the lease, another worker takes over, SIGCONT: the stale writes are refused."""
    real = Engine(db_url)
    db = sa_engine_for(db_url)
    params = {"n": 3, "block_step": 1} if where == "in_step" else {"n": 3, "block_before_complete": True}
    try:
        tid = real.spawn("steps", params, queue="default").task_id
        a = workers.start("A", concurrency=1, claim_timeout=LEASE,
                          extra_env={"OBSERVE_WRITES": "1"})
        wait_for(lambda: _blocked(workers.log, 1), 60, "A to block inside the task")
        sigstop(a)
        before = {(c.task_id, c.checkpoint_name): c for c in checkpoint_rows(db)}

        workers.start("B", concurrency=1, claim_timeout=LEASE, extra_env={"OBSERVE_WRITES": "1"})
        done = real.await_task_result(tid, timeout=90)
        assert done.state == "completed" and done.result["by"] == "B"
        assert workers.stop("B") == 0
        after_takeover = {(c.task_id, c.checkpoint_name): c for c in checkpoint_rows(db)}
        runs_after_takeover = run_rows(db)

        # Thaw A with its step (or its completion) able to proceed: it writes as run 1.
        workers.gate.touch()
        sigcont(a)
        refused = wait_for(
            lambda: [x for x in read_log(workers.log)
                     if x.worker == "A" and x.event.startswith("write:") and "refused" in x.event],
            60, "A's stale write to be refused")
        method = "set_checkpoint" if where == "in_step" else "complete_run"
        assert [x.event for x in refused] == [f"write:{method}:refused:FailedTask"]

        # A stops that task and keeps working: it completes a new task on its own.
        probe = real.spawn("steps", {"n": 1}, queue="default").task_id
        assert real.await_task_result(probe, timeout=60).result["by"] == "A"
        assert a.poll() is None
        assert workers.stop("A") == 0

        # Nothing A did after the takeover reached the database.
        assert {(c.task_id, c.checkpoint_name): c for c in checkpoint_rows(db)
                if c.task_id == tid} == after_takeover
        assert [r for r in run_rows(db) if r.task_id == tid] == \
            [r for r in runs_after_takeover if r.task_id == tid]
        final = real.fetch_task_result(tid)
        assert final == done
        task_runs = [r for r in run_rows(db) if r.task_id == tid]
        assert [(r.attempt, r.state, r.claimed_by) for r in task_runs] == \
            [(1, "failed", "A"), (2, "completed", "B")]
        assert task_runs[0].failure["name"] == "$ClaimTimeout"
        found = assert_exactly_once(db, workers.log, [tid], {tid: ["s0", "s1", "s2"]})
        if where == "in_step":
            # s1 exists (written by B); A's different value for it was refused.
            ck = found["checkpoints"][(tid, "s1")]
            assert ck.owner_run_id == task_runs[1].run_id and ck.state["worker"] == "B"
            # s0 was A's, before the freeze, and stays A's.
            assert found["checkpoints"][(tid, "s0")] == before[(tid, "s0")]
            assert len(found["executions"][(tid, "s2")]) == 1  # A never reached s2
        else:
            # Every step was A's before the freeze; B replayed them, nobody rewrote them.
            assert {k: v for k, v in found["checkpoints"].items() if k[0] == tid} == \
                {k: v for k, v in before.items() if k[0] == tid}
            assert all(len(found["executions"][(tid, s)]) == 1 for s in ("s0", "s1", "s2"))
        assert [x.event for x in read_log(workers.log) if x.worker == "A" and x.task_id == tid
                and x.event.startswith("write:complete_run:ok")] == []
    finally:
        real.close()
        db.dispose()
