"""SQLite under contention: 8 worker processes x 4 threads on one file, plus a spawner.

2,000 tasks mixing steps, durable sleeps and events; a separate process spawns them and
emits the events while the workers run. SQLite has one write lock for the whole file:
waiting for it is the engine's business, so no "database is locked" may reach user code
(handlers, the spawner) or even the workers' logs, and every task completes once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from absurd_orm import Engine

from .conftest import Workers, completed_count, read_log, run_rows, sa_engine_for, wait_for

pytestmark = pytest.mark.slow

N_TASKS = 2000
KINDS = ("mix_steps", "mix_sleep", "mix_steps", "mix_event")
STEPS = {"mix_steps": ["a", "b", "c"], "mix_sleep": ["a", "b"], "mix_event": ["a", "b"]}

SPAWNER = textwrap.dedent('''
    import json
    import os

    from absurd_orm import Engine

    N = int(os.environ["N_TASKS"])
    KINDS = ("mix_steps", "mix_sleep", "mix_steps", "mix_event")
    engine = Engine(os.environ["ABSURD_DATABASE_URL"])
    spawned = {}
    unemitted = []
    for i in range(N):
        kind = KINDS[i % 4]
        params = {"i": i, "nap": 0.2} if kind == "mix_sleep" else {"i": i}
        spawned[i] = [kind, engine.spawn(kind, params, queue="default").task_id]
        if kind == "mix_event":
            unemitted.append(i)
        # emit with a lag: some waiters are already asleep, some find the event stored
        if len(unemitted) > 8:
            j = unemitted.pop(0)
            engine.emit_event(f"ev-{j}", {"add": j})
    for j in unemitted:
        engine.emit_event(f"ev-{j}", {"add": j})
    with open(os.environ["SPAWN_OUT"], "w") as f:
        json.dump(spawned, f)
    engine.close()
''')

BAD_WORDS = ("database is locked", "database is busy", "claim failed", "lost its database",
             "crashed the worker", "Traceback")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_eight_processes_no_lock_errors(engine: Engine, db_url: str, workers: Workers,
                                               tmp_path: Path) -> None:
    db = sa_engine_for(db_url)
    (tmp_path / "spawner.py").write_text(SPAWNER)
    spawn_out = tmp_path / "spawned.json"
    try:
        for i in range(8):
            workers.start(f"w{i}", concurrency=4, claim_timeout=120, poll_interval=0.25)
        spawner = subprocess.Popen(
            [sys.executable, str(tmp_path / "spawner.py")], cwd=tmp_path,
            env=workers.env("spawner", N_TASKS=str(N_TASKS), SPAWN_OUT=str(spawn_out)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = spawner.communicate(timeout=300)
        finally:
            if spawner.poll() is None:
                spawner.kill()
                spawner.wait(timeout=30)
        assert spawner.returncode == 0, out.decode(errors="replace")[-3000:]
        spawned = {int(k): v for k, v in json.loads(spawn_out.read_text()).items()}
        assert len(spawned) == N_TASKS

        wait_for(lambda: completed_count(db) == N_TASKS, 300,
                 f"all {N_TASKS} tasks to complete", interval=0.5)
        alive = {n: p.poll() for n, p in workers.procs.items()}
        assert alive == {f"w{i}": None for i in range(8)}
        assert workers.stop_all() == {f"w{i}": 0 for i in range(8)}

        text = {n: workers.output(n) for n in workers.procs}
        text["spawner"] = out.decode(errors="replace")
        leaked = {n: [w for w in BAD_WORDS if w in t] for n, t in text.items()}
        assert {n: v for n, v in leaked.items() if v} == {}, \
            {n: t[-2000:] for n, t in text.items() if leaked[n]}

        lines = read_log(workers.log)
        assert [x for x in lines if x.event != "run"] == []  # no handler ever raised
        counts = Counter((x.task_id, x.step) for x in lines)
        expected = {(tid, s) for kind, tid in spawned.values() for s in STEPS[kind]}
        assert set(counts) == expected
        assert {k: c for k, c in counts.items() if c != 1} == {}  # every step ran once

        rows = run_rows(db)
        assert len(rows) == N_TASKS  # one run per task: no lease lost, no retry
        assert Counter(r.state for r in rows) == {"completed": N_TASKS}
        assert [r for r in rows if r.failure is not None] == []
        with db.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        real = Engine(db_url)
        try:
            for i, (kind, tid) in spawned.items():
                want = {"mix_steps": i + 2, "mix_sleep": i + 1, "mix_event": 2 * i}[kind]
                assert real.fetch_task_result(tid).result == want, (i, kind)
        finally:
            real.close()
    finally:
        db.dispose()
