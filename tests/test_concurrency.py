"""Several real worker processes on one database: every task and step runs exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from absurd_orm import Engine

APP = textwrap.dedent('''
    import os
    from absurd_orm import Engine

    engine = Engine(os.environ["ABSURD_DATABASE_URL"])
    LOG = os.environ["STEP_LOG"]

    def record(name):
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (name + "\\n").encode())
        finally:
            os.close(fd)

    @engine.register_task(name="three_steps")
    def three_steps(params, ctx):
        total = 0
        for step in ("a", "b", "c"):
            def work(step=step):
                record(f"{ctx.task_id}:{step}")
                return params["i"]
            total += ctx.step(step, work)
        return total
''')


@pytest.mark.slow
def test_worker_processes_share_the_queue(engine: Engine, db_url: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    log = tmp_path / "steps.log"
    env = dict(os.environ, ABSURD_DATABASE_URL=db_url, STEP_LOG=str(log),
               PYTHONPATH=str(tmp_path))
    n = 60
    # The workers run on real time, so spawn on real time too (not the fixture's clock).
    real = Engine(db_url)
    ids = [real.spawn("three_steps", {"i": i}, queue="default").task_id for i in range(n)]
    logs = [tmp_path / f"p{i}.log" for i in range(3)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "absurd_orm.cli", "worker", "--app", "app:engine",
         "--concurrency", "2", "--poll-interval", "0.05", "--worker-id", f"p{i}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(logs[i], "wb"))
        for i in range(3)]
    try:
        results = [real.await_task_result(t, timeout=120) for t in ids]
        # A SIGTERM that lands while a worker is still importing kills it outright; the
        # graceful stop under test starts once the worker says it started.
        deadline = time.monotonic() + 60
        while not all("started on queue" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            time.sleep(0.05)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    assert [r.state for r in results] == ["completed"] * n
    assert [r.result for r in results] == [3 * i for i in range(n)]
    lines = log.read_text().split()
    assert len(lines) == 3 * n == len(set(lines))  # each step ran exactly once
    workers = {run.claimed_by for t in ids for run in real.get_task(t).runs}
    real.close()
    assert len(workers) >= 2  # the work really was shared
