"""Run the whole benchmark: start a private PostgreSQL, run every system back to back,
write ``results.md`` and ``raw/*.json``, stop PostgreSQL. ``bench/run.sh`` calls this
inside the benchmark venv; the knobs are ``BENCH_*`` environment variables (README)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import BENCH_DIR, REPO_ROOT, Settings, log
from .report import load, render
from .systems import SYSTEMS

DEFAULT_SYSTEMS = ("absurd-orm-sqlite", "absurd-orm-pg", "absurd-sdk-pg", "dbos-sqlite", "dbos-pg")
NEEDS = {"absurd-sdk-pg": ("absurd_sdk", "absurdctl"), "dbos-sqlite": ("dbos",),
         "dbos-pg": ("dbos",)}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _revision() -> str:
    """The checkout's commit, marked when the working tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "absurd_orm",
                                "migrations"], cwd=REPO_ROOT, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes to absurd_orm/ or migrations/" if dirty else "")


def machine_facts() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(), "cpu": cpu, "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "loadavg_start": " ".join(_read("/proc/loadavg").split()[:3]),
    }


def pg_facts(dsn: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        names = ("fsync", "synchronous_commit", "full_page_writes", "wal_level",
                 "shared_buffers", "max_connections", "listen_addresses")
        settings = {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}
    return {"postgresql": version,
            "postgresql_settings": ", ".join(f"{k}={v}" for k, v in settings.items())}


def main() -> int:
    settings = Settings.from_env()
    quick = os.environ.get("BENCH_QUICK", "0") not in ("", "0")
    systems = os.environ.get("BENCH_SYSTEMS", "").split() or list(DEFAULT_SYSTEMS)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        print(f"unknown system(s) {unknown}; known: {' '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    out_dir = Path(os.environ.get("BENCH_OUT_DIR") or BENCH_DIR)
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for old in raw_dir.glob("*.json"):
        old.unlink()
    workdir = Path(os.environ.get("BENCH_WORKDIR") or "/tmp/absurd-orm-bench")
    (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def on_term(*_: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    machine = machine_facts()
    machine["quick"] = quick
    machine["absurd_orm_revision"] = os.environ.get("BENCH_REVISION") or _revision()
    machine["note"] = os.environ.get("BENCH_NOTE", "")
    machine["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    server = None
    config: dict[str, Any] = {"workdir": str(workdir)}
    try:
        if any("-pg" in s for s in systems):
            from absurd_orm.testing import PostgresServer

            port = int(os.environ["BENCH_PG_PORT"]) if os.environ.get("BENCH_PG_PORT") else None
            server = PostgresServer(durable=True, port=port,
                                    settings={"synchronous_commit": "on", "fsync": "on"})
            server.start()
            config["pg_dsn"] = server.dsn("postgres")
            log(f"PostgreSQL started on 127.0.0.1:{server.port} (fsync on, synchronous_commit on)")
            machine.update(pg_facts(config["pg_dsn"]))
        (raw_dir / "machine.json").write_text(json.dumps(machine, indent=2))
        log(f"settings: {settings.as_dict()}")
        for name in systems:
            missing = [m for m in NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
            out = raw_dir / f"{name}.json"
            if missing:
                log(f"=== {name}: skipped, not installed: {', '.join(missing)}")
                out.write_text(json.dumps({"system": name, "title": name, "ours": False,
                                           "skipped": f"not installed: {', '.join(missing)}"}))
                continue
            log(f"=== {name}")
            t0 = time.monotonic()
            env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
            child = subprocess.Popen([sys.executable, "-m", "bench.harness", "--system", name,
                                      "--config", json.dumps(config), "--out", str(out)],
                                     cwd=str(REPO_ROOT), env=env)
            try:
                rc = child.wait()
            except BaseException:
                child.terminate()  # its workers exit when their stdin closes
                child.wait(30)
                raise
            log(f"=== {name} done in {time.monotonic() - t0:.0f} s (exit {rc})")
            if rc != 0 and not out.exists():
                out.write_text(json.dumps({"system": name, "title": name, "ours": False,
                                           "skipped": f"driver exited with {rc}"}))
        machine["loadavg_end"] = " ".join(_read("/proc/loadavg").split()[:3])
        (raw_dir / "machine.json").write_text(json.dumps(machine, indent=2))
    finally:
        if server is not None:
            server.stop()
            log("PostgreSQL stopped")
    results, machine = load(raw_dir)
    report = out_dir / "results.md"
    report.write_text(render(results, machine))
    log(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
